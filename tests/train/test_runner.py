"""Training through the real subprocess with the tiny-random preset on real photos.

Proves: a finished run swaps in a LoRA + face_id + meta.json; a failure injected mid-training
and a cancel both leave the previous LoRA byte-identical, remove the partial run and report why;
one training per id at a time; an existing id needs overwrite; the CLI drives the same runner.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from easyphoto.errors import UserBusy, UserExists
from easyphoto.params import TrainRequest
from easyphoto.progress import Cancelled
from easyphoto.store import UserStore
from easyphoto.train.lora_io import load_kohya_lora, read_kohya_file
from easyphoto.train.runner import TrainingFailed, TrainingRun

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(photo(name), folder / name)
    return sorted(folder.iterdir())


def _request(**changes):
    base = dict(user_id="obama", base_model="tiny-random", max_train_steps=3, validation_steps=2,
                face_backend="lite", skin_retouch=False)
    return TrainRequest(**{**base, **changes})


def _run(tmp_path, photos, env=None, progress=None, **changes):
    store = UserStore(tmp_path / "data")
    run = TrainingRun(store, _request(**changes), photos, tmp_path / "data" / "logs", env=env,
                      progress=progress or (lambda p: None))
    return store, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, photos):
    tmp_path = tmp_path_factory.mktemp("trained")
    events = []
    store, run = _run(tmp_path, photos, progress=events.append, keep_checkpoints=True)
    result = run.run()
    return tmp_path, store, result, events


def test_finished_run_is_swapped_in(trained):
    _, store, result, events = trained
    record = store.get("obama")
    assert record.meta["status"] == "ready" and record.meta["steps"] == 3
    assert load_kohya_lora(record.lora_path).rank == 4
    tensors, _ = read_kohya_file(record.lora_path)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
    assert any(k.startswith("lora_te_") for k in tensors)
    assert record.face_id_path.is_file() and record.ref_path.is_file()
    assert [c["step"] for c in record.meta["checkpoints"]] == [2, 3]
    # the CPU run: no start-up work, PyTorch's attention order (flash first on CUDA)
    assert record.meta["speedups"] == {"attention": "flash", "channels_last": False,
                                       "start_up": None}
    kept = record.meta["preprocess"]["kept"]
    assert kept == 4 and {p["file"]: p["verdict"] for p in record.meta["preprocess"]["photos"]}[
        "biden.jpg"] == "other_person"
    stages = [e.stage for e in events]
    assert "preprocess" in stages and "train" in stages and stages[-1] == "done"
    train_steps = [e.done for e in events if e.stage == "train"]
    assert max(train_steps) == 3 and all(e.total == 3 for e in events if e.stage == "train")
    assert not [p for p in store.users_dir.iterdir() if ".run-" in p.name]
    assert result.log_path.is_file() and result.log_path.stat().st_size > 0


def test_failure_mid_training_keeps_previous_lora(trained, photos):
    tmp_path, store, _, _ = trained
    before = store.get("obama").lora_path.read_bytes()
    _, run = _run(tmp_path, photos, env={"EASYPHOTO_FAIL_AT_STEP": "2"}, overwrite=True)
    with pytest.raises(TrainingFailed) as info:
        run.run()
    message = str(info.value)
    assert "injected failure at training step 2" in message
    assert "last lines of the training log" in message and info.value.log_tail
    assert info.value.log_path.is_file()
    assert store.get("obama").lora_path.read_bytes() == before
    assert not [p for p in store.users_dir.iterdir() if ".run-" in p.name]


def test_cancel_keeps_previous_lora(trained, photos):
    tmp_path, store, _, _ = trained
    before = store.get("obama").lora_path.read_bytes()
    holder = {}

    def on_progress(progress):
        if progress.stage == "train" and progress.done >= 1:
            holder["run"].cancel()

    _, run = _run(tmp_path, photos, progress=on_progress, overwrite=True, max_train_steps=400)
    holder["run"] = run
    with pytest.raises(Cancelled, match="cancelled"):
        run.run()
    assert store.get("obama").lora_path.read_bytes() == before
    assert not [p for p in store.users_dir.iterdir() if ".run-" in p.name]


def test_existing_id_needs_overwrite(trained, photos):
    tmp_path, store, _, _ = trained
    _, run = _run(tmp_path, photos)
    with pytest.raises(UserExists, match="already exists"):
        run.run()


def test_one_training_per_id(trained, photos):
    tmp_path, store, _, _ = trained
    entered, release = threading.Event(), threading.Event()

    def hold():
        with store.lock("obama"):
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    entered.wait(5)
    try:
        _, run = _run(tmp_path, photos, overwrite=True)
        with pytest.raises(UserBusy):
            run.run()
    finally:
        release.set()
        worker.join()


def test_cli_train_json(tmp_path, photos, capsys):
    from easyphoto.cli import main

    folder = photos[0].parent
    code = main(["train", "--user-id", "cli_user", "--photos", str(folder), "--base", "tiny-random",
                 "--max-train-steps", "2", "--face-backend", "lite", "--no-skin-retouch",
                 "--data-dir", str(tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"] and result["steps"] == 2
    assert UserStore(tmp_path).get("cli_user").lora_path.is_file()
