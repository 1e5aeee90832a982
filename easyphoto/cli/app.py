"""``easyphoto ui``: the standalone app (gradio UI + HTTP API) on http://127.0.0.1:7860.

``--listen`` (or a non-loopback ``--host``) serves on the network and then refuses to start
without ``--auth user:pass`` or ``--api-token TOKEN``. ``--base`` / ``--models-dir`` choose
local weights (``--base tiny-random``: tiny random models, noise — for smoke tests).
``--no-ui`` serves the API only.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..params import FACE_BACKENDS

log = logging.getLogger(__name__)


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("ui", parents=[common], help="start the standalone app",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on every interface (0.0.0.0); needs --auth or --api-token")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="require this login for the UI and the API (repeatable, or "
                             "comma-separated)")
    parser.add_argument("--api-token", default=os.environ.get("EASYPHOTO_API_TOKEN"),
                        help="Bearer token for the API (default $EASYPHOTO_API_TOKEN); also "
                             "accepted as the UI password")
    parser.add_argument("--base", default="", metavar="MODEL",
                        help="default base model: a checkpoint file, a diffusers folder, a "
                             "registry role, or 'tiny-random'")
    parser.add_argument("--face-backend", default="auto", choices=FACE_BACKENDS,
                        help="face models (default auto)")
    parser.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..app import check_exposure, create_app, parse_auth, serve
    from ..paths import data_root
    from ..service import Service, ServiceConfig

    host = "0.0.0.0" if args.listen else args.host
    auth = parse_auth(args.auth)
    check_exposure(host, auth, args.api_token)
    config = ServiceConfig(data_dir=data_root(args.data_dir), models_dir=args.models_dir,
                           base_model=args.base, face_backend=args.face_backend)
    service = Service(config)
    try:
        app = create_app(service, auth, args.api_token, with_ui=not args.no_ui)
        serve(app, host, args.port)
    finally:
        service.close()
    return 0
