"""Where EasyPhoto keeps its data and models (no state here: every call resolves afresh).

Order of precedence for the data folder: an explicit argument (``--data-dir``), the
``EASYPHOTO_DATA_DIR`` environment variable, then a per-user folder
(``$XDG_DATA_HOME/easyphoto`` or ``~/.local/share/easyphoto``; ``%LOCALAPPDATA%\\easyphoto`` on
Windows; ``~/Library/Application Support/easyphoto`` on macOS). Inside the WebUI the host
adapter passes the host's outputs folder explicitly.

Models: an explicit argument (``--models-dir``), ``EASYPHOTO_MODELS_DIR``, else
``<data folder>/models``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


def default_data_root() -> Path:
    """The per-user data folder of this platform."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "easyphoto"


def data_root(override: Optional[PathLike] = None) -> Path:
    """The data folder (not created here)."""
    chosen = override or os.environ.get("EASYPHOTO_DATA_DIR")
    return Path(chosen).expanduser().resolve() if chosen else default_data_root()


def models_root(override: Optional[PathLike] = None, data_dir: Optional[PathLike] = None) -> Path:
    """The folder model files are looked up in and downloaded to (not created here)."""
    chosen = override or os.environ.get("EASYPHOTO_MODELS_DIR")
    if chosen:
        return Path(chosen).expanduser().resolve()
    return data_root(data_dir) / "models"
