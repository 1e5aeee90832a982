"""What the tabs display, from plain data: the progress bar, captions, tables.

Proves: the bar shows percent, stage with counts and ETA while running, 100 % when done, the
error when failed; times read naturally; photo and result captions carry verdicts and
similarity; text from data is escaped everywhere.
"""

from __future__ import annotations

import dataclasses

from easyphoto.jobs import JobView
from easyphoto.ui import render

VIEW = JobView(id="j1", kind="train", title="train alice", status="running", stage="train",
               done=120, total=800, fraction=0.4, eta=75.0, message="loss 0.1", error=None,
               log_tail="", request={}, result=None, workdir=None, pid=None, created=0.0,
               started=0.0, finished=None)


def test_progress_bar():
    running = render.progress(VIEW)
    assert 'data-percent="40.0"' in running and "width:40.0%" in running
    assert "stage: train 120/800" in running and "ETA 1 min 15 s" in running
    done = render.progress(dataclasses.replace(VIEW, status="done", fraction=0.99))
    assert 'data-percent="100.0"' in done and "ETA" not in done
    failed = dataclasses.replace(VIEW, status="failed", error="out of <memory>")
    assert "out of &lt;memory&gt;" in render.job_message(failed)
    assert "No job yet" in render.progress(None)


def test_durations():
    assert [render.duration(s) for s in (None, 4.4, 75, 3600 * 2 + 60)] == [
        "", "4 s", "1 min 15 s", "2 h 01 min"]


def test_captions_and_tables_escape_and_score():
    assert render.photo_caption(2, {"verdict": "no_face"}) == "2 ✗ no face"
    assert render.photo_caption(1, {"verdict": "ok", "is_reference": True}) == "1 ★ reference"
    assert render.render_caption({"step": 4, "score": 0.61234}) == "step 4 · 0.612"
    table = render.verdicts({"kept": 0, "dropped": 1, "photos": [
        {"file": "<b>.jpg", "verdict": "unreadable", "reason": "bad <data>"}]})
    assert "&lt;b&gt;.jpg" in table and "bad &lt;data&gt;" in table and "<b>.jpg" not in table
    result = {"template": "t.png", "index": 1, "people": [
        {"index": 0, "user_id": "alice", "status": "done", "score": 0.61234},
        {"index": 1, "user_id": "bob", "status": "done", "score": None}]}
    assert render.result_caption(result) == "t.png #2 · alice 0.61"
    detail = render.result_detail(result, scored=True)
    assert "0.612" in detail and "—" in detail and "Display score" not in detail
    assert "Display score" in render.result_detail(result, scored=False)
    errors = render.template_errors([{"template": "x<.png", "error": "no face"}])
    assert "x&lt;.png" in errors and "no face" in errors
    assert render.template_errors([]) == ""
