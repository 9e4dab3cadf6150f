"""Large volumes and stacks as multiscale layers: coarse levels filled in the background, wired to napari.

Thin by design: :mod:`napari_mrcz.codec.pyramid` plans, builds and caches the
levels; this module gives napari the level arrays at once (memory maps in the
cache, filled as the build goes, or a cache hit whose checksums the worker
checks before it is trusted), runs the build in napari's thread worker with
its progress bar, refreshes the layer as planes finish
(at most every ``REFRESH_S``, less often where redrawing is slow), and stops
the build when the layer is removed.
In 3D napari draws the coarsest level, so a tomogram appears as soon as its
first planes are binned; in 2D, zooming out on huge planes uses the coarse
levels.
"""

from __future__ import annotations

import atexit
import shutil
import time
import weakref
from typing import Any

import numpy as np

from .codec.binning import binned_size
from .codec.pyramid import CacheEntry, PyramidCache, fill_entry_steps, fill_frames_steps, plan_levels
from .codec.remote import file_name
from .codec.source import ImageSource

#: Shortest time between two refreshes of a filling layer (each uploads the coarsest level anew);
#: longer where a refresh is slow, so that redrawing never takes more than a fifth of the time.
#: What a refresh costs is mostly the repaint that follows it (a 3D volume drawn in software takes
#: seconds, on every core): measured as the longest stall of the event loop between two planes'
#: reports after it, up to the first report more than ``REFRESH_S`` after it.
REFRESH_S = 1.0

#: Shortest time between two updates of a fill's progress bar: each repaints the window, a 3D canvas
#: too (drawn in software, that costs as much as binning many frames).
PROGRESS_S = 1.0

#: The fills under way, by the id of the level arrays a layer holds.
_FILLS: dict[int, LevelFill] = {}
#: Fills whose worker thread may still run (stopped and waited for at exit).
_RUNNING: weakref.WeakSet = weakref.WeakSet()


def wants_pyramid(source: ImageSource) -> bool:
    """A volume (not a movie or tilt series) large enough to get coarse levels."""
    return (len(source.shape) == 3 and not source.rgb and not source.mrcz.get("stack")
            and source.slices <= 1 and np.dtype(source.dtype).kind in "biuf"
            and bool(plan_levels(source.shape)))


