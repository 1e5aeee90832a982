"""EasyPhoto's jobs in the host's task list (``modules.progress``): one task per outermost
hold of the GPU lock, queued then started then finished, ids from ``create_task_id`` on 1.8+."""

from __future__ import annotations

import re

import pytest

from easyphoto.engine.webui import HostGpuLock


def test_a_job_is_the_hosts_current_task_while_it_holds_the_lock(fake):
    progress = fake.host.progress
    lock = HostGpuLock(fake.host)
    with lock:
        task = lock.task
        assert progress.current_task == task and task not in progress.pending_tasks
        with lock:  # the engine re-enters per call: no second task
            assert lock.task == task
        assert progress.current_task == task
    assert progress.current_task is None and lock.task is None
    assert progress.events == [("queued", task), ("started", task), ("finished", task)]
    assert progress.finished_tasks == [task]
    if fake.case.webui >= (1, 8):  # the host's own ids
        assert re.fullmatch(r"task\(easyphoto-\d{15}\)", task)
    else:
        assert re.fullmatch(r"task\(easyphoto-[0-9a-f]{15}\)", task)
    with lock:
        assert lock.task != task  # every job its own task


def test_a_failing_job_still_finishes_its_task(make_host):
    fake = make_host("a1111-1.10")
    lock = HostGpuLock(fake.host)
    with pytest.raises(RuntimeError, match="boom"), lock:
        raise RuntimeError("boom")
    assert fake.host.progress.current_task is None
    assert [what for what, _ in fake.host.progress.events] == ["queued", "started", "finished"]
    assert not fake.host.call_queue.queue_lock.locked()


def test_a_host_whose_task_list_differs_does_not_break_jobs(make_host, monkeypatch):
    fake = make_host("a1111-1.9")

    def refuse(task):
        raise TypeError("start_task() takes 2 positional arguments")

    monkeypatch.setattr(fake.host.progress, "start_task", refuse)
    lock = HostGpuLock(fake.host)
    with lock:
        assert lock.held and lock.task is None
    assert not fake.host.call_queue.queue_lock.locked()
