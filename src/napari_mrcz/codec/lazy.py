"""A lazy stack: an array-like that decodes frames on demand, caches and prefetches them.

napari (or dask, or numpy code) slices it like an array; only the frames asked
for are decoded, through the codec's random access. A small LRU cache keeps
recent frames, and after each request a background thread decodes the next
frames in the direction of travel, so stepping through a movie mostly hits
the cache. That thread runs at the lowest CPU priority with one decoder
thread, so it only uses time the viewer leaves idle.
No napari imports here.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any

import numpy as np

#: What to do to edit a lazy array (the message of an edit refused).
LOAD_FIRST = "load it into memory first (the MRCZ widget's \"Load into memory\", or np.asarray(stack))"
#: Decoded frames kept for all open files together, in bytes.
FRAME_BUDGET_BYTES = 512 << 20
_tokens = itertools.count()


class FrameBudget:
    """One memory budget for the decoded frames of every open file: least recently used go first.

    Each :class:`FrameCache` reports the frames it keeps; when the total
    passes ``limit_bytes``, the frames used longest ago are dropped, from
    whichever file they belong to. The frame just admitted is never the one
    dropped, so a single frame larger than the budget can still be shown.
    """

    def __init__(self, limit_bytes: int = FRAME_BUDGET_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0
        self._lru: collections.OrderedDict[tuple[int, int], tuple[weakref.ref, int]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def admit(self, cache: FrameCache, i: int, nbytes: int) -> None:
        """Frame ``i`` of ``cache`` is now kept (and the most recently used)."""
        key = (cache.token, i)
        victims = []
        with self._lock:
            old = self._lru.pop(key, None)
            self.used += nbytes - (old[1] if old else 0)
            self._lru[key] = (weakref.ref(cache), nbytes)
            while self.used > self.limit_bytes and len(self._lru) > 1:
                victim, (ref, n) = next(iter(self._lru.items()))
                del self._lru[victim]
                self.used -= n
                victims.append((ref, victim[1]))
        for ref, j in victims:  # outside the budget's lock: caches take their own
            owner = ref()
            if owner is not None:
                owner._drop(j)

    def touch(self, cache: FrameCache, i: int) -> None:
        """Frame ``i`` of ``cache`` was used again."""
        with self._lock:
            key = (cache.token, i)
            if key in self._lru:
                self._lru.move_to_end(key)

    def forget(self, token: int) -> None:
        """The cache with this ``token`` keeps nothing any more (closed, or dropped)."""
        with self._lock:
            for key in [k for k in self._lru if k[0] == token]:
                self.used -= self._lru.pop(key)[1]


#: The budget every frame cache shares unless given its own.
SHARED_BUDGET = FrameBudget()


def _idle_priority() -> None:
    """Run this (prefetch) thread at the lowest CPU priority: the viewer must never wait for it.

    Only Linux takes a thread id where ``setpriority`` takes a process id
    (elsewhere that number could name another process); other systems, or a
    refusal, prefetch at normal priority.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # os.setpriority missing, or not allowed
        pass


