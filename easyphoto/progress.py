"""One progress type for every long operation (CLI: a line / tqdm, UI: a bar, API: job status).

A stage reports ``Progress(stage, done, total, ...)`` through a :data:`ProgressFn`; a
:class:`CancelToken` is polled between units of work and raises :class:`Cancelled`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .errors import EasyPhotoError


class Cancelled(EasyPhotoError):
    """The user cancelled the operation."""

    http_status = 409


@dataclass
class Progress:
    """Where a long operation stands. ``done``/``total`` count units of the current ``stage``."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    loss: Optional[float] = None
    #: Estimated seconds left in this stage (``None`` when unknown).
    eta: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"{self.stage} {self.done}/{self.total}" if self.total else self.stage]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eta is not None:
            parts.append(f"ETA {self.eta:.0f} s")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """A ProgressFn that ignores reports."""


class CancelToken:
    """Set from any thread; checked by the worker between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was asked for."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class EtaClock:
    """Seconds-left estimate for ``total`` equal units, from the mean time per unit so far."""

    def __init__(self, total: int):
        self.total, self.started = total, time.monotonic()

    def eta(self, done: int) -> Optional[float]:
        if done <= 0 or self.total <= 0:
            return None
        per_unit = (time.monotonic() - self.started) / done
        return per_unit * max(0, self.total - done)
