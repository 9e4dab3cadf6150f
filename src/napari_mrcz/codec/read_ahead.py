"""Sections read ahead, several at a time, for a pass that reads a file's sections in order.

A pass over a remote file (the 3D fill of a tomogram or a movie, read from a
web server or an object store) reading one section at a time waits a round
trip for each, and leaves the link idle while it bins: a few percent of what
the link carries at 50 ms. :class:`ReadAhead` keeps the next sections in
flight while the current one is used: up to :data:`MOST` at once, and no
more decoded bytes than :data:`BUDGET_BYTES` held ahead, so the memory a pass
takes stays bounded whatever the file's size. Sections come back in order,
and exactly as ``get`` gives them: a failure is raised by the read of the
section it hit, not before. No napari imports here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .remote import CONCURRENT

#: Sections read at once, at most: the remote reader's own concurrency.
MOST = CONCURRENT
#: Decoded bytes held ahead of the pass, at most.
BUDGET_BYTES = 64 << 20


class ReadAhead:
    """``get(i)`` for a pass in order, with the next sections read concurrently in the background.

    Parameters
    ----------
    get
        ``get(i) -> array``: section ``i``, from any thread.
    n
        Number of sections.
    section_bytes
        Bytes of one section as ``get`` returns it (sets how many are held ahead).
    budget_bytes, most
        Bytes held ahead at most, and sections in flight at most.

    Notes
    -----
    Call it like ``get``; a read that skips back or far ahead drops the
    sections in flight that it no longer needs. :meth:`close` stops it.
    """

    def __init__(self, get: Callable[[int], Any], n: int, section_bytes: int,
                 budget_bytes: int = BUDGET_BYTES, most: int = MOST) -> None:
        self._get, self.n = get, n
        self.depth = max(1, min(most, budget_bytes // max(1, section_bytes)))
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __call__(self, i: int) -> Any:
        """Section ``i``; the next ones are read meanwhile."""
        with self._lock:
            if self._closed:
                raise ValueError("the read-ahead was closed")
            mine = self._pending.pop(i, None)
            for j in [j for j in self._pending if not i < j <= i + self.depth]:
                self._pending.pop(j).cancel()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="mrcz-read-ahead")
            for j in range(i + 1, min(self.n, i + 1 + self.depth)):
                if j not in self._pending:
                    self._pending[j] = self._pool.submit(self._get, j)
        return mine.result() if mine is not None else self._get(i)

    def close(self) -> None:
        """Drop the sections in flight and stop the threads (a read under way ends on its own)."""
        with self._lock:
            self._closed = True
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
