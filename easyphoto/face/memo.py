"""A small per-backend memory of face-model results, keyed by the image's bytes.

One portrait asks the same questions of the same pixels several times: the crop that was just
re-detected is detected again by face fusion, the user's ref image is detected by both fusions
and by the similarity score, the face_id image at every request, and the part masks of one face
are built ~18 times from one face mesh (or parse). :class:`ResultMemo` answers repeats from a
bounded LRU keyed by ``(question, shape, dtype, BLAKE2b of the bytes, extra key)``; the cost of a
miss is one hash (~1 ms per megapixel). Results must be immutable or copied by the caller:
:func:`frozen_faces` and :func:`frozen_array` make read-only copies.

Each backend instance owns its memo (no module state); ``clear()`` empties it (e.g. on unload).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np

from .types import Face

#: Entries kept per backend: a batch touches a handful of images at a time.
DEFAULT_SIZE = 64


def image_key(image: np.ndarray) -> tuple:
    """``(shape, dtype, digest)`` of an array's bytes: equal only for equal pixels."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(memoryview(array).cast("B"), digest_size=16).digest()
    return (array.shape, array.dtype.str, digest)


def face_key(face: Face) -> tuple:
    """A hashable key of a face: its box and landmarks exactly."""
    box = face.box
    points = np.ascontiguousarray(face.landmarks, dtype=np.float32).tobytes()
    return (box.x0, box.y0, box.x1, box.y1, points)


def frozen_array(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """A read-only copy (``None`` stays ``None``)."""
    if array is None:
        return None
    copy = np.array(array, copy=True)
    copy.setflags(write=False)
    return copy


def frozen_faces(faces: Sequence[Face]) -> tuple:
    """Faces whose landmark arrays are read-only copies (safe to hand out repeatedly)."""
    return tuple(Face(f.box, frozen_array(np.asarray(f.landmarks, np.float32)), f.score)
                 for f in faces)


class ResultMemo:
    """Bounded LRU of ``compute()`` results by :func:`image_key` and an extra key."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, question: str, image: np.ndarray, extra: Hashable,
            compute: Callable[[], Any]) -> Any:
        """The memorised answer to ``question`` about ``image`` (+ ``extra``), computing and
        keeping it on a miss (``compute`` runs outside the memo's lock)."""
        key = (question, image_key(image), extra)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
