"""Fixtures of the host-adapter tests: a fake WebUI per test (see fakes/README.md).

``make_host(case, **options)`` installs one fake host (A1111 1.6 / 1.9 / 1.10 or Forge main,
with its ControlNet generation) on ``sys.path`` and returns a :class:`FakeHost`; everything is
removed from ``sys.path`` and ``sys.modules`` afterwards, the adapter's caches are cleared and
any service the test started is closed. ``fake`` is the same, parametrised over every case.
"""

from __future__ import annotations

import pytest
from host_helpers import CASES, install, purge_fake_modules

from easyphoto.weights import HOST_FOLDERS_ENV


@pytest.fixture
def make_host(tmp_path, monkeypatch):
    from easyphoto.engine import webui_ext

    monkeypatch.setenv(HOST_FOLDERS_ENV, "{}")  # recorded, so the runtime's value is undone
    monkeypatch.delenv(HOST_FOLDERS_ENV)
    made = []

    def make(case: str = "a1111-1.10", **options):
        assert not made, "one fake host per test"
        made.append(install(tmp_path, monkeypatch, case, **options))
        return made[0]

    yield make
    if made and webui_ext.runtime.cache_info().currsize:
        webui_ext.runtime(made[0].host).service.close()  # a cache hit: Host records compare equal
    webui_ext.runtime.cache_clear()
    webui_ext.current_host.cache_clear()
    purge_fake_modules()


@pytest.fixture(params=sorted(CASES))
def fake(request, make_host):
    return make_host(request.param)
