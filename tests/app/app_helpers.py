"""A real EasyPhoto server process for tests, and a tiny HTTP client for it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from easyphoto.store import UserStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running ``easyphoto ui`` on 127.0.0.1:``port`` with data in ``data_dir``."""

    def __init__(self, process: subprocess.Popen, port: int, data_dir: Path):
        self.process, self.port, self.data_dir = process, port, data_dir
        self.base = f"http://127.0.0.1:{port}"

    def store(self) -> UserStore:
        return UserStore(self.data_dir)

    def _call(self, method: str, path: str, data: Optional[bytes] = None,
              headers: Optional[dict] = None, auth: Optional[tuple] = None,
              token: Optional[str] = None) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{auth[0]}:{auth[1]}".encode()).decode()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    @staticmethod
    def _json(result: tuple[int, bytes]) -> tuple[int, Any]:
        status, body = result
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self._json(self._call("GET", path, **kw))

    def get_bytes(self, path: str, **kw: Any) -> tuple[int, bytes]:
        return self._call("GET", path, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self._json(self._call("DELETE", path, **kw))

    def post(self, path: str, payload: Any, **kw: Any) -> tuple[int, Any]:
        return self._json(self._call("POST", path, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"}, **kw))

    def post_multipart(self, path: str, fields: dict, files: dict, **kw: Any) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
                         f"\r\n\r\n{value}\r\n".encode())
        for name, data in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                         f'filename="{name}.bin"\r\nContent-Type: application/octet-stream'
                         "\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self._json(self._call("POST", path, body, {
            "Content-Type": f"multipart/form-data; boundary={boundary}"}, **kw))

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.process.poll() is None, "the server died"
            assert time.time() < deadline, f"condition not met in {timeout} s"
            time.sleep(0.2)

    def wait_job(self, job_id: str, timeout: float) -> dict:
        self.wait_for(lambda: self.get(f"/easyphoto/v1/jobs/{job_id}")[1]["status"]
                      in ("done", "failed", "cancelled"), timeout)
        return self.get(f"/easyphoto/v1/jobs/{job_id}")[1]


@contextlib.contextmanager
def start_server(data_dir: Path, *args: str, ui: bool = False,
                 timeout: float = 120) -> Iterator[Server]:
    """Start ``python -m easyphoto ui`` (tiny-random, lite faces) and wait for ``/health``."""
    port = free_port()
    command = [sys.executable, "-m", "easyphoto", "ui", "--port", str(port), "--data-dir",
               str(data_dir), "--base", "tiny-random", "--face-backend", "lite", *args]
    if not ui:
        command.append("--no-ui")
    log = open(Path(data_dir) / f"server-{port}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(process, port, Path(data_dir))
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if server.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                log.flush()
                raise AssertionError("server did not start:\n" +
                                     (Path(data_dir) / f"server-{port}.log").read_text())
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
