"""Fixtures of the inference tests: the lite face backend, a store with two ready user ids
(``obama``, ``biden``; tiny-random LoRAs), the REAL tiny-random engine behind a spy, a fake
engine. Helpers live in ``infer_helpers.py``."""

from __future__ import annotations

import pytest
from infer_helpers import (
    FakeEngine,
    SpyEngine,
    make_user,
    shared_backend,
    shared_engine,
    shared_lora_states,
)



@pytest.fixture(scope="module")
def backend():
    return shared_backend()


@pytest.fixture(scope="module")
def store(tmp_path_factory, rgb, backend, one_thread):
    """A UserStore with two ready ids: ``obama`` and ``biden`` (different LoRAs)."""
    from easyphoto.store import UserStore

    users = UserStore(tmp_path_factory.mktemp("data"))
    make_user(users, "obama", rgb("obama.jpg"), backend, shared_lora_states(1))
    make_user(users, "biden", rgb("biden.jpg"), backend, shared_lora_states(2))
    return users


@pytest.fixture(scope="module")
def users(store, backend):
    from easyphoto.infer.batch import load_users

    return load_users(store, ["obama", "biden"], backend)


@pytest.fixture
def real_engine(one_thread):
    """The real tiny-random engine behind a spy recording every call."""
    return SpyEngine(shared_engine())


@pytest.fixture
def fake_engine():
    return FakeEngine()
