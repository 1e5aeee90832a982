"""User-id store: validation, case-insensitive uniqueness, atomic writes, locks, run swaps."""

from __future__ import annotations

import json
import os
import threading

import pytest

from easyphoto.errors import InvalidUserId, UserBusy, UserExists, UserNotFound
from easyphoto.store import UserStore, atomic_write_bytes, user_key, validate_user_id


@pytest.mark.parametrize("good", ["a", "Alice_01", "x.y-z", "A" * 64, "a..", "CON", "nul"])
def test_valid_ids(good):
    assert validate_user_id(good) == good


@pytest.mark.parametrize("bad, fragment", [
    ("", "empty"), ("A" * 65, "65 characters"), ("a/b", "'/'"), ("..", "must not start with '.'"),
    (".", "must not start with '.'"), ("a\\b", "'\\\\'"), ("none", "reserved"), ("NoNe", "reserved"),
    ("héllo", "'é'"), ("a b", "' '"), (None, "must be text"), ("a\x00", "'\\x00'"),
])
def test_invalid_ids_say_why(bad, fragment):
    with pytest.raises(InvalidUserId) as info:
        validate_user_id(bad)
    assert fragment in str(info.value)


def test_key_is_safe_and_case_insensitive():
    assert user_key("Alice") == user_key("alice") != user_key("alice2")
    for user_id in ("CON", "a..", "a.b", "x" * 64):
        key = user_key(user_id)
        assert "/" not in key and "." not in key and key != user_id and len(key) <= 51


def test_create_list_get_delete(tmp_path):
    store = UserStore(tmp_path)
    store.create("Bob")
    store.create("alice", base_model="sd15")
    assert [r.user_id for r in store.list()] == ["alice", "Bob"]
    record = store.get("ALICE")
    assert record.user_id == "alice" and record.meta["base_model"] == "sd15"
    assert record.path.parent == tmp_path / "users"
    (record.path / "photos").mkdir()
    (record.path / "photos" / "1.jpg").write_bytes(b"x")
    run = store.begin_run("alice")
    (run / "partial.bin").write_bytes(b"y")
    store.delete("alice")
    assert not record.path.exists() and not run.exists()
    assert [p.name for p in (tmp_path / "users").iterdir() if not p.name.startswith(".locks")] == \
        [store.user_dir("Bob").name]
    with pytest.raises(UserNotFound, match="'alice' does not exist"):
        store.get("alice")
    with pytest.raises(UserNotFound):
        store.delete("alice")


def test_case_insensitive_collision_refused(tmp_path):
    store = UserStore(tmp_path)
    store.create("Alice")
    with pytest.raises(UserExists, match="as 'Alice'; ids are case-insensitive"):
        store.create("alice")
    replaced = store.create("alice", overwrite=True)
    assert replaced.user_id == "alice" and store.get("ALICE").user_id == "alice"


def test_lock_is_exclusive_across_threads(tmp_path):
    store = UserStore(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def hold():
        with store.lock("alice"):
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    entered.wait(5)
    with pytest.raises(UserBusy, match="'ALICE' is busy"):
        with store.lock("ALICE"):
            pass
    with pytest.raises(UserBusy):
        store.create("alice")
    release.set()
    worker.join()
    with store.lock("alice"):
        pass


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_run_swap_keeps_previous_until_success(tmp_path):
    store = UserStore(tmp_path)
    store.create("alice")
    first = store.begin_run("alice")
    (first / "lora.safetensors").write_bytes(b"v1")
    store.commit_run("alice", first, score=0.5)
    record = store.get("alice")
    assert record.lora_path.read_bytes() == b"v1" and record.meta["status"] == "ready"

    failed = store.begin_run("alice")
    (failed / "lora.safetensors").write_bytes(b"half")
    store.abort_run(failed)
    assert not failed.exists() and store.get("alice").lora_path.read_bytes() == b"v1"

    second = store.begin_run("alice")
    (second / "lora.safetensors").write_bytes(b"v2")
    store.commit_run("alice", second, score=0.7)
    record = store.get("alice")
    assert record.lora_path.read_bytes() == b"v2" and record.meta["score"] == 0.7
    assert record.meta["created"] and not any(".old-" in p.name for p in store.users_dir.iterdir())


def test_recover_restores_folder_after_cut_off_swap(tmp_path):
    store = UserStore(tmp_path)
    store.create("alice")
    folder = store.user_dir("alice")
    (folder / "lora.safetensors").write_bytes(b"v1")
    os.replace(folder, folder.with_name(f".{folder.name}.old-20260101-000000-000000"))
    record = store.get("alice")  # the swap died after its first rename
    assert record.lora_path.read_bytes() == b"v1"


def test_update_meta_merges_atomically(tmp_path):
    store = UserStore(tmp_path)
    store.create("alice")
    store.update_meta("alice", status="training", progress=0.5)
    meta = json.loads((store.user_dir("alice") / "meta.json").read_text())
    assert meta["status"] == "training" and meta["progress"] == 0.5 and meta["user_id"] == "alice"