class LevelFill:
    """Coarse levels of one opened file, and the background pass that fills them.

    A volume's pyramid (binned in z, y and x), or with ``factor`` the one
    level of a movie or tilt series napari draws in 3D: every frame binned
    ``factor`` in y and x.
    """

    def __init__(self, source: ImageSource, read_frame: Any, cache: PyramidCache | None = None,
                 factor: int | None = None) -> None:
        self.source, self.read_frame, self.factor = source, read_frame, factor
        self.cache = cache if cache is not None else PyramidCache()
        n, ny, nx = source.shape
        shapes = plan_levels(source.shape) if factor is None else \
            [(n, binned_size(ny, factor), binned_size(nx, factor))]
        # Checked at once (manifest, shapes); the values' CRC-32s in the worker, off the event loop.
        # A URL is keyed by the version the open file knows: nothing is asked of the server here.
        version = source.remote.version if source.remote is not None else None
        found = self.cache.find(source.path, verify=False, version=version)
        self.cached = found is not None and found.shapes == shapes
        if self.cached:
            self.entry: CacheEntry = found  # rebuilt in place if its checksums fail
        else:
            self.entry = self.cache.new_entry(source.path, shapes, version=version)
            self.entry.create_levels()
        self.levels: list[np.ndarray] = self.entry.open_levels()
        self.done = 0  # frames binned so far (as the event loop has heard)
        self.complete = self.rebuilt = False
        self.ended = False  # the worker has finished and its end was handled (cleanup, last refresh)
        self.worker: Any = None
        self.progress: Any = None  # napari's progress bar, while the worker runs
        self._layer: weakref.ref | None = None
        self._last_refresh = self._last_progress = self._last_heard = 0.0
        self._interval = REFRESH_S
        self._refresh_cost = 0.0  # of the last refresh: its own time, or the longest stall after it
        self._watching = False  # reports after the last refresh are watched for its repaint's stall

    # -- the background pass ------------------------------------------------
    def _frames(self) -> Any:
        try:
            if self.cached and self.entry.verified():
                self.complete = True
                return
            self.rebuilt = self.cached  # damaged (or new): built again, in these very files
            if self.factor is None:
                yield from fill_entry_steps(self.entry, self.read_frame, self.source.shape)
            else:
                yield from fill_frames_steps(self.entry, self.read_frame, self.source.shape[0], self.factor)
            self.cache.evict(keep=self.entry.folder)
            self.complete = True
        finally:  # ended, failed or cancelled: a read-ahead's sections in flight are dropped
            close = getattr(self.read_frame, "close", None)
            if close is not None:
                close()

    def start(self) -> None:
        """Start checking, or filling, in napari's thread worker.

        Its progress bar in napari's activity dock has a Cancel button.
        """
        if self.complete or self.worker is not None:
            return
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        name = file_name(self.source.path)
        self.progress = cancelable_progress(total=self.source.shape[0], desc=f"Binning {name} for 3D")
        self.worker = create_worker(self._frames)
        self.worker.yielded.connect(self._on_frame)
        self.worker.finished.connect(self._on_finished)
        if not _RUNNING:
            atexit.unregister(_stop_fills)
            atexit.register(_stop_fills)  # after Qt's own exit handlers: runs before them
        _RUNNING.add(self)
        self.worker.start()

    def cancel(self) -> None:
        """Stop filling (the planes done stay; the layer stays usable; nothing is cached)."""
        if self.worker is not None and not self.complete:
            self.worker.quit()
        elif self.worker is None and self.entry.crcs is None:  # never started: its empty files go
            shutil.rmtree(self.entry.folder, ignore_errors=True)

    def attach(self, layer: Any) -> None:
        """The layer showing these levels: refreshed as planes finish."""
        self._layer = weakref.ref(layer)

    def _refresh(self) -> None:
        layer = self._layer() if self._layer is not None else None
        start = time.monotonic()
        if layer is not None:
            layer.refresh()
        self._last_refresh = self._last_heard = time.monotonic()
        self._refresh_cost = self._last_refresh - start  # and the repaint it causes (_on_frame)
        self._interval = max(REFRESH_S, 5 * self._refresh_cost)
        self._watching = True

    def _on_frame(self, done: int) -> None:
        self.done = done
        if self.progress.is_canceled:  # the Cancel button: stops at the next frame
            self.cancel()
        now = time.monotonic()
        if self._watching:  # the event loop heard nothing for so long: it repainted what the refresh changed
            self._refresh_cost = max(self._refresh_cost, now - self._last_heard)
            self._interval = max(self._interval, 5 * self._refresh_cost)
            self._watching = now - self._last_refresh <= REFRESH_S  # reports queued before it come first
        self._last_heard = now
        if now - self._last_progress >= PROGRESS_S:  # each update repaints the window, 3D canvas too
            self.progress.update(done - self.progress.n)
            self._last_progress = now
        if now - self._last_refresh >= self._interval:
            self._refresh()

    def _on_finished(self) -> None:
        if self.complete:
            self.done = self.source.shape[0]
        if not self.complete and self.entry.crcs is None:  # a build was cancelled: nothing of it is kept
            shutil.rmtree(self.entry.folder, ignore_errors=True)
        self.progress.close()
        self._refresh()
        self.ended = True
        _RUNNING.discard(self)


def _stop_fills() -> None:
    """At exit: stop the fills still running and wait for their threads.

    Quitting napari closes the window without removing its layers, so a fill
    can still be decoding when Python exits; its thread would then signal
    through Qt objects already deleted (a RuntimeError from the thread, or an
    abort). Stopped here, it ends at its next plane.
    """
    running = list(_RUNNING)
    for fill in running:
        fill.cancel()
    if running:
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(60_000)


