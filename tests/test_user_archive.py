"""User archives: byte-exact round trip, photos only on request, hostile archives refused."""

from __future__ import annotations

import json
import zipfile

import pytest

from easyphoto.errors import InvalidRequest, UserExists
from easyphoto.store import UserStore, atomic_write_json
from easyphoto.user_archive import MANIFEST, export_user, import_user


def write_random_lora(path) -> None:
    """A small kohya-named safetensors LoRA (the archive checks its header, not its math)."""
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.randn(4, 8),
               "lora_unet_down_blocks_0_attn.lora_up.weight": torch.randn(8, 4),
               "lora_unet_down_blocks_0_attn.alpha": torch.tensor(2.0)}, str(path),
              metadata={"ss_network_dim": "4"})


def _trained(store: UserStore, user_id: str = "ann"):
    """A stored id with a real (tiny) LoRA file, face_id, ref, meta and two photos."""
    record = store.create(user_id)
    folder = record.path
    write_random_lora(folder / "lora.safetensors")
    (folder / "face_id.jpg").write_bytes(b"\xff\xd8face")
    (folder / "ref.jpg").write_bytes(b"\xff\xd8ref")
    (folder / "photos").mkdir()
    (folder / "photos" / "00.jpg").write_bytes(b"photo0")
    (folder / "photos" / "01.jpg").write_bytes(b"photo1")
    atomic_write_json(folder / "meta.json", {**record.meta, "status": "ready", "steps": 3})
    return store.get(user_id)


def test_round_trip_is_byte_exact_and_leaves_photos_out(tmp_path):
    store = UserStore(tmp_path / "a")
    record = _trained(store)
    archive = export_user(store, "ann", tmp_path / "out")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted([MANIFEST, "lora.safetensors", "face_id.jpg",
                                               "ref.jpg", "meta.json"])
    other = UserStore(tmp_path / "b")
    imported = import_user(other, archive)
    assert imported.user_id == "ann" and imported.meta["steps"] == 3
    for name in ("lora.safetensors", "face_id.jpg", "ref.jpg"):
        assert (imported.path / name).read_bytes() == (record.path / name).read_bytes()
    assert not (imported.path / "photos").exists()


def test_photos_travel_only_when_asked_and_ids_can_be_renamed(tmp_path):
    store = UserStore(tmp_path)
    _trained(store)
    archive = export_user(store, "ann", tmp_path / "out", include_photos=True)
    copy = import_user(store, archive, user_id="ann2")
    assert sorted(p.name for p in (copy.path / "photos").iterdir()) == ["00.jpg", "01.jpg"]
    with pytest.raises(UserExists):
        import_user(store, archive)
    assert import_user(store, archive, overwrite=True).user_id == "ann"


def _tamper(archive, tmp_path, change):
    """Rewrite ``archive`` with ``change(members: dict, manifest: dict)`` applied."""
    with zipfile.ZipFile(archive) as z:
        members = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    change(members, manifest)
    target = tmp_path / "tampered.zip"
    with zipfile.ZipFile(target, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    return target


def _add_traversal(members, manifest):
    members["../evil.txt"] = b"x"
    manifest["files"]["../evil.txt"] = {"size": 1, "sha256": "0"}


def _corrupt_lora(members, manifest):
    import hashlib

    members["lora.safetensors"] = b"not a safetensors file"
    manifest["files"]["lora.safetensors"]["sha256"] = hashlib.sha256(
        members["lora.safetensors"]).hexdigest()


@pytest.mark.parametrize("change, words", [
    (_add_traversal, "unexpected file '../evil.txt'"),
    (lambda m, f: m.__setitem__("ref.jpg", b"changed"), "'ref.jpg' does not match its checksum"),
    (_corrupt_lora, "lora.safetensors is not a valid safetensors file"),
    (lambda m, f: f.__setitem__("format", "other/9"), "unsupported archive format 'other/9'"),
    (lambda m, f: f.__setitem__("user_id", "../../etc"), "user id '../../etc' contains"),
])
def test_hostile_or_damaged_archives_are_refused_and_nothing_is_left(tmp_path, change, words):
    store = UserStore(tmp_path / "src")
    _trained(store)
    archive = _tamper(export_user(store, "ann", tmp_path / "out"), tmp_path, change)
    target = UserStore(tmp_path / "dst")
    with pytest.raises(InvalidRequest) as error:
        import_user(target, archive)
    assert words in str(error.value)
    leftovers = [p.name for p in target.users_dir.iterdir() if not p.name.startswith(".locks")] \
        if target.users_dir.exists() else []
    assert leftovers == []
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_zip_is_refused(tmp_path):
    bogus = tmp_path / "x.zip"
    bogus.write_bytes(b"hello")
    with pytest.raises(InvalidRequest, match="x.zip is not a zip archive"):
        import_user(UserStore(tmp_path), bogus)
