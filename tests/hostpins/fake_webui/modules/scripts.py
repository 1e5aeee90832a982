"""``modules.scripts``: only ``basedir()`` (the extension folder while its scripts load)."""

import os


def basedir() -> str:
    return os.environ.get("FAKE_WEBUI_EXTENSION_DIR") or os.getcwd()
