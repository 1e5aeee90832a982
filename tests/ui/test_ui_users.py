"""The Users tab's events on the user id trained through the Train tab.

Proves: the list shows each id with its face_id thumbnail, base model, date and score; a click
on a thumbnail selects the id; export writes a zip (with the training photos when asked) that
import brings back under a new id (and refuses an existing one unless told to replace it);
delete needs the confirmation tick and then removes the id everywhere.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import SimpleNamespace

from ui_helpers import USER_ID, run_event

REFRESH = ("easyphoto_users_refresh", "click")


def test_list_shows_each_user(ui, trained):
    out = run_event(ui.blocks, *REFRESH)
    assert USER_ID in out["ids"]
    thumb, caption = out["gallery"][out["ids"].index(USER_ID)]
    assert Path(thumb).is_file() and caption == USER_ID  # no score: the tiny renders have no face
    assert f'data-user="{USER_ID}"' in out["table"] and "tiny-random" in out["table"]
    assert "ready" in out["table"]
    assert USER_ID in out["selected"]["choices"]
    picked = run_event(ui.blocks, "easyphoto_users_gallery", "select", ids=out["ids"],
                       event=SimpleNamespace(index=out["ids"].index(USER_ID)))
    assert picked == {"selected": USER_ID, "confirm": False}


def test_export_import_delete(ui, trained):
    nothing = run_event(ui.blocks, "easyphoto_users_export", "click", selected=None)
    assert "Choose a user id first" in nothing["message"]

    exported = run_event(ui.blocks, "easyphoto_users_export", "click", selected=USER_ID,
                         include_photos=True)
    archive = Path(exported["export_file"])
    with zipfile.ZipFile(archive) as opened:
        members = opened.namelist()
    assert "lora.safetensors" in members and any(m.startswith("photos/") for m in members)
    assert archive.name in exported["message"]

    taken = run_event(ui.blocks, "easyphoto_users_import", "click", archive=str(archive))
    assert "already exists" in taken["message"] and "easyphoto-error" in taken["message"]
    imported = run_event(ui.blocks, "easyphoto_users_import", "click", archive=str(archive),
                         import_id="obama-copy")
    assert "Imported “obama-copy”" in imported["message"] and "obama-copy" in imported["ids"]
    assert imported["selected"]["value"] == "obama-copy" and imported["archive"] is None

    unconfirmed = run_event(ui.blocks, "easyphoto_users_delete", "click", selected="obama-copy",
                            confirm=False)
    assert "Tick “Yes, delete”" in unconfirmed["message"]
    assert "obama-copy" in [u["user_id"] for u in ui.service.users()]
    deleted = run_event(ui.blocks, "easyphoto_users_delete", "click", selected="obama-copy",
                        confirm=True)
    assert "Deleted “obama-copy”" in deleted["message"] and deleted["confirm"] is False
    assert "obama-copy" not in deleted["ids"]
    assert "obama-copy" not in [u["user_id"] for u in ui.service.users()]


def test_import_of_a_non_archive_is_a_message(ui, tmp_path):
    fake = tmp_path / "notes.zip"
    fake.write_text("hello")
    out = run_event(ui.blocks, "easyphoto_users_import", "click", archive=str(fake))
    assert "is not a zip archive" in out["message"]
    missing = run_event(ui.blocks, "easyphoto_users_import", "click", archive=None)
    assert "Choose an EasyPhoto user archive" in missing["message"]
