"""``easyphoto models list | download ROLE... | verify [ROLE...]``.

``download`` prints each model's licence line before fetching it. A licence that does not clearly
allow commercial use needs ``--accept-licence`` or, on an interactive terminal, a typed ``y``.
Exit codes: 0 all done; 1 some role failed (licence refused, offline, checksum mismatch, or for
``verify`` a mismatch / a named role missing); 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from ..errors import ChecksumMismatch, EasyPhotoError
from ..paths import models_root
from ..weights import LicenceNotAccepted, ModelStore, human_size, licence_line
from . import emit


def build_store(args: argparse.Namespace) -> ModelStore:
    """The standalone store for ``--models-dir`` / ``--data-dir`` (no host folders)."""
    root = models_root(getattr(args, "models_dir", None), getattr(args, "data_dir", None))
    return ModelStore(root)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``models`` with its three actions (each takes the common options)."""
    parser = subparsers.add_parser("models", help="list, download and verify model files",
                                   description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    parser.set_defaults(handler=lambda args: _usage(parser))

    p_list = actions.add_parser("list", parents=[common], help="every model, licence, presence")
    p_list.set_defaults(handler=cmd_list)

    p_dl = actions.add_parser("download", parents=[common], help="download model files")
    p_dl.add_argument("roles", nargs="+", metavar="ROLE", help="model roles (see `models list`)")
    p_dl.add_argument("--accept-licence", "--accept-license", dest="accept_licence",
                      action="store_true",
                      help="accept non-commercial / unconfirmed licences without asking")
    p_dl.add_argument("--force", action="store_true", help="download again even if present")
    p_dl.set_defaults(handler=cmd_download)

    p_verify = actions.add_parser("verify", parents=[common], help="check sha256 of model files")
    p_verify.add_argument("roles", nargs="*", metavar="ROLE", help="roles (default: all present)")
    p_verify.set_defaults(handler=cmd_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---- list -----------------------------------------------------------------------------------
def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> str:
    """Plain-text table; ``columns`` are ``(header, key, max width)``."""
    cells = [[_cell(str(row.get(key, "")), width) for _, key, width in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _list_human(payload: dict[str, Any]) -> str:
    rows = [dict(r, present="yes" if r["present"] else "-",
                 commercial="yes" if r["commercial_use"] else "NO", size_h=human_size(r["size"]),
                 role_o=r["role"] + ("*" if r["optional"] else ""))
            for r in payload["models"]]
    table = format_table(rows, [("ROLE", "role_o", 30), ("KIND", "kind", 10),
                                ("FAMILY", "family", 6), ("PRESENT", "present", 7),
                                ("SIZE", "size_h", 9), ("COMMERCIAL", "commercial", 10),
                                ("LICENCE", "licence", 60)])
    have = sum(r["present"] for r in payload["models"])
    return (f"{table}\n\n{have}/{len(rows)} present in {payload['models_dir']}  "
            "(* optional; COMMERCIAL NO = licence forbids or does not confirm commercial use)")


def cmd_list(args: argparse.Namespace) -> int:
    """``models list``: every role with licence, commercial flag, presence, path, size, sha256."""
    store = build_store(args)
    emit(args, {"models_dir": str(store.models_root), "models": store.status()}, _list_human)
    return 0


# ---- download -------------------------------------------------------------------------------
def _progress_bar(role: str, enabled: bool) -> tuple[Optional[Callable[[int, Optional[int]], None]],
                                                      Callable[[], None]]:
    """A ``(progress, close)`` pair drawing a tqdm bar on stderr (no-op when disabled)."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(desc=role, unit="B", unit_scale=True, file=sys.stderr, leave=False)

    def progress(done: int, total: Optional[int]) -> None:
        if total is not None and bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return progress, bar.close


def _accepted(args: argparse.Namespace, spec_commercial: bool) -> bool:
    """True when the licence needs no consent, was accepted by flag, or is typed in."""
    if spec_commercial or args.accept_licence:
        return True
    if args.json or not sys.stdin.isatty():
        return False
    answer = input("Accept this licence and download? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _download_one(store: ModelStore, role: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = store.spec(role)
    if store.is_present(role) and not args.force:
        return {"role": role, "ok": True, "downloaded": False, "path": str(store.path(role)),
                "licence": spec.licence, "commercial_use": spec.commercial_use}
    print(licence_line(spec), file=sys.stderr if args.json else sys.stdout, flush=True)
    if not _accepted(args, spec.commercial_use):
        raise LicenceNotAccepted(f"Not downloading {role}: its licence ({spec.licence}) does not "
                                 "clearly allow commercial use. Re-run with --accept-licence to "
                                 "accept it.")
    progress, close = _progress_bar(role, not args.json and sys.stderr.isatty())
    try:
        result = store.download(role, progress, accept_licence=True, force=args.force)
    finally:
        close()
    return dict(result.to_dict(), ok=True)


def _download_human(payload: dict[str, Any]) -> str:
    lines = []
    for r in payload["results"]:
        if not r["ok"]:
            lines.append(f"{r['role']}: FAILED")
        else:
            state = "downloaded" if r["downloaded"] else "already present"
            lines.append(f"{r['role']}: {state} -> {r['path']}")
    return "\n".join(lines)


def cmd_download(args: argparse.Namespace) -> int:
    """``models download ROLE...``: licence line, consent, resumable verified download."""
    store = build_store(args)
    for role in args.roles:
        store.spec(role)  # unknown roles fail before anything is fetched
    results = []
    for role in args.roles:
        try:
            results.append(_download_one(store, role, args))
        except EasyPhotoError as exc:
            if not args.json:
                print(f"error: {exc}", file=sys.stderr)
            results.append({"role": role, "ok": False, "error": str(exc),
                            "type": type(exc).__name__})
    ok = all(r["ok"] for r in results)
    emit(args, {"ok": ok, "results": results}, _download_human)
    return 0 if ok else 1


# ---- verify ---------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    """``models verify [ROLE...]``: sha256 of present files against the registry."""
    store = build_store(args)
    named = bool(args.roles)
    roles = args.roles or [s.role for s in store.specs() if store.is_present(s.role)]
    rows = []
    for role in roles:
        row = {"role": role, "path": str(store.path(role))}
        try:
            row["status"] = store.verify(role)
        except ChecksumMismatch as exc:
            row.update(status="mismatch", error=str(exc))
        rows.append(row)
    bad = [r for r in rows if r["status"] == "mismatch" or (named and r["status"] == "missing")]
    emit(args, {"ok": not bad, "results": rows}, _verify_human)
    return 1 if bad else 0


def _verify_human(payload: dict[str, Any]) -> str:
    if not payload["results"]:
        return "no model files present"
    lines = [f"{r['role']}: {r['status']}" + (f"\n  {r['error']}" if r.get("error") else "")
             for r in payload["results"]]
    return "\n".join(lines)
