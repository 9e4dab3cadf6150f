"""Multiscale pyramids of volumes: binned levels built in one pass, kept in a per-user cache.

Level ``k`` of a volume (a tomogram or map) is binned ``2**k`` along z, y and x
by block mean (:mod:`.binning`). :func:`plan_levels` says how many levels a
shape gets: down to a coarsest level of at most ``COARSEST_BYTES``, so that a
viewer can draw it in 3D at once; volumes already that small get none.

:class:`PyramidBuilder` reads the volume once, frame by frame, and fills every
level as it goes (a coarse plane is complete after ``2**k`` frames), so a
viewer can show the planes already binned while the rest is read. It can be
cancelled between frames.

:class:`PyramidCache` keeps finished levels as ``.npy`` files in the user's
cache folder (``platformdirs``; ``NAPARI_MRCZ_CACHE_DIR`` puts it elsewhere,
say on a scratch disk), keyed by the source's path, size and
modification time (a URL's: the URL, with its secrets blanked, the size and
the ETag or Last-Modified the server gives), so reopening a tomogram finds its
levels at once. An entry counts only when its manifest says it is complete
and every level's size and CRC-32 match; anything else (a build that was interrupted, a damaged file, a
source that changed) is ignored and rebuilt. The cache is bounded: the least
recently used entries go first once it holds more than its limit
(``NAPARI_MRCZ_CACHE_GB``, default 20 GB). Levels are memory-mapped, so they
cost page cache, not process memory.

For scripts::

    from napari_mrcz.codec.pyramid import read_binned
    small = read_binned("tomogram.rec", 4)   # 4x binned in z, y and x, cached for next time
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .binning import BlockSums, bin_frame, binned_size, frame_sums
from .remote import RemoteFile, is_url, shown

#: The coarsest level is at most this many bytes (float32): small enough to draw in 3D at once.
COARSEST_BYTES = 64 << 20
#: Default cache limit, in GB, unless NAPARI_MRCZ_CACHE_GB says otherwise.
DEFAULT_CACHE_GB = 20.0
_MANIFEST = "manifest.json"
_FORMAT = 1


def plan_levels(shape: tuple[int, int, int], coarsest_bytes: int = COARSEST_BYTES) -> list[tuple[int, ...]]:
    """Shapes of levels 1, 2, ... of a volume: each binned 2x more, until one fits ``coarsest_bytes``.

    A volume that already fits (as float32) gets no levels: it is shown as it is.
    """
    levels: list[tuple[int, ...]] = []
    current = tuple(int(s) for s in shape)
    factor = 1
    while int(np.prod(current)) * 4 > coarsest_bytes and min(current) > 1:
        factor *= 2
        current = tuple(binned_size(s, factor) for s in shape)
        levels.append(current)
    return levels


class BuildCancelledError(Exception):
    """The build was asked to stop."""


class PyramidBuilder:
    """Fills the levels of a volume's pyramid from its frames, in one pass.

    Parameters
    ----------
    read_frame
        ``read_frame(i) -> ndarray``: z-section ``i`` (any real type).
    shape
        (nz, ny, nx) of the volume.
    levels
        Where levels 1, 2, ... go, with the shapes :func:`plan_levels` gives:
        float32 arrays, or the :class:`PlaneFile` writers of a cache entry
        (anything taking ``level[z] = plane``).
    """

    def __init__(self, read_frame: Callable[[int], np.ndarray], shape: tuple[int, int, int],
                 levels: list[np.ndarray]) -> None:
        self.read_frame, self.shape, self.levels = read_frame, tuple(shape), levels
        self.frames_done = 0

    def run(self, cancel: threading.Event | None = None,
            on_plane: Callable[[int, int], None] | None = None) -> None:
        """Read every frame and fill every level; ``on_plane(level, z)`` after each finished plane.

        Raises
        ------
        BuildCancelledError
            ``cancel`` was set; the levels hold the planes finished so far.
        """
        for i in self.steps(on_plane):
            if cancel is not None and cancel.is_set() and i < self.shape[0]:
                raise BuildCancelledError(f"stopped after {i} of {self.shape[0]} frames")

    def steps(self, on_plane: Callable[[int, int], None] | None = None) -> Iterator[int]:
        """:meth:`run` one frame at a time: yields how many frames are done (a viewer's progress)."""
        nz = self.shape[0]
        pending: list[BlockSums | None] = [None] * len(self.levels)
        self.frames_done = 0
        for i in range(nz):
            sums = frame_sums(np.asarray(self.read_frame(i)), 2)
            for k in range(len(self.levels)):
                if k:
                    sums = sums.coarser()
                step = 2 ** (k + 1)
                acc = pending[k]
                if acc is None:
                    pending[k] = acc = BlockSums(sums.sums.copy(), sums.rows, sums.cols, sums.planes)
                else:
                    acc.add(sums)
                if (i + 1) % step == 0 or i == nz - 1:
                    z = i // step
                    self.levels[k][z] = acc.mean()
                    pending[k] = None
                    if on_plane is not None:
                        on_plane(k + 1, z)
            self.frames_done = i + 1
            yield self.frames_done


def _cache_root() -> Path:
    chosen = os.environ.get("NAPARI_MRCZ_CACHE_DIR")
    if chosen:
        return Path(chosen)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mrcz", appauthor=False)) / "pyramids"


def source_key(path: str | os.PathLike, version: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The cache key of a file (its path, size and modification time) and what it was made of.

    Parameters
    ----------
    path
        A local file, or a URL: keyed by the URL as :func:`~.remote.shown`
        gives it (a pre-signed URL's signature changes, and stays off the
        disk), its size and its ETag and Last-Modified.
    version
        A URL's :attr:`~.remote.RemoteFile.version`, as the file open for
        reading knows it (default: asked of the server).

    Returns
    -------
    tuple
        The key (hex digits) and the source's description (kept in the manifest).
    """
    if is_url(os.fspath(path)):
        if version is None:
            opened = RemoteFile(os.fspath(path))
            try:
                version = opened.version
            finally:
                opened.close()
        source = {"url": shown(os.fspath(path)), **version}
        if len(version) < 2:  # no ETag, no Last-Modified: a change of the same size would go unseen
            source["unversioned"] = uuid.uuid4().hex  # never found again
    else:
        real = os.path.realpath(os.fspath(path))
        st = os.stat(real)
        source = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:32]
    return digest, source


def _crc(array: np.ndarray) -> int:
    crc = 0
    for plane in array:  # plane by plane: a memory map is not read in whole
        crc = zlib.crc32(np.ascontiguousarray(plane).view(np.uint8).ravel(), crc)
    return crc


class PlaneFile:
    """Writes the planes of one ``.npy`` level file through the file, never through a memory map.

    A full disk then raises ``OSError`` at the write (a memory-mapped write to
    a sparse file would kill the process with SIGBUS instead).
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self._plane_bytes = int(np.prod(shape[1:])) * 4
        self._offset = np.load(path, mmap_mode="r").offset
        self._file = open(path, "r+b")  # noqa: SIM115 - closed by close()

    def __setitem__(self, z: int, plane: np.ndarray) -> None:
        self._file.seek(self._offset + z * self._plane_bytes)
        self._file.write(np.ascontiguousarray(plane, dtype="<f4").tobytes())

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()


class CacheEntry:
    """One source's levels in the cache: ``.npy`` files and a manifest written last."""

    def __init__(self, folder: Path, source: dict[str, Any], shapes: list[tuple[int, ...]],
                 crcs: list[int] | None = None) -> None:
        self.folder, self.source, self.shapes, self.crcs = folder, source, shapes, crcs

    @classmethod
    def load(cls, folder: Path, source: dict[str, Any]) -> CacheEntry | None:
        """The entry in ``folder`` if its manifest is complete, for ``source``, with files of its shapes."""
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
            if (manifest.get("format") != _FORMAT or not manifest.get("complete")
                    or manifest.get("source") != source):
                return None
            entry = cls(folder, source, [tuple(lv["shape"]) for lv in manifest["levels"]],
                        [int(lv["crc32"]) for lv in manifest["levels"]])
            for level, shape in zip(entry.open_levels(), entry.shapes, strict=True):
                if level.dtype != np.float32 or level.shape != shape:
                    return None
            return entry
        except (OSError, ValueError, KeyError, TypeError):  # missing, truncated, not JSON: not trusted
            return None

    def level_path(self, k: int) -> Path:
        """The file of level ``k`` (1 = binned 2x)."""
        return self.folder / f"level{k}.npy"

    def create_levels(self) -> None:
        """Create the level files: a header and room for the planes (zeros until written)."""
        for k, shape in enumerate(self.shapes):
            with open(self.level_path(k + 1), "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
                f.truncate(f.tell() + int(np.prod(shape)) * 4)

    def open_levels(self) -> list[np.memmap]:
        """The levels as read-only memory maps."""
        return [np.load(self.level_path(k + 1), mmap_mode="r") for k in range(len(self.shapes))]

    def plane_files(self) -> list[PlaneFile]:
        """Writers of the levels' planes (close them when done)."""
        return [PlaneFile(self.level_path(k + 1), shape) for k, shape in enumerate(self.shapes)]

    def verified(self) -> bool:
        """Whether every level's CRC-32 is the manifest's (reads every level once)."""
        try:
            levels = self.open_levels()
            return self.crcs is not None and [_crc(level) for level in levels] == self.crcs
        except (OSError, ValueError):
            return False

    def invalidate(self) -> None:
        """No longer trust this entry (its manifest goes; the files may be rebuilt in place)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / _MANIFEST).unlink()
        self.crcs = None

    @contextlib.contextmanager
    def rebuilding(self) -> Iterator[list[PlaneFile]]:
        """Writers of every level, untrusted until the block ends without an error, then finished."""
        self.invalidate()
        writers = self.plane_files()
        try:
            yield writers
        finally:
            for writer in writers:
                writer.close()
        self.finish(self.open_levels())

    def finish(self, levels: list[np.ndarray]) -> None:
        """Record the levels as complete, with their CRC-32s (the manifest is written last, atomically)."""
        self.crcs = [_crc(a) for a in levels]
        manifest = {"format": _FORMAT, "source": self.source, "complete": True,
                    "levels": [{"shape": list(a.shape), "crc32": crc} for a, crc in zip(levels, self.crcs,
                                                                                       strict=True)]}
        with atomic_write(self.folder / _MANIFEST) as f:
            f.write(json.dumps(manifest, indent=1).encode())

    def nbytes(self) -> int:
        """Bytes the entry takes on disk."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


class PyramidCache:
    """Binned levels of volumes, kept on disk between sessions.

    Parameters
    ----------
    root
        The cache folder (default: ``NAPARI_MRCZ_CACHE_DIR``, or the user's cache folder for
        napari-mrcz, by platformdirs).
    limit_bytes
        The most the cache keeps (default: ``NAPARI_MRCZ_CACHE_GB`` GB, or 20 GB).
    """

    def __init__(self, root: str | os.PathLike | None = None, limit_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else _cache_root()
        if limit_bytes is None:
            limit_bytes = int(float(os.environ.get("NAPARI_MRCZ_CACHE_GB", DEFAULT_CACHE_GB)) * 1e9)
        self.limit_bytes = limit_bytes

    def find(self, path: str | os.PathLike, verify: bool = True,
             version: dict[str, Any] | None = None) -> CacheEntry | None:
        """The entry of ``path``'s current state, if complete (and, with ``verify``, undamaged).

        Without ``verify`` only the manifest and the files' shapes are checked
        (instant, for a viewer that shows the levels at once): the caller must
        then run :meth:`CacheEntry.verified` before it trusts the values.
        ``version`` is a URL's, as :func:`source_key` takes it.
        """
        key, source = source_key(path, version)
        for folder in sorted(self.root.glob(f"{key}*")) if self.root.is_dir() else []:
            entry = CacheEntry.load(folder, source)
            if entry is not None and (not verify or entry.verified()):
                with contextlib.suppress(OSError):
                    os.utime(folder / _MANIFEST)  # most recently used
                return entry
        return None

    def new_entry(self, path: str | os.PathLike, shapes: list[tuple[int, ...]],
                  version: dict[str, Any] | None = None) -> CacheEntry:
        """A fresh folder for ``path``'s levels (one per build: concurrent builds never share files).

        ``version`` is a URL's, as :func:`source_key` takes it.
        """
        key, source = source_key(path, version)
        folder = self.root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return CacheEntry(folder, source, shapes)

    def entries(self) -> list[Path]:
        """Every entry folder, least recently used first."""
        if not self.root.is_dir():
            return []

        def used(folder: Path) -> float:
            manifest = folder / _MANIFEST
            return (manifest if manifest.exists() else folder).stat().st_mtime
        # NAPARI_MRCZ_CACHE_DIR holds the saved chunk indexes of URLs too (chunk_index.FOLDER_NAME).
        return sorted((p for p in self.root.iterdir() if p.is_dir() and p.name != "chunk-index"), key=used)

    def nbytes(self) -> int:
        """Bytes the cache takes on disk."""
        return sum(CacheEntry(p, {}, []).nbytes() for p in self.entries())

    def evict(self, keep: Path | None = None, stale_build_s: float = 3600.0) -> None:
        """Remove least recently used entries until the cache fits its limit, and stale partial builds."""
        now = time.time()
        entries = self.entries()
        sizes = {p: CacheEntry(p, {}, []).nbytes() for p in entries}
        total = sum(sizes.values())
        for folder in entries:
            partial = not (folder / _MANIFEST).exists()
            if folder == keep or (partial and now - folder.stat().st_mtime < stale_build_s):
                continue  # in use, or a build that may still be running
            if total > self.limit_bytes or partial:
                shutil.rmtree(folder, ignore_errors=True)
                total -= sizes[folder]

    def clear(self) -> None:
        """Remove every entry."""
        shutil.rmtree(self.root, ignore_errors=True)


def build(read_frame: Callable[[int], np.ndarray], shape: tuple[int, int, int], path: str | os.PathLike,
          cache: PyramidCache | None = None, cancel: threading.Event | None = None,
          on_plane: Callable[[int, int], None] | None = None,
          on_levels: Callable[[list[np.ndarray]], None] | None = None,
          coarsest_bytes: int = COARSEST_BYTES) -> list[np.ndarray]:
    """The levels of the volume at ``path``: from the cache, or built now (and cached).

    ``on_levels`` receives the level arrays as soon as they exist, before they
    are filled (a viewer shows them filling); ``on_plane`` and ``cancel`` are
    :meth:`PyramidBuilder.run`'s, ``coarsest_bytes`` :func:`plan_levels`'s. A
    cancelled build leaves nothing in the cache.
    """
    cache = cache if cache is not None else PyramidCache()
    shapes = plan_levels(shape, coarsest_bytes)
    if not shapes:
        return []
    found = cache.find(path)
    if found is not None and found.shapes == shapes:
        levels = found.open_levels()
        if on_levels is not None:
            on_levels(levels)
        return levels
    entry = cache.new_entry(path, shapes)
    try:
        entry.create_levels()
        if on_levels is not None:
            on_levels(entry.open_levels())
        fill_entry(entry, read_frame, shape, cancel, on_plane)
    except BaseException:
        shutil.rmtree(entry.folder, ignore_errors=True)
        raise
    cache.evict(keep=entry.folder)
    return entry.open_levels()


def fill_entry(entry: CacheEntry, read_frame: Callable[[int], np.ndarray], shape: tuple[int, int, int],
               cancel: threading.Event | None = None,
               on_plane: Callable[[int, int], None] | None = None) -> None:
    """Build ``entry``'s levels from the frames and record it complete (see :meth:`PyramidBuilder.run`)."""
    with entry.rebuilding() as writers:
        PyramidBuilder(read_frame, shape, writers).run(cancel, on_plane)


def fill_entry_steps(entry: CacheEntry, read_frame: Callable[[int], np.ndarray], shape: tuple[int, int, int],
                     on_plane: Callable[[int, int], None] | None = None) -> Iterator[int]:
    """:func:`fill_entry` one frame at a time: yields how many frames are done."""
    with entry.rebuilding() as writers:
        yield from PyramidBuilder(read_frame, shape, writers).steps(on_plane)


def fill_frames_steps(entry: CacheEntry, read_frame: Callable[[int], np.ndarray], n: int,
                      factor: int) -> Iterator[int]:
    """Fill ``entry``'s one level with the frames of a movie or tilt series binned ``factor``.

    In y and x only, every frame kept; the entry is recorded complete at the
    end. Yields how many frames are done.
    """
    with entry.rebuilding() as (writer,):
        for i in range(n):
            writer[i] = bin_frame(np.asarray(read_frame(i)), factor)
            yield i + 1


def read_binned(path: str | os.PathLike, factor: int, cache: PyramidCache | None = None) -> np.ndarray:
    """A volume binned ``factor`` (2, 4, 8, ...) along z, y and x by block mean, as float32.

    Levels come from the cache where they are, and are built (reading the file
    once) and cached where not; a factor beyond the pyramid's coarsest level is
    binned from the file in one more pass.
    """
    from .binning import bin_stack
    from .stack import MRCStack

    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two, got {factor}")
    with MRCStack(path) as stack:
        frames = _Frames(stack)
        if factor == 1:
            return stack.read().astype(np.float32)
        levels = build(frames.__getitem__, stack.shape, path, cache)
        k = factor.bit_length() - 1  # level k is binned 2**k
        if 0 < k <= len(levels):
            return np.array(levels[k - 1])
        return bin_stack(frames, factor, volume=True)  # beyond the pyramid: one more pass


class _Frames:
    """An MRC stack's z-sections, indexed one at a time (what the binners read)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def __len__(self) -> int:
        return self.stack.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.stack.read(i, i + 1)[0]
