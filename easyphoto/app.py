"""The standalone app: one FastAPI server with the HTTP API and the gradio UI.

``create_app(service, auth=..., token=...)`` mounts the API under ``/easyphoto/v1`` (and the
reference routes), then the UI (``easyphoto.ui.build_ui``) at ``/``. ``serve`` runs it with
uvicorn. Binding anything but loopback requires credentials or a token
(:func:`check_exposure`); with only a token, the UI's login accepts any user name with the
token as password.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Any, Optional, Sequence

from .errors import EasyPhotoError, InvalidRequest

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)
#: Upload limit of the UI (the same as the image loader's byte limit).
MAX_UPLOAD = "64mb"


class InsecureBind(EasyPhotoError):
    """Refusing to serve on a network interface without authentication."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(values: Sequence[str]) -> list[tuple[str, str]]:
    """``["user:pass", "u2:p2,u3:p3"]`` → pairs; InvalidRequest naming a malformed entry."""
    pairs = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            user, sep, password = item.partition(":")
            if not sep or not user or not password:
                raise InvalidRequest(f"--auth {item!r}: expected user:password")
            pairs.append((user, password))
    return pairs


def check_exposure(host: str, auth: Sequence[tuple[str, str]], token: Optional[str]) -> None:
    """Refuse a non-loopback bind without credentials or a token."""
    if not is_loopback(host) and not auth and not token:
        raise InsecureBind(f"refusing to listen on {host} without authentication: add "
                           "--auth user:password or --api-token TOKEN (or bind 127.0.0.1)")


def ui_login(auth: Sequence[tuple[str, str]], token: Optional[str]):
    """The UI's login check: a known user/password pair, or the API token as password."""
    def check(user: str, password: str) -> bool:
        if token and secrets.compare_digest(password, token):
            return True
        return any(secrets.compare_digest(user, u) and secrets.compare_digest(password, p)
                   for u, p in auth)

    return check


def create_app(service: Any, auth: Sequence[tuple[str, str]] = (), token: Optional[str] = None,
               with_ui: bool = True) -> Any:
    """FastAPI app: API (guarded when ``auth``/``token``) + UI at ``/`` (login likewise)."""
    from fastapi import FastAPI

    from . import __version__
    from .api import mount_api

    app = FastAPI(title="EasyPhoto", version=__version__,
                  description="Face LoRA training and portrait inference (EasyPhoto).")
    mount_api(app, service, auth=auth, token=token)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True, "version": __version__}

    if with_ui:
        import gradio as gr

        from .ui import allowed_paths, build_ui

        blocks = build_ui(service).queue()
        login = ui_login(auth, token) if (auth or token) else None
        app = gr.mount_gradio_app(app, blocks, path="/", auth=login, max_file_size=MAX_UPLOAD,
                                  allowed_paths=allowed_paths(service))
    return app


def serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    log.info("EasyPhoto on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