class FillingStack:
    """The coarsest level of a movie or tilt series: a frame on demand, or every frame as filled so far.

    napari's 2D view asks for one frame (``data[:, y0:y1, x0:x1]``, then
    ``[i]``): binned now (``lazy``) if the fill has not reached it yet. Its 3D
    view reads the whole level: what the fill has binned (``filled``; zeros
    beyond), refreshed as the fill goes.
    """

    def __init__(self, lazy: Any, filled: np.ndarray, fill: LevelFill) -> None:
        self.lazy, self.filled, self.fill = lazy, filled, fill
        self.shape, self.dtype, self.ndim = tuple(filled.shape), np.dtype(np.float32), filled.ndim

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        first, rest, n = (key[0] if key else slice(None)), key[1:], self.shape[0]
        if isinstance(first, slice) and len(range(n)[first]) == 1:  # data[i:i + 1, ...]: one frame too
            return self[(range(n)[first][0], *rest)][None]
        if isinstance(first, (int, np.integer)):
            binned = -n <= first < n and int(first) % n < self.fill.done
            return np.asarray(self.filled[key] if binned else self.lazy[key])
        return FillingStack(self.lazy[key], self.filled[key], self.fill)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.filled, dtype=dtype)


def register(fill: LevelFill, shown: Any) -> None:
    """``shown`` (a level a layer holds) is filled by ``fill``: :func:`fill_of` finds it."""
    _FILLS[id(shown)] = fill


def fill_of(layer: Any) -> LevelFill | None:
    """The fill of a multiscale layer this plugin opened, if any."""
    if not getattr(layer, "multiscale", False) or len(layer.data) < 2:
        return None
    return next((_FILLS[id(level)] for level in list(layer.data)[1:] if id(level) in _FILLS), None)


_WATCHED: weakref.WeakSet = weakref.WeakSet()
#: Layer data added hidden, shown once the viewer has placed the layer (by the id of the array).
_HIDDEN: dict[int, weakref.ref] = {}


def hidden_until_added(data: Any, multiscale: bool) -> dict[str, Any]:
    """Layer keywords that keep napari from slicing ``data`` until a viewer has placed its layer.

    napari slices a new layer at frame 0 when it is made, then where the
    viewer's dims are (the middle frame, for the first layer). For a file on
    a server, each is a transfer: so the layer is made hidden (napari does not
    slice hidden layers) and shown when added, after the viewer has moved.
    Every open viewer is watched: the one the layer goes to need not be the
    current one.

    Returns
    -------
    dict
        ``{"visible": False}`` to add to the layer's keywords; ``{}`` where
        no viewer is open.
    """
    from napari import Viewer, current_viewer

    viewers = {v for v in (*getattr(Viewer, "_instances", ()), current_viewer()) if v is not None}
    if not viewers:
        return {}
    for viewer in viewers:
        watch(viewer)
    first = _first_array(data, multiscale)
    _HIDDEN[id(first)] = weakref.ref(first)
    return {"visible": False}


def _first_array(data: Any, multiscale: bool) -> Any:
    """A layer's full-size array: ``data`` itself, or its first level."""
    return list(data)[0] if multiscale else data


def watch(viewer: Any) -> None:
    """Wire fills to ``viewer`` (once per viewer).

    Layers added are refreshed by their fill; fills that wait for 3D start
    when the viewer shows 3D (or is in 3D when added); removed layers stop
    their fill.
    """
    if viewer in _WATCHED:
        return
    _WATCHED.add(viewer)

    def inserted(event: Any) -> None:  # after the viewer's own handler: the dims are where they go
        first = _first_array(event.value.data, getattr(event.value, "multiscale", False))
        held = _HIDDEN.pop(id(first), None)
        if held is not None and held() is first:
            event.value.visible = True  # sliced now, once, where the viewer shows it
        fill = fill_of(event.value)
        if fill is not None:
            fill.attach(event.value)
            if viewer.dims.ndisplay == 3:
                fill.start()

    def to_3d(event: Any) -> None:
        if event.value == 3:  # a movie's fill waits for this; a volume's runs already
            for layer in viewer.layers:
                fill = fill_of(layer)
                if fill is not None:
                    fill.start()

    def removed(event: Any) -> None:
        fill = fill_of(event.value)
        if fill is not None:
            fill.cancel()
            for key in [key for key, value in _FILLS.items() if value is fill]:
                del _FILLS[key]

    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(removed)
    viewer.dims.events.ndisplay.connect(to_3d)