class FrameCache:
    """Frames of one source: decoded once, kept while they fit, neighbours prefetched.

    Parameters
    ----------
    read
        ``read(i) -> ndarray``: decodes frame ``i`` (must be thread-safe).
    n
        Number of frames.
    prefetch
        How many frames ahead, in the direction of travel, to decode in the background.
    budget
        The memory budget this cache's frames count against (default: the one
        all open files share, :data:`SHARED_BUDGET`).
    wait_for_prefetch
        Whether a frame asked for while its prefetch is under way waits for
        it. For frames fetched over the network (the prefetch is a transfer
        in flight: reading again would fetch the bytes twice; it then runs at
        normal priority); not for frames decoded from a local file, whose
        prefetch runs at idle priority.
    """

    def __init__(self, read: Callable[[int], np.ndarray], n: int, prefetch: int = 2,
                 budget: FrameBudget | None = None, wait_for_prefetch: bool = False) -> None:
        self._read, self.n, self.prefetch = read, n, prefetch
        self.wait_for_prefetch = wait_for_prefetch
        self.budget = budget if budget is not None else SHARED_BUDGET
        self.token = next(_tokens)
        weakref.finalize(self, self.budget.forget, self.token)  # a layer dropped unclosed frees its share
        self._frames: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._pending: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._last = -2
        self.hits = self.misses = 0

    def get(self, i: int) -> np.ndarray:
        """Frame ``i`` (read-only), from the cache or decoded now; prefetches ahead of it."""
        frame = self.take(i)
        self._schedule(i)
        return frame

    def take(self, i: int) -> np.ndarray:
        """Frame ``i`` as :meth:`get` gives it, kept, but not a step of the viewer: nothing is prefetched.

        For readers inside the viewer's own path (a binned level reading the
        full frames it bins, from its prefetch thread): were they steps, their
        frames would set the direction of travel, and the frame the viewer
        asks for next would find nothing prefetched.
        """
        with self._lock:
            frame = self._frames.get(i)
            if frame is not None:
                self._frames.move_to_end(i)
                self.hits += 1
            pending = self._pending.get(i) if frame is None else None
        if frame is not None:
            self.budget.touch(self, i)
        if frame is None:
            if pending is not None and self.wait_for_prefetch:
                with contextlib.suppress(CancelledError):
                    pending.result()  # a failure in it returned None: read again below, where it is raised
            # A local prefetch still under way runs at idle priority: never wait for it.
            if pending is not None and pending.done() and not pending.cancelled() and \
                    pending.result() is not None:
                frame = pending.result()
            else:
                if pending is not None:
                    pending.cancel()
                frame = self._load(i)
                self.misses += 1
        return frame

    def cached(self, i: int) -> np.ndarray | None:
        """Frame ``i`` if the cache holds it (nothing decoded, nothing moves)."""
        with self._lock:
            return self._frames.get(i)

    def read_through(self, i: int) -> np.ndarray:
        """Frame ``i`` from the cache if it is there, else decoded and not kept (nothing else moves)."""
        frame = self.cached(i)
        return frame if frame is not None else self._read(i)

    def _load(self, i: int) -> np.ndarray:
        frame = self._read(i)
        frame.setflags(write=False)
        with self._lock:
            self._frames[i] = frame
            self._frames.move_to_end(i)
            self._pending.pop(i, None)
        self.budget.admit(self, i, frame.nbytes)
        return frame

    def _drop(self, i: int) -> None:
        """Let frame ``i`` go (the shared budget needs the room)."""
        with self._lock:
            self._frames.pop(i, None)

    def _schedule(self, i: int) -> None:
        """Prefetch ahead in the direction of travel; a jump (a slider drag) prefetches nothing."""
        step, self._last = i - self._last, i
        if self.prefetch <= 0 or step not in (1, -1):
            return
        self._prefetch([j for j in (i + step * k for k in range(1, self.prefetch + 1)) if 0 <= j < self.n])

    def _prefetch(self, wanted: list[int]) -> None:
        with self._lock:
            todo = [j for j in wanted if j not in self._frames and j not in self._pending]
            if not todo:
                return
            if self._pool is None:
                # Waited for (frames over the network): at normal priority, or the viewer would wait
                # on a thread that any busy process starves.
                priority = None if self.wait_for_prefetch else _idle_priority
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrcz-prefetch",
                                                initializer=priority)
            for j in todo:
                self._pending[j] = self._pool.submit(self._quiet_load, j)

    def _quiet_load(self, j: int) -> np.ndarray | None:
        try:
            return self._load(j)
        except Exception:  # a damaged frame is reported when it is asked for, not here
            with self._lock:
                self._pending.pop(j, None)
            return None

    def close(self) -> None:
        """Stop prefetching and drop the cached frames."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._frames.clear()
            self._pending.clear()
        self.budget.forget(self.token)


class _ArrayShape:
    """``ndim``, ``size``, ``nbytes`` and ``len`` of an array-like from its ``shape`` and ``dtype``."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the whole stack once decoded."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]


