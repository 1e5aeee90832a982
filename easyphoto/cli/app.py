"""``easyphoto ui``: the standalone app.

Until the gradio UI lands this serves a status page (version, data folder, user ids, model
presence) and ``/health`` on 127.0.0.1 — a real, working server, deliberately minimal.
"""

from __future__ import annotations

import argparse
import html
import http.server
import json
import logging

from .. import __version__
from ..paths import data_root
from ..store import UserStore

log = logging.getLogger(__name__)


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("ui", parents=[common], help="start the standalone app",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.set_defaults(handler=run)


def status_page(args: argparse.Namespace) -> dict:
    """What the shell page shows, also served as JSON at ``/status``."""
    root = data_root(args.data_dir)
    users = [r.user_id for r in UserStore(root).list()]
    return {"version": __version__, "data_dir": str(root), "users": users}


def _handler(args: argparse.Namespace) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                return self._send(200, "text/plain", b"ok")
            status = status_page(args)
            if self.path == "/status":
                return self._send(200, "application/json", json.dumps(status).encode())
            if self.path != "/":
                return self._send(404, "text/plain", b"not found")
            rows = "".join(f"<li>{html.escape(u)}</li>" for u in status["users"]) or "<li>none yet</li>"
            body = (f"<!doctype html><title>EasyPhoto</title><h1>EasyPhoto {__version__}</h1>"
                    f"<p>Data folder: {html.escape(status['data_dir'])}</p>"
                    f"<h2>User ids</h2><ul>{rows}</ul>")
            return self._send(200, "text/html; charset=utf-8", body.encode())

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *items) -> None:
            log.debug(fmt, *items)

    return Handler


def run(args: argparse.Namespace) -> int:
    with http.server.ThreadingHTTPServer((args.host, args.port), _handler(args)) as server:
        log.info("EasyPhoto %s serving on http://%s:%d (Ctrl+C to stop)", __version__,
                 args.host, server.server_address[1])
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0
