"""HTML and caption text the tabs show: messages, the progress bar, verdicts, summaries.

Pure functions of plain data (job views, service dicts); every piece of text that comes from
data is escaped. CSS classes are ``easyphoto-*`` (see ``style.css``).
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from ..jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobView

VERDICT_LABELS = MappingProxyType({
    "ok": "kept", "unreadable": "unreadable", "too_large": "too large", "too_small": "too small",
    "no_face": "no face", "duplicate": "duplicate", "other_person": "other person",
    "surplus": "not needed"})
STATUS_LABELS = MappingProxyType({QUEUED: "queued", RUNNING: "running", DONE: "finished",
                                  FAILED: "failed", CANCELLED: "cancelled"})


def esc(value: Any) -> str:
    """Text content (quotes stay readable)."""
    return html.escape(str(value), quote=False)


def attr(value: Any) -> str:
    """An attribute value (quotes escaped too)."""
    return html.escape(str(value), quote=True)


def message(text: str, ok: bool | None = True) -> str:
    """A one-line message: ``ok`` True (green), False (red, an error) or None (neutral)."""
    if not text:
        return ""
    kind = {True: "ok", False: "error", None: "info"}[ok]
    role = ' role="alert"' if ok is False else ""
    return f'<div class="easyphoto-message easyphoto-{kind}"{role}>{esc(text)}</div>'


def duration(seconds: float | None) -> str:
    """``75`` → ``"1 min 15 s"``; ``None`` → ``""``."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def progress(view: JobView | None) -> str:
    """The progress bar of a job: percent, stage, ETA and the job's last message."""
    if view is None:
        return ('<div class="easyphoto-progress" data-status="idle" data-percent="0">'
                '<div class="easyphoto-progress-label">No job yet.</div></div>')
    percent = 100.0 if view.status == DONE else round(100.0 * view.fraction, 1)
    parts = [f"{percent:.0f} %", STATUS_LABELS.get(view.status, view.status)]
    if view.status == RUNNING and view.stage:
        parts.append(f"stage: {view.stage}" + (f" {view.done}/{view.total}" if view.total else ""))
    if view.status == RUNNING and view.eta:
        parts.append(f"ETA {duration(view.eta)}")
    if view.message and view.status not in (DONE,):
        parts.append(view.message)
    label = " · ".join(esc(p) for p in parts)
    return (f'<div class="easyphoto-progress" data-status="{attr(view.status)}" '
            f'data-percent="{percent:.1f}" data-job="{attr(view.id)}">'
            f'<div class="easyphoto-progress-track"><div class="easyphoto-progress-fill '
            f'easyphoto-{attr(view.status)}" style="width:{percent:.1f}%"></div></div>'
            f'<div class="easyphoto-progress-label">{label}</div></div>')


def job_message(view: JobView) -> str:
    """The sentence under the bar: what happened to the job, errors in red."""
    title = view.title or view.kind
    if view.status == FAILED:
        return message(f"{title} failed: {view.error or view.message}", ok=False)
    if view.status == CANCELLED:
        return message(f"{title} was cancelled.", ok=None)
    if view.status == DONE:
        return message(f"{title}: finished.", ok=True)
    return message(f"{title}: {STATUS_LABELS.get(view.status, view.status)}…", ok=None)


def photo_caption(number: int, check: dict | None) -> str:
    """Gallery caption of photo ``number`` (1-based): its verdict, the reference marked."""
    if check is None:
        return f"{number} …"
    if check.get("is_reference"):
        return f"{number} ★ reference"
    verdict = check.get("verdict", "")
    if verdict == "ok":
        return f"{number} ✓ kept"
    return f"{number} ✗ {VERDICT_LABELS.get(verdict, verdict)}"


