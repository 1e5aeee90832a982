"""Serve ``build_ui`` with gradio 3.41 (the WebUI's) for test_browser_gradio3.py.

Run with the host-pins interpreter: ``.venv-host/bin/python gradio3_server.py PORT DATA_DIR``.
The WebUI's own page is not reproduced: only the Blocks EasyPhoto hands it, queued as the
WebUI does, on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    from easyphoto.service import Service, ServiceConfig
    from easyphoto.ui import allowed_paths, build_ui

    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    service = Service(ServiceConfig(data_dir=data_dir, base_model="tiny-random",
                                    face_backend="lite"))
    blocks = build_ui(service).queue()
    blocks.launch(server_name="127.0.0.1", server_port=port, show_api=False,
                  allowed_paths=allowed_paths(service))


if __name__ == "__main__":
    main()