class LazyStack(_ArrayShape):
    """An array of shape ``(n, *frame_shape)`` whose frames are decoded on demand.

    Parameters
    ----------
    cache
        Where frames come from.
    frame_shape
        Shape of one frame.
    dtype
        Type of the frames.
    index
        Maps this stack's frame number to the cache's (channels of a
        multi-channel stack); identity by default.
    n
        Number of frames (default: the cache's).
    transform
        Applied to each frame (amplitude or phase of complex data).
    region
        ``region(i, box) -> ndarray``: a box (a tuple of slices) of frame ``i``
        made without the whole frame. Given, a box smaller than the frame is
        read through it (a coarse level bins only what a zoomed-in viewer shows)
        and whole frames through the cache.
    """

    def __init__(self, cache: FrameCache, frame_shape: tuple[int, ...], dtype: Any, *,
                 index: Callable[[int], int] | None = None, n: int | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 region: Callable[[int, tuple[slice, ...]], np.ndarray] | None = None,
                 _box: tuple[slice, ...] | None = None) -> None:
        self.cache = cache
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self._index = index or (lambda i: i)
        self._transform = transform
        self._region, self._box = region, _box
        self.shape = (cache.n if n is None else n, *self.frame_shape)

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self.dtype})"

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (negative counts from the end)."""
        if self._box is not None:
            return self._region(self._source_index(i), self._box)
        frame = self.cache.get(self._source_index(i))
        return frame if self._transform is None else self._transform(frame)

    def _source_index(self, i: int) -> int:
        """The cache's number of this stack's frame ``i`` (negative counts from the end)."""
        n = self.shape[0]
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        return self._index(i % n)

    def _region_box(self, rest: tuple) -> tuple[slice, ...] | None:
        """``rest`` as a box for ``region``: step-1 slices on every axis, smaller than a frame."""
        if (self._region is None or self._transform is not None or self._box is not None
                or len(rest) != len(self.frame_shape) or not all(isinstance(k, slice) for k in rest)):
            return None
        box = []
        for key, size in zip(rest, self.frame_shape, strict=True):
            start, stop, step = key.indices(size)
            if step != 1 or stop <= start:
                return None
            box.append(slice(start, stop))
        smaller = any(b.stop - b.start < n for b, n in zip(box, self.frame_shape, strict=True))
        return tuple(box) if smaller else None

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:at] + fill + key[at + 1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            box = self._region_box(rest)
            if box is not None:
                return np.asarray(self._region(self._source_index(int(first)), box))
            return np.asarray(self.frame(int(first))[rest] if rest else self.frame(int(first)))
        frames = np.arange(self.shape[0])[first]
        if isinstance(first, slice) and frames.size == 1:
            # napari asks for data[k:k + 1, ...]: a view of the cached frame, no copy
            out = self.frame(int(frames[0]))[None]
            return out[(slice(None), *rest)] if rest else out
        # Several frames: a lazy view, decoded only when read. napari slices a multiscale
        # level as data[:, y0:y1, x0:x1] before it picks the plane it shows.
        return self._view(frames, rest)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(f"{self!r} is read from its file frame by frame and cannot be edited: {LOAD_FIRST}")

    def _view(self, frames: np.ndarray, rest: tuple) -> LazyStack:
        inner, index = self._transform, self._index
        box = self._region_box(rest)
        if box is not None:
            return LazyStack(self.cache, tuple(b.stop - b.start for b in box), self.dtype, n=len(frames),
                             index=lambda k: index(int(frames[k])), region=self._region, _box=box)

        def crop(frame: np.ndarray) -> np.ndarray:
            frame = inner(frame) if inner is not None else frame
            return frame[rest] if rest else frame
        frame_shape = np.broadcast_to(np.empty((), bool), self.frame_shape)[rest].shape
        return LazyStack(self.cache, frame_shape, self.dtype, index=lambda k: index(int(frames[k])),
                         n=len(frames), transform=crop if (rest or inner is not None) else None)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        for k in range(self.shape[0]):
            out[k] = self.frame(k)
        return out if dtype is None else out.astype(dtype)


class LazyVolumes(_ArrayShape):
    """An array of shape ``(n, slices, *frame_shape)``: a stack of volumes whose sections decode on demand.

    Volume ``j`` is sections ``j * slices`` ... ``(j + 1) * slices - 1`` of a
    section cache: python-mrcz's list of multi-slice frames (``slices`` in
    MZ), read back as the 4D array it was written from. Indexing decodes only
    the sections asked for (``data[j, k]`` one section, ``data[j]`` one
    volume) and returns numpy arrays.

    Parameters
    ----------
    cache
        Where sections come from (``cache.n`` of them, a whole number of volumes).
    slices
        Sections per volume.
    frame_shape
        Shape of one section.
    dtype
        Type of the sections (of the result of ``transform``, if given).
    transform
        Applied to each section (amplitude or phase of complex data).
    """

    def __init__(self, cache: FrameCache, slices: int, frame_shape: tuple[int, ...], dtype: Any, *,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if slices < 1 or cache.n % slices:
            raise ValueError(f"{cache.n} sections are not a whole number of {slices}-section volumes")
        self.cache, self.slices = cache, int(slices)
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self._transform = transform
        self.shape = (cache.n // self.slices, self.slices, *self.frame_shape)

    def __repr__(self) -> str:
        return f"LazyVolumes(shape={self.shape}, dtype={self.dtype})"

    def volume(self, j: int) -> LazyStack:
        """Volume ``j`` (negative counts from the end), lazily: a stack of its ``slices`` sections."""
        n = self.shape[0]
        if not -n <= j < n:
            raise IndexError(f"volume {j} out of range for {n} volumes")
        first = (j % n) * self.slices
        return LazyStack(self.cache, self.frame_shape, self.dtype, index=lambda k: first + k, n=self.slices,
                         transform=self._transform)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            return np.asarray(self.volume(int(first))[rest] if rest else self.volume(int(first)))
        volumes = np.arange(self.shape[0])[first]
        if volumes.ndim != 1:
            raise IndexError(f"unsupported index {first!r} for the volume axis")
        parts = [np.asarray(self.volume(int(j))[rest] if rest else self.volume(int(j))) for j in volumes]
        if parts:
            return np.stack(parts)
        return np.empty((0, *np.broadcast_to(np.empty((), bool), self.shape[1:])[rest].shape), self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class LazyCast(_ArrayShape):
    """Another array-like's values as ``dtype``, cast as they are read; edits are refused.

    A segmentation read lazily (a napari Labels layer): reads give new,
    writable arrays, so that napari's painting reaches :meth:`__setitem__`,
    which says to load the layer into memory first. Plain MRC labels stored
    as float32 (whole numbers) read as integers through it.

    Parameters
    ----------
    data
        The array-like read (a :class:`LazyStack`, a read-only memory map ...).
    dtype
        The type its values are given as.
    """

    def __init__(self, data: Any, dtype: Any) -> None:
        self.data = data
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in data.shape)

    def __repr__(self) -> str:
        return f"LazyCast(shape={self.shape}, dtype={self.dtype}, of {np.dtype(self.data.dtype).name})"

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.data[key]).astype(self.dtype)

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError(f"{self!r} is read from its file as it is shown and cannot be edited: {LOAD_FIRST}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        for k in range(self.shape[0]):  # one frame at a time: no copy of the whole source's type
            out[k] = self.data[k]
        return out if dtype is None else out.astype(dtype)
