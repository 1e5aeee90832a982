"""The face layer: detection + 5 landmarks, identity embeddings, part masks, fusion, enhancement.

One interface (:class:`FaceBackend`, see ``types``), two implementations:

* ``"full"`` — :class:`~easyphoto.face.full.FullBackend`: insightface SCRFD + ArcFace and the
  modelscope models of the reference (needs the ``full`` extra and downloaded model files);
* ``"lite"`` — :class:`~easyphoto.face.lite.LiteBackend`: only models shipped inside PyPI packages.

:func:`get_face_backend` picks one; ``"auto"`` takes full where it can run, else lite. Importing
this package is cheap: the backends (and mediapipe, dlib, insightface, onnxruntime) load only
when a backend is built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import InvalidRequest
from .types import FACE_PARTS, Box, Face, FaceBackend

# FullBackend / LiteBackend are importable too (see __getattr__) but left out of __all__ so that
# a star import stays light.
__all__ = ["Box", "Face", "FaceBackend", "FACE_PARTS", "BACKEND_NAMES", "get_face_backend",
           "describe_backend"]

#: Names accepted by :func:`get_face_backend`.
BACKEND_NAMES = ("auto", "full", "lite")
#: Attribute set on a backend that was chosen as a fallback: the reason, as a sentence.
FALLBACK_ATTR = "fallback_reason"


def __getattr__(name: str) -> Any:
    """``FullBackend`` / ``LiteBackend`` on first access (keeps ``import easyphoto.face`` light)."""
    if name == "FullBackend":
        from .full import FullBackend

        return FullBackend
    if name == "LiteBackend":
        from .lite import LiteBackend

        return LiteBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_face_backend(name: str = "auto", models_dir: Union[str, Path, None] = None,
                     logger: Optional[logging.Logger] = None, *, weights: Any = None) -> FaceBackend:
    """The face backend called ``name`` (``"auto"``, ``"full"`` or ``"lite"``).

    ``models_dir`` defaults to :func:`easyphoto.paths.models_root`; ``weights`` is the model store
    to look files up in (default ``easyphoto.weights.ModelStore(models_dir)``; inside the WebUI
    pass the host-aware one). ``"full"`` falls back to lite with a WARNING naming the missing
    package or model file and how to get it when insightface or the buffalo_l files are missing;
    ``"auto"`` falls back the same way with an INFO line. The fallback's reason is kept on the
    returned backend (``fallback_reason``) for :func:`describe_backend`. Nothing is loaded here:
    models load on first use.
    """
    from ..paths import models_root
    from .full_models import default_registry, full_backend_problem, new_lite_backend

    choice = (name or "auto").strip().lower()
    if choice not in BACKEND_NAMES:
        raise InvalidRequest(f"unknown face backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    log = logger or logging.getLogger(__name__)
    folder = models_root(models_dir)
    if choice == "lite":
        return new_lite_backend(folder, logger)
    registry = weights if weights is not None else default_registry(folder)
    problem = full_backend_problem(folder, registry)
    if problem is None:
        from .full import FullBackend

        return FullBackend(folder, weights=registry, logger=logger)
    log.log(logging.WARNING if choice == "full" else logging.INFO,
            "the full face backend is unavailable: %s; using the lite face backend", problem)
    backend = new_lite_backend(folder, logger)
    try:
        setattr(backend, FALLBACK_ATTR, f"full face backend unavailable: {problem}")
    except AttributeError:  # a backend with __slots__: the log line is all we can give
        pass
    return backend


def describe_backend(backend: Optional[FaceBackend] = None, *, name: str = "auto",
                     models_dir: Union[str, Path, None] = None) -> dict:
    """What ``easyphoto doctor`` shows: ``name``, ``capabilities`` (capability → what serves it),
    ``same_person_threshold``, ``models`` (files in use), ``fallbacks`` (capability → reason) and
    ``fallback_reason`` (why this backend was chosen instead of the one asked for, or ``None``).

    Without ``backend``, describes ``get_face_backend(name, models_dir)`` (loads no model).
    """
    if backend is None:
        backend = get_face_backend(name, models_dir=models_dir)
    described = getattr(backend, "describe", None)
    info: dict = dict(described()) if callable(described) else {}
    info.setdefault("name", getattr(backend, "name", type(backend).__name__))
    info.setdefault("capabilities", dict(getattr(backend, "capabilities", {}) or {}))
    info.setdefault("same_person_threshold", getattr(backend, "same_person_threshold", None))
    info.setdefault("models", {})
    info.setdefault("fallbacks", {})
    info["fallback_reason"] = getattr(backend, FALLBACK_ATTR, None)
    return info
