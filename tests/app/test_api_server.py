"""The HTTP API against a real server process on 127.0.0.1 (tiny-random preset, lite faces).

train → poll → infer → result image; 4xx with messages for bad requests; the reference
extension's routes; auth when listening; export/import; and a server killed mid-training:
on restart the job is failed with a reason, the previous LoRA is byte-identical and no
half-written files remain.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sqlite3
import time

import pytest
from PIL import Image

from app_helpers import Server, free_port, start_server

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg")
TINY = {"max_train_steps": 3, "validation_steps": 2, "skin_retouch": False}


@pytest.fixture(scope="module")
def photos_b64(photo):
    return [base64.b64encode(photo(name).read_bytes()).decode() for name in PHOTOS]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("api-data")
    with start_server(data) as running:
        yield running


@pytest.fixture(scope="module")
def trained(server, photos_b64):
    status, body = server.post("/easyphoto/v1/train", {"user_id": "obama", "photos": photos_b64,
                                                       **TINY})
    assert status == 200, body
    job = server.wait_job(body["job_id"], 180)
    assert job["status"] == "done", job
    return job


def test_train_poll_infer_result_image(server, trained, photo):
    assert trained["percent"] == 100.0 and trained["result"]["user_id"] == "obama"
    users = server.get("/easyphoto/v1/users")[1]
    assert [u["user_id"] for u in users] == ["obama"]
    status, face_id = server.get_bytes(users[0]["face_id"])
    assert status == 200 and Image.open(io.BytesIO(face_id)).size[0] > 0
    template = photo("biden.jpg").read_bytes()
    status, body = server.post("/easyphoto/v1/infer", {
        "user_ids": ["obama"], "templates": [base64.b64encode(template).decode()], "seed": 7})
    assert status == 200 and set(body) == {"job_id"}
    job = server.wait_job(body["job_id"], 180)
    assert job["status"] == "done", job
    result = job["result"]["results"][0]
    status, png = server.get_bytes(result["url"])
    image = Image.open(io.BytesIO(png))
    assert status == 200 and image.format == "PNG"
    assert image.size == Image.open(io.BytesIO(template)).size
    assert "seed 7" in image.info["parameters"].lower() or "Seed: 7" in image.info["parameters"]


def test_infer_wait_returns_the_images(server, trained):
    status, body = server.post("/easyphoto/v1/infer", {
        "user_ids": ["obama"], "gallery": ["grace-hopper"], "wait": True, "seed": 1})
    assert status == 200 and body["status"] == "done", body
    image = Image.open(io.BytesIO(base64.b64decode(body["result"]["results"][0]["image"])))
    assert image.size == (512, 600)  # grace_hopper.jpg's size


@pytest.mark.parametrize("path, payload, code, words", [
    ("/easyphoto/v1/train", {"user_id": "a b", "photos": ["x"]}, 422, "user id 'a b' contains"),
    ("/easyphoto/v1/train", {"user_id": "ok", "photos": ["!!"]}, 422, "photo 1 is not valid base64"),
    ("/easyphoto/v1/train", {"user_id": "ok", "photos": ["https://example.com/a.jpg"]}, 422,
     "the server does not fetch URLs"),
    ("/easyphoto/v1/train", {"user_id": "ok", "photos": [], "rnak": 4}, 422, "rnak"),
    ("/easyphoto/v1/train", {"user_id": "ok", "photos": [], "rank": 0}, 422, "rank"),
    ("/easyphoto/v1/infer", {"user_ids": ["ghost"], "gallery": ["astronaut"]}, 404,
     "user id 'ghost' does not exist"),
    ("/easyphoto/v1/infer", {"user_ids": ["none"], "gallery": ["astronaut"]}, 422,
     "every user id is 'none'"),
    ("/easyphoto/v1/infer", {"user_ids": ["obama"]}, 422, "no template was given"),
    ("/easyphoto/v1/infer", {"user_ids": ["obama"], "gallery": ["nope"]}, 404,
     "no gallery template is called 'nope'"),
    ("/easyphoto/easyphoto_infer_forward", {"user_ids": ["none"], "tabs": 7}, 422, "tabs must be"),
    ("/easyphoto/easyphoto_train_forward", {"user_id": "x", "enable_rl": True}, 422, "enable_rl"),
])
def test_bad_requests_are_4xx_with_a_message(server, trained, path, payload, code, words):
    status, body = server.post(path, payload)
    assert status == code, body
    assert words in json.dumps(body)


def test_unknown_job_and_user_are_404(server):
    assert server.get("/easyphoto/v1/jobs/nope")[0] == 404
    status, body = server.delete("/easyphoto/v1/users/ghost")
    assert status == 404 and "does not exist" in body["detail"]


def test_reference_routes(server, trained, photo, photos_b64):
    template = base64.b64encode(photo("biden.jpg").read_bytes()).decode()
    status, body = server.post("/easyphoto/easyphoto_infer_forward", {
        "user_ids": ["obama"], "sd_model_checkpoint": "Chilloutmix-Ni-pruned-fp16-fix.safetensors",
        "init_image": template, "first_diffusion_steps": 4, "second_diffusion_steps": 3,
        "seed": 12345, "before_face_fusion_ratio": 0.5, "color_shift_middle": True, "tabs": 1})
    assert status == 200 and body["message"] == "Success", body
    image = Image.open(io.BytesIO(base64.b64decode(body["outputs"][0])))
    assert image.size == Image.open(photo("biden.jpg")).size
    assert len(body["face_id_outputs"]) == 1
    status, body = server.post("/easyphoto/easyphoto_train_forward", {
        "user_id": "ref_client", "instance_images": photos_b64, "max_train_steps": 2,
        "val_and_checkpointing_steps": 2, "steps_per_photos": 1, "id_task": "x",
        "dataloader_num_workers": 16})
    assert status == 200 and body["message"] == "The training has been completed.", body
    assert "ref_client" in [u["user_id"] for u in server.get("/easyphoto/v1/users")[1]]


def test_export_delete_import_round_trip(server, trained):
    status, archive = server.get_bytes("/easyphoto/v1/users/obama/export")
    assert status == 200 and archive[:2] == b"PK"
    lora_before = server.store().get("obama").lora_path.read_bytes()
    status, body = server.post_multipart("/easyphoto/v1/users/import",
                                         {"user_id": "obama_copy"}, {"archive": archive})
    assert status == 200 and body["user_id"] == "obama_copy", body
    assert server.store().get("obama_copy").lora_path.read_bytes() == lora_before
    assert server.delete("/easyphoto/v1/users/obama_copy")[0] == 200
    assert not server.store().exists("obama_copy")


def test_listen_requires_auth_and_enforces_it(tmp_path):
    import subprocess
    import sys

    refused = subprocess.run([sys.executable, "-m", "easyphoto", "ui", "--listen", "--no-ui",
                              "--data-dir", str(tmp_path), "--port", str(free_port())],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 without authentication" in refused.stderr
    with start_server(tmp_path, "--listen", "--auth", "ann:secret", "--api-token", "tok") as srv:
        assert srv.get("/easyphoto/v1/users")[0] == 401
        assert srv.get("/easyphoto/v1/users", auth=("ann", "wrong"))[0] == 401
        assert srv.get("/easyphoto/v1/users", auth=("ann", "secret")) == (200, [])
        assert srv.get("/easyphoto/v1/users", token="tok") == (200, [])
        assert srv.post("/easyphoto/easyphoto_train_forward", {"user_id": "x"})[0] == 401


def test_killed_during_training_restarts_clean(tmp_path, photos_b64):
    with start_server(tmp_path) as first:
        status, body = first.post("/easyphoto/v1/train", {"user_id": "kim", "photos": photos_b64,
                                                          **TINY})
        assert first.wait_job(body["job_id"], 180)["status"] == "done"
        lora = first.store().get("kim").lora_path.read_bytes()
        status, body = first.post("/easyphoto/v1/train", {
            "user_id": "kim", "overwrite": True, "photos": photos_b64, "max_train_steps": 400,
            "validation_steps": 400, "skin_retouch": False})
        job_id = body["job_id"]
        first.wait_for(lambda: first.get(f"/easyphoto/v1/jobs/{job_id}")[1]["stage"] == "train",
                       180)
        child = first.get(f"/easyphoto/v1/jobs/{job_id}")[1]
        pid = _job_pid(tmp_path, job_id)
        assert pid and _alive(pid)
        users_dir = first.store().users_dir
        assert any(".run-" in p.name for p in users_dir.iterdir())  # a run is being written
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    assert child["status"] == "running"
    # the training child notices its parent died and exits on its own
    deadline = time.time() + 30
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    with start_server(tmp_path) as second:
        job = second.get(f"/easyphoto/v1/jobs/{job_id}")[1]
        assert job["status"] == "failed" and "stopped while this job was running" in job["error"]
        assert second.store().get("kim").lora_path.read_bytes() == lora
        leftovers = [p.name for p in second.store().users_dir.iterdir()
                     if ".run-" in p.name or ".old-" in p.name]
        assert leftovers == []


def _job_pid(data_dir, job_id: str) -> int:
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        return db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def _alive(pid: int) -> bool:
    """Running (not a zombie) and a training process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"easyphoto.train" in handle.read()
    except OSError:
        return False
