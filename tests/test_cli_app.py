"""``easyphoto ui`` starts a real server on loopback (the README's run command ends here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from easyphoto.store import UserStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_ui_serves_status_on_loopback(tmp_path):
    UserStore(tmp_path).create("alice")
    port = _free_port()
    env = {**os.environ, "EASYPHOTO_DATA_DIR": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "easyphoto", "ui", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "server did not start in 30 s"
                time.sleep(0.2)
        assert (status, body) == (200, b"ok")
        status = json.loads(_get(f"http://127.0.0.1:{port}/status")[1])
        assert status["users"] == ["alice"] and status["data_dir"] == str(tmp_path.resolve())
        assert b"alice" in _get(f"http://127.0.0.1:{port}/")[1]
    finally:
        server.terminate()
        server.wait(10)
