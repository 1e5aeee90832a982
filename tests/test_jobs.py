"""The job runner: order and fairness, one GPU lock, progress, cancel, failures, recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from easyphoto.errors import InvalidRequest
from easyphoto.jobs import CANCELLED, DONE, FAILED, JobNotFound, JobRunner
from easyphoto.progress import Progress


@pytest.fixture
def runner(tmp_path):
    jobs = JobRunner(tmp_path)
    yield jobs
    jobs.close()


def _blocker():
    """A job that waits for ``release`` (so tests can queue others behind it)."""
    release, started = threading.Event(), threading.Event()

    def work(ctx):
        started.set()
        while not release.wait(0.02):
            ctx.cancel.check()
        return {"ok": True}

    return work, started, release


def test_jobs_run_in_order_with_kinds_alternating(runner):
    order = []
    work, started, release = _blocker()
    first = runner.submit("train", "blocker", work)
    assert started.wait(5)
    ids = [runner.submit(kind, f"{kind}{n}", lambda ctx, k=f"{kind}{n}": order.append(k))
           for n, kind in enumerate(["train", "train", "infer", "infer"])]
    release.set()
    for job_id in [first, *ids]:
        assert runner.wait(job_id, 10).status == DONE
    # after a training, the waiting inference goes first; then kinds keep alternating
    assert order == ["infer2", "train0", "infer3", "train1"]


def test_one_job_at_a_time_under_the_gpu_lock(tmp_path):
    lock = threading.Lock()
    jobs = JobRunner(tmp_path, gpu_lock=lock)
    seen = []
    try:
        ids = [jobs.submit("infer", str(n), lambda ctx: seen.append(lock.locked()))
               for n in range(3)]
        for job_id in ids:
            assert jobs.wait(job_id, 10).status == DONE
    finally:
        jobs.close()
    assert seen == [True, True, True]


def test_progress_maps_stages_into_one_bar_and_never_goes_back(runner):
    snapshots = []

    def work(ctx):
        for report in [Progress("preprocess", 1, 2), Progress("train", 5, 10, eta=12.0),
                       Progress("validation", 1, 2), Progress("validation", 0, 2),
                       Progress("validation", 2, 2)]:
            ctx._last_write = 0.0  # no throttling in the test
            ctx.progress(report)
            view = runner.get(ctx.job_id)
            snapshots.append((view.stage, round(view.fraction, 3), view.eta))
        return {"answer": 42}

    job_id = runner.submit("train", "t", work, spans={"preprocess": (0.0, 0.1),
                                                      "train": (0.1, 0.9),
                                                      "validation": (0.9, 1.0)})
    view = runner.wait(job_id, 10)
    assert view.status == DONE and view.result == {"answer": 42} and view.percent == 100.0
    assert snapshots == [("preprocess", 0.05, None), ("train", 0.5, 12.0),
                         ("validation", 0.95, None), ("validation", 0.95, None),
                         ("validation", 1.0, None)]


def test_cancel_queued_and_running_jobs(runner):
    work, started, _ = _blocker()
    hooks = []
    running = runner.submit("train", "long", lambda ctx: (ctx.on_cancel(lambda: hooks.append(1)),
                                                          work(ctx)))
    assert started.wait(5)
    queued = runner.submit("infer", "waiting", lambda ctx: {"ran": True})
    assert runner.cancel(queued).status == CANCELLED
    runner.cancel(running)
    view = runner.wait(running, 10)
    assert view.status == CANCELLED and hooks == [1]
    assert runner.get(queued).result is None


def test_failures_keep_their_message_and_log_tail(runner):
    def work(ctx):
        ctx.log("step 1 ok")
        ctx.log("step 2 broke")
        raise InvalidRequest("the photo folder is empty")

    view = runner.wait(runner.submit("train", "bad", work), 10)
    assert view.status == FAILED and view.error == "the photo folder is empty"
    assert view.log_tail.splitlines() == ["step 1 ok", "step 2 broke"]
    assert (runner.jobs_dir / view.id / "job.log").read_text().count("\n") == 2


def test_unknown_job_is_a_404_error(runner):
    with pytest.raises(JobNotFound) as error:
        runner.get("nope")
    assert error.value.http_status == 404 and "'nope' does not exist" in str(error.value)


def test_restart_marks_dead_jobs_failed_stops_their_child_and_cleans_up(tmp_path):
    jobs = JobRunner(tmp_path)
    work, started, release = _blocker()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "easyphoto-test-child"], start_new_session=True)

    def running(ctx):
        ctx.set_pid(child.pid)
        (ctx.workdir / "partial.bin").write_bytes(b"x")
        work(ctx)

    job_id = jobs.submit("train", "dies", running)
    assert started.wait(5)
    queued = jobs.submit("infer", "never ran", lambda ctx: None)
    # simulate the process dying: a second runner opens the same database
    cleaned = []
    jobs._closed = True  # the old worker must not pick anything up any more
    again = JobRunner(tmp_path, cleanups={"train": lambda view: cleaned.append(view.id)})
    try:
        view = again.get(job_id)
        assert view.status == FAILED and "stopped while this job was running" in view.error
        assert again.get(queued).status == FAILED
        assert "before this job started" in again.get(queued).error
        assert cleaned == [job_id]
        assert child.wait(5) is not None  # the orphaned child was killed
    finally:
        again.close()
        release.set()  # let the "dead" runner's thread end
        if child.poll() is None:
            os.kill(child.pid, 9)


def test_history_survives_a_new_runner(tmp_path):
    jobs = JobRunner(tmp_path)
    job_id = jobs.submit("infer", "quick", lambda ctx: {"n": 1})
    jobs.wait(job_id, 10)
    jobs.close()
    again = JobRunner(tmp_path)
    try:
        assert again.get(job_id).result == {"n": 1}
        assert [v.id for v in again.list()] == [job_id]
    finally:
        again.close()
