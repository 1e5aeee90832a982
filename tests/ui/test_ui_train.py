"""The Train tab's events, called the way gradio calls them, on real photos and a real
(tiny-random) training.

Proves: uploading checks the photos at once — every thumbnail captioned with its verdict, the
reference marked, the other person flagged with the reason in the table; a photo can be
selected and removed (the rest is checked again) and the list cleared; the user id gets an
inline verdict (free / invalid / taken / will be replaced); Start submits the training and
follows it to the end — the bar never goes back and ends at 100 %, the log fills, the face_id
image, the validation renders with their scores and the fused checkpoints are shown; request
errors come back as messages (no exception, no pop-up); Cancel stops a running training; a
page load shows the latest training.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from ui_helpers import QUICK_TRAINING, USER_ID, run_event, stream_event

PERCENT = re.compile(r'data-percent="([0-9.]+)"')


def _percent(html: str) -> float:
    return float(PERCENT.search(html).group(1))


def test_upload_checks_every_photo(trained, uploads):
    out = trained.upload
    assert out["photos"] == uploads
    captions = [caption for _, caption in out["gallery"]]
    assert [path for path, _ in out["gallery"]] == uploads
    assert captions[3] == "4 ★ reference"  # obama_partial_face.jpg: the best angle × identity
    assert captions[4] == "5 ✗ other person"  # biden.jpg among four photos of Obama
    assert captions[:3] == ["1 ✓ kept", "2 ✓ kept", "3 ✓ kept"]
    assert "probably another person" in out["verdicts"] and "biden.jpg" in out["verdicts"]
    assert "4 photo(s) kept, 1 not used" in out["verdicts"]
    assert "1 flagged" in out["photo_message"]
    assert out["upload"] is None  # the drop box is emptied for the next photos


def test_select_remove_and_clear(ui, trained):
    photos = trained.upload["photos"]
    picked = run_event(ui.blocks, "easyphoto_train_gallery", "select", photos=photos,
                       event=SimpleNamespace(index=4))
    assert picked["selected"] == 4 and "Photo 5 selected" in picked["photo_message"]
    removed = run_event(ui.blocks, "easyphoto_train_remove", "click", photos=photos,
                        selected=picked["selected"])
    assert removed["photos"] == photos[:4]
    assert all("✗" not in caption for _, caption in removed["gallery"])
    assert "Photo 5 removed; 4 left" in removed["photo_message"]
    nothing = run_event(ui.blocks, "easyphoto_train_remove", "click", photos=photos, selected=None)
    assert "Click a photo in the gallery first" in nothing["photo_message"]
    cleared = run_event(ui.blocks, "easyphoto_train_clear", "click")
    assert cleared["photos"] == [] and cleared["gallery"] == [] and cleared["report"] is None


def test_unreadable_upload_is_flagged_not_raised(ui, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = run_event(ui.blocks, "easyphoto_train_upload", "upload", photos=[],
                    upload=[str(broken)])
    assert out["gallery"] == [(str(broken), "1 ✗ unreadable")]
    assert "broken.jpg" in out["verdicts"] and 'data-verdict="unreadable"' in out["verdicts"]


def test_too_many_photos_is_a_message(ui):
    many = [f"/nowhere/photo{n}.jpg" for n in range(41)]
    out = run_event(ui.blocks, "easyphoto_train_upload", "upload", photos=[], upload=many)
    assert "41 photos: at most 40" in out["photo_message"]
    assert "photos" not in out  # the list is left as it was


def _user_id_message(ui, user_id, overwrite=False):
    return run_event(ui.blocks, "easyphoto_train_user_id", "change", user_id=user_id,
                     overwrite=overwrite)["user_id_msg"]


def test_user_id_verdict_is_inline(ui, trained):
    assert "is free" in _user_id_message(ui, "alice") and "easyphoto-ok" in _user_id_message(
        ui, "alice")
    bad = _user_id_message(ui, "al ice!")
    assert "easyphoto-error" in bad and "contains" in bad and "'!'" in bad
    assert "reserved" in _user_id_message(ui, "none")
    assert "already exists" in _user_id_message(ui, USER_ID.upper())  # case-insensitive
    assert "will be replaced" in _user_id_message(ui, USER_ID, overwrite=True)
    assert "Choose a user id" in _user_id_message(ui, "")


def test_training_is_followed_to_the_end(ui, trained):
    steps = trained.steps
    job_id = steps[0]["job"]
    assert job_id and all(step.get("job", job_id) == job_id for step in steps)
    bars = [_percent(step["progress"]) for step in steps if "progress" in step]
    assert len(bars) >= 3, "the bar should move while the job runs"
    assert bars == sorted(bars) and bars[-1] == 100.0
    assert any(0 < bar < 100 for bar in bars)
    assert any("stage: train" in step.get("progress", "") for step in steps)
    last = steps[-1]
    assert "finished" in last["message"] and 'data-status="done"' in last["progress"]
    assert last["log"].strip(), "the log tail is shown"
    assert Path(last["face_id"]).is_file()
    assert last["renders"] and all(Path(path).is_file() for path, _ in last["renders"])
    assert {caption for _, caption in last["renders"]} == {"step 2 · no face", "step 3 · no face"}
    assert "“obama” is ready" in last["user_id_msg"]
    assert "checkpoint-3.safetensors" in last["summary"]  # the fused (here: final) checkpoint
    user = next(u for u in ui.service.users() if u["user_id"] == USER_ID)
    assert user["status"] == "ready"


def test_request_errors_are_messages(ui, trained):
    photos = trained.upload["photos"]
    cases = [({"photos": [], "user_id": "alice"}, "Add photos first"),
             ({"photos": photos, "user_id": "bad id"}, "contains ' '"),
             ({"photos": photos, "user_id": USER_ID}, "already exists"),
             ({"photos": photos, "user_id": "alice", "rank": "big"}, "Rank: 'big' is not a number"),
             ({"photos": photos, "user_id": "alice", "learning_rate": 1.0}, "learning_rate")]
    for values, expected in cases:
        steps = run_event(ui.blocks, "easyphoto_train_start", "click", **values)
        assert len(steps) == 1, values
        assert expected in steps[0]["message"] and "easyphoto-error" in steps[0]["message"]
        assert "job" not in steps[0]  # no job was submitted


def test_cancel_stops_a_running_training(ui, trained):
    none = run_event(ui.blocks, "easyphoto_train_cancel", "click", job=None)
    assert "No training is running" in none["message"]
    follow = stream_event(ui.blocks, "easyphoto_train_start", "click",
                          photos=trained.upload["photos"], user_id="cancel-me",
                          **QUICK_TRAINING)
    job_id = next(follow)["job"]
    cancelled = run_event(ui.blocks, "easyphoto_train_cancel", "click", job=job_id)
    assert "cancel" in cancelled["message"]
    last = list(follow)[-1]
    assert 'data-status="cancelled"' in last["progress"] and "cancelled" in last["message"]
    assert "cancel-me" not in [u["user_id"] for u in ui.service.users()]


def test_page_load_shows_the_latest_training(ui, trained):
    steps = run_event(ui.blocks, "page", "load", "TrainHandlers.restore")
    # the cancelled run above may be the latest one; either way it is a finished training
    assert steps and steps[-1]["job"]
    view = ui.service.job(steps[-1]["job"])
    assert view.kind == "train" and view.id == ui.service.jobs.list(limit=1, kind="train")[0].id
    assert f'data-job="{view.id}"' in steps[-1]["progress"]
