"""Where the full face backend's model files are, and whether it can run (no heavy imports).

Lookup order for every role: the model registry of ``easyphoto.weights`` (its ``is_present`` /
``path``), then a fixed folder layout under the models folder. Nothing here downloads; a missing
file is reported with the command that fetches it.

Roles used (registry names):

* ``insightface_buffalo_l``: the unpacked ``buffalo_l`` folder holding ``det_10g.onnx`` and
  ``w600k_r50.onnx`` (``<models>/insightface/models/buffalo_l/``);
* ``saliency_u2net``, ``face_fusion``, ``skin_retouching``, ``portrait_enhancement_gpen``: local
  snapshot folders of the modelscope models (``<models>/modelscope/<owner>/<name>/``);
* ``face_parsing_bisenet``: the BiSeNet 19-class parser. The registry's file is the reference's
  PyTorch checkpoint ``face_skin.pth``; this backend runs the parser as ONNX and reads
  ``face_skin.onnx`` beside it (an export of that checkpoint). Without it, part masks come from
  the lite backend.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

from ..errors import ModelUnavailable

#: Model-registry role of insightface's buffalo_l pack and the two files of it the backend reads.
INSIGHTFACE_ROLE = "insightface_buffalo_l"
DET_FILE = "det_10g.onnx"
REC_FILE = "w600k_r50.onnx"
#: Layout used when no registry answers (the layout insightface keeps under its own root, so a
#: folder copied from ``~/.insightface/models/buffalo_l`` works as it is).
INSIGHTFACE_LAYOUT = ("insightface", "models", "buffalo_l")

#: capability → (registry role, modelscope task, modelscope model id).
MODELSCOPE_MODELS: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    "saliency": ("saliency_u2net", "semantic-segmentation", "damo/cv_u2net_salient-detection"),
    "fuse": ("face_fusion", "image-face-fusion", "damo/cv_unet-image-face-fusion_damo"),
    "retouch": ("skin_retouching", "skin-retouching-torch", "damo/cv_unet_skin_retouching_torch"),
    "super_resolve": ("portrait_enhancement_gpen", "image-portrait-enhancement",
                      "damo/cv_gpen_image-portrait-enhancement"),
})
#: Registry role of the face parser: BiSeNet 19 classes (SPEC §0). Read as ONNX: input
#: ``(1, 3, 512, 512)`` RGB normalised with the ImageNet mean/std, output ``(1, 19, 512, 512)``.
PARSER_ROLE = "face_parsing_bisenet"
PARSER_LAYOUT = ("easyphoto", "face_skin.onnx")
DOWNLOAD_HINT = "get it with `easyphoto models download {role}`"


def modelscope_layout(model_id: str) -> tuple[str, ...]:
    """Fallback folder of a modelscope model under the models folder."""
    return ("modelscope", *model_id.split("/"))


def default_registry(models_dir: Optional[Path]) -> Any:
    """The model registry of ``easyphoto.weights`` for ``models_dir``, or ``None`` without one.

    The registry is ``easyphoto.weights.ModelStore(models_dir)``; only its ``is_present(role)`` and
    ``path(role)`` are used. Standalone paths only: inside the WebUI, pass the host-aware store
    to :class:`~easyphoto.face.full.FullBackend` as ``weights=``.
    """
    if models_dir is None:
        return None
    try:
        from ..weights import ModelStore
    except ImportError:
        return None
    return ModelStore(models_dir)


def locate(role: str, models_dir: Optional[Path], registry: Any, layout: Sequence[str]) -> Optional[Path]:
    """Local path of model ``role``: the registry's answer when it has the file, else
    ``models_dir / *layout`` when that exists, else ``None``. Never downloads."""
    if registry is not None:
        try:
            if registry.is_present(role):
                return Path(registry.path(role))
        except Exception:  # noqa: BLE001 - an unknown role or a registry error means "not here"
            pass
    if models_dir is not None:
        candidate = Path(models_dir).joinpath(*layout)
        if candidate.exists():
            return candidate
    return None


def insightface_files(root: Optional[Path]) -> tuple[Optional[Path], Optional[Path]]:
    """``(det_10g.onnx, w600k_r50.onnx)`` under a buffalo_l location: a folder, a folder holding
    ``buffalo_l/``, one of the two files, or ``buffalo_l.zip`` extracted beside itself."""
    if root is None:
        return None, None
    root = Path(root)
    folders = [root.parent] if root.is_file() and root.suffix == ".onnx" else []
    folders += [root, root / "buffalo_l", root.with_suffix("")]
    det = next((f / DET_FILE for f in folders if (f / DET_FILE).is_file()), None)
    rec = next((f / REC_FILE for f in folders if (f / REC_FILE).is_file()), None)
    return det, rec


def full_backend_problem(models_dir: Optional[Path] = None, registry: Any = None) -> Optional[str]:
    """Why the full backend cannot run here — a sentence naming the missing package or file and
    how to get it — or ``None`` when it can. Imports nothing heavy (``find_spec`` only)."""
    for package, hint in (("onnxruntime", "pip install onnxruntime"),
                          ("insightface", "pip install 'easyphoto[full]', i.e. insightface==0.7.3")):
        if importlib.util.find_spec(package) is None:
            return f"the Python package '{package}' is not installed ({hint})"
    root = locate(INSIGHTFACE_ROLE, models_dir, registry, INSIGHTFACE_LAYOUT)
    det, rec = insightface_files(root)
    missing = [name for name, path in ((DET_FILE, det), (REC_FILE, rec)) if path is None]
    if not missing:
        return None
    where = root or (Path(models_dir).joinpath(*INSIGHTFACE_LAYOUT) if models_dir else "the models folder")
    return (f"{' and '.join(missing)} of '{INSIGHTFACE_ROLE}' not found in {where}; "
            + DOWNLOAD_HINT.format(role=INSIGHTFACE_ROLE))


def new_lite_backend(models_dir: Optional[Path], logger: Optional[logging.Logger]) -> Any:
    """A ``LiteBackend`` (imported lazily), given those of ``models_dir`` / ``logger`` its
    constructor accepts. Raises :class:`ModelUnavailable` when it cannot be imported."""
    try:
        from .lite import LiteBackend
    except ImportError as exc:
        raise ModelUnavailable(f"the lite face backend cannot be loaded: {exc}") from exc
    offered = {"models_dir": models_dir, "logger": logger}
    try:
        accepted = inspect.signature(LiteBackend).parameters
    except (TypeError, ValueError):
        accepted = {}
    return LiteBackend(**{k: v for k, v in offered.items() if k in accepted})