def verdicts(report: dict | None) -> str:
    """The check report: a summary line, then one row per photo with its reason."""
    if not report:
        return ('<div class="easyphoto-verdicts easyphoto-empty">Add 5–20 photos of one '
                'person: they are checked at once.</div>')
    rows = []
    for number, check in enumerate(report.get("photos", []), start=1):
        verdict = check.get("verdict", "")
        css = "ok" if verdict == "ok" else "bad"
        mark = "★ reference" if check.get("is_reference") else VERDICT_LABELS.get(verdict, verdict)
        score = check.get("id_score")
        rows.append(f'<tr class="easyphoto-verdict-{css}" data-verdict="{attr(verdict)}">'
                    f"<td>{number}</td><td>{esc(check.get('file', ''))}</td><td>{esc(mark)}</td>"
                    f"<td>{'' if score is None else f'{score:.2f}'}</td>"
                    f"<td>{esc(check.get('reason', ''))}</td></tr>")
    kept, dropped = report.get("kept", 0), report.get("dropped", 0)
    summary = f"{kept} photo(s) kept, {dropped} not used"
    if report.get("reference"):
        summary += f"; reference photo: {report['reference']}"
    return (f'<div class="easyphoto-verdicts"><p class="easyphoto-summary">{esc(summary)}</p>'
            '<table><thead><tr><th>#</th><th>file</th><th>verdict</th><th>identity</th>'
            f'<th>reason</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def render_caption(item: dict) -> str:
    """Caption of one validation render: its step and score (or "no face")."""
    score = item.get("score")
    return f"step {item.get('step')} · " + (f"{score:.3f}" if score is not None else "no face")


def training_summary(summary: dict | None) -> str:
    """Which checkpoints were fused (with weights) and fusion's own message."""
    if not summary:
        return ""
    rows = "".join(f"<tr><td>{esc(c.get('step'))}</td><td>{esc(c.get('checkpoint', ''))}</td>"
                   f"<td>{float(c.get('weight', 0)):.2f}</td></tr>"
                   for c in summary.get("checkpoints", []))
    note = message(summary.get("message", ""), ok=None if summary.get("fallback") else True)
    return (f'<div class="easyphoto-summary">{note}<table><thead><tr><th>step</th>'
            f"<th>checkpoint</th><th>weight</th></tr></thead><tbody>{rows}</tbody></table></div>")


def short_date(iso: str) -> str:
    try:
        return _dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return str(iso or "")


def user_caption(user: dict) -> str:
    """A thumbnail's caption: the id and its score (the table has the rest)."""
    score = user.get("score")
    return user["user_id"] + (f" · {score:.2f}" if score is not None else "")


def users_table(users: Iterable[dict]) -> str:
    rows = "".join(
        f"<tr data-user=\"{attr(u['user_id'])}\"><td>{esc(u['user_id'])}</td>"
        f"<td>{esc(u.get('base_model') or '')}</td><td>{esc(short_date(u.get('updated', '')))}</td>"
        f"<td>{'' if u.get('score') is None else format(u['score'], '.3f')}</td>"
        f"<td>{esc(u.get('status', ''))}</td></tr>" for u in users)
    if not rows:
        return '<div class="easyphoto-users easyphoto-empty">No user ids yet: train one first.</div>'
    return ('<div class="easyphoto-users"><table><thead><tr><th>user id</th><th>base model</th>'
            f"<th>date</th><th>score</th><th>status</th></tr></thead><tbody>{rows}</tbody>"
            "</table></div>")


def _score(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


def result_caption(result: dict) -> str:
    """Gallery caption of one output: template, copy number, similarity per person."""
    text = str(result.get("template", ""))
    if result.get("index"):
        text += f" #{int(result['index']) + 1}"
    scores = [f"{p.get('user_id')} {float(p['score']):.2f}" for p in result.get("people", [])
              if p.get("score") is not None]
    return text + (" · " + ", ".join(scores) if scores else "")


def result_detail(result: dict, scored: bool = False) -> str:
    """One output's people (user id, status, similarity), seed, size and notes; ``scored``:
    the request asked for similarity scores (else a hint says how to get them)."""
    rows = "".join(f"<tr><td>{int(p.get('index', 0)) + 1}</td><td>{esc(p.get('user_id', ''))}</td>"
                   f"<td>{esc(p.get('status', ''))}</td><td>{_score(p.get('score'))}</td></tr>"
                   for p in result.get("people", []))
    size = "×".join(str(v) for v in result.get("size", []))
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.get("notes", []))
    hint = ("" if scored else
            "<p class='easyphoto-hint'>Similarity is computed when “Display score” is on.</p>")
    return (f'<div class="easyphoto-detail"><p>{esc(result.get("template", ""))} · seed '
            f'{esc(result.get("seed", ""))} · {esc(size)} px</p><table><thead><tr><th>face</th>'
            f"<th>user id</th><th>status</th><th>similarity</th></tr></thead><tbody>{rows}"
            f"</tbody></table>{hint}{f'<ul>{notes}</ul>' if notes else ''}</div>")


def template_errors(errors: Iterable[dict]) -> str:
    """The templates that failed, each with its reason."""
    rows = "".join(f'<li data-template="{attr(e.get("template", ""))}"><b>'
                   f'{esc(e.get("template", ""))}</b>: {esc(e.get("error", ""))}</li>'
                   for e in errors)
    return f'<div class="easyphoto-errors" role="alert"><ul>{rows}</ul></div>' if rows else ""
