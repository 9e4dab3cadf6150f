"""Where each blosc chunk of an MRCZ file starts: found by walking the chunk headers, kept for next time.

An MRCZ file holds one blosc chunk per z-section, back to back, and nothing
says where chunk ``k`` starts but the 16-byte headers of the chunks before it
(each gives its chunk's size). :class:`ChunkIndex` walks them once, lazily,
and checks each (a blosc header of the right section size that fits in the
file). On disk that costs microseconds a chunk; over the network a round trip
each. So:

- **The file's own index.** The MRCZ files napari-mrcz writes end with
  their chunks' offsets (:mod:`.chunk_trailer`). Where the header says
  there is one, it is read at open (one request for a URL; a file on a
  network file system gains as much) and used if it fits the file; then
  nothing is walked, and every chunk read is checked as below.
- **A walk in the background**, for a URL (:class:`~.remote.RemoteFile`)
  without its own index. After open, a daemon thread walks the headers
  to the end. Where chunks are small (:data:`SMALL_CHUNK`, a quarter of a
  cache block), headers are read through the file's block cache, whose
  read-ahead then fetches many of them in one request (and the chunks
  between them: a walk of such a file fetches all of it); larger chunks
  have their 16 header bytes fetched alone, one request each
  (:meth:`~.remote.RemoteFile.peek`). A reader walking to a chunk it needs
  reads through the cache after any chunk smaller than a block. A reader that needs a chunk not yet
  indexed never waits for the walk to get there: it walks on from where the
  index is, itself, while the background thread pauses. One step is in
  flight at a time, whoever takes it (a reader may wait for that one request,
  which is the one it needs next), so no header is fetched twice, and the
  index is the one a walk from the start gives. A failure stops the
  background walk quietly; the reader that needs the chunk meets it and
  reports it. :meth:`ChunkIndex.close` stops the thread.
- **A persistent index**, for a URL. Once complete, the index of a URL whose server
  names the object's version (ETag or Last-Modified) is saved as JSON in the
  user's cache folder (:func:`cache_folder`), under the URL as
  :func:`~.remote.shown` gives it (no password or signature), with its size
  and version. A reopen loads it, checks it (section count, increasing
  offsets ending within the file, a checksum, the chunk headers of the first
  and last sections), and needs no walk: one 16-byte request at most at open.
  Anything that does not match (another version, a damaged or foreign file)
  is ignored, walked again and written over. Every chunk read through a
  loaded index has its own header checked too (:meth:`ChunkIndex.confirm`,
  no request: it is in the bytes read), so an index that holds together but
  is wrong is dropped at the first chunk it gets wrong. Files on disk are
  never cached: their walk is fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

from . import blosc_chunks, chunk_trailer
from .errors import MRCFileError, TruncatedFileError
from .header import MRCHeader
from .remote import BLOCK, RemoteFile, shown

#: The cache folder's sub-folder (or sibling of the pyramids' folder) that holds saved indexes.
FOLDER_NAME = "chunk-index"
#: Saved indexes kept at most; the least recently used go first.
MAX_SAVED = 2000
#: After a chunk smaller than this, the background walk reads the next header through the block
#: cache, whose read-ahead fetches many at once (four headers a block at least); after a larger one,
#: its 16 bytes alone. A reader walking to a chunk it needs reads through the cache after any chunk
#: smaller than a block (as few round trips as can be): it fetches only what lies before that chunk.
SMALL_CHUNK = BLOCK // 4
#: Seconds :meth:`ChunkIndex.close` waits for a request of the background walk in flight.
CLOSE_WAIT = 10.0
_FORMAT = 1
_HEAD = blosc_chunks.CHUNK_HEADER_BYTES


def cache_folder() -> Path:
    """The folder of saved chunk indexes.

    ``NAPARI_MRCZ_CACHE_DIR/chunk-index`` where that variable is set, else
    ``chunk-index`` beside the pyramids' folder in the user's cache folder for
    napari-mrcz (platformdirs), as :mod:`.pyramid` chooses its own.

    Returns
    -------
    pathlib.Path
        The folder (it may not exist yet).
    """
    chosen = os.environ.get("NAPARI_MRCZ_CACHE_DIR")
    if chosen:
        return Path(chosen) / FOLDER_NAME
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mrcz", appauthor=False)) / FOLDER_NAME


class ChunkIndex:
    """The offsets of an MRCZ file's chunks, found by walking their headers, safe to share between threads.

    Parameters
    ----------
    src
        The open file (a :class:`~.positioned.PositionedFile`, a
        :class:`~.remote.RemoteFile`, or the stack's in-memory source).
    path
        The file's name or URL, for messages.
    header
        Its header: where the chunks start, how many, and their decoded size.

    Attributes
    ----------
    loaded : bool
        Whether the index came whole from the file's trailer
        (:mod:`.chunk_trailer`) or the persistent cache.
    thread : threading.Thread or None
        The background walk, once :meth:`start` started one.
    """

    def __init__(self, src: Any, path: str, header: MRCHeader) -> None:
        self._src, self.path = src, path
        self._nz = header.shape[0]
        self._expect = header.section_nbytes
        self._section = f"a {header.shape[1]} x {header.shape[2]} {header.dtype.name} section"
        self._offsets = [header.data_offset]
        self._versions: list[int] = []
        self._cond = threading.Condition()
        self._busy = False  # a step is in flight (one at a time)
        self._wanted = 0  # readers walking, or waiting for the step in flight: the background pauses
        self._closed = False
        self._saved = False
        self._ended = threading.Event()  # no background walk under way
        self._ended.set()
        self._compressed = header.is_compressed
        self._packed = int(header.raw["packedBytes"]) if header.written_by == "napari-mrcz" else 0
        self._store = _Store.of(src, path, header)
        self.loaded = False
        self.thread: threading.Thread | None = None

    # -- what is known ---------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Whether every chunk's span is known."""
        with self._cond:
            return len(self._offsets) > self._nz

    def span(self, i: int) -> tuple[int, int, int]:
        """(offset, compressed bytes, format version) of the chunk of z-section ``i``; walks there if needed.

        Raises
        ------
        MRCFileError
            ``i`` is out of range, or a chunk header on the way is not a
            blosc chunk of the section's size (:class:`TruncatedFileError`
            where it runs past the end of the file).
        OSError
            A URL could not be read.
        """
        while True:
            self.ensure(i)
            with self._cond:
                if len(self._offsets) > i + 1:  # unless a saved index was dropped meanwhile
                    return self._offsets[i], self._offsets[i + 1] - self._offsets[i], self._versions[i]

    def ensure(self, i: int) -> None:
        """Walk the chunk headers until the span of chunk ``i`` is known and checked.

        Never waits for the background walk to reach ``i``: the walk goes on
        in this thread from where the index is (the background pauses), after
        at most the one step already in flight. Raises as :meth:`span`.
        """
        if not 0 <= i < self._nz:
            raise MRCFileError(self.path, f"z-section {i} is out of range 0:{self._nz}")
        with self._cond:
            if len(self._offsets) > i + 1:
                return
            self._wanted += 1
        try:
            while True:
                with self._cond:
                    while self._busy and len(self._offsets) <= i + 1:
                        self._cond.wait()  # the step in flight is the one this read needs next
                    if len(self._offsets) > i + 1:
                        return
                    k, pos, last = self._claim()
                found = None
                try:
                    found = self._step(k, pos, cached=last < BLOCK)
                finally:
                    completed = self._settle(k, found)
                if completed:
                    self._save()
        finally:
            with self._cond:
                self._wanted -= 1
                self._cond.notify_all()

    def confirm(self, i: int, span: tuple[int, int, int], chunk: Any) -> bool:
        """Whether chunk ``i``, read by ``span``, is to be decoded (False: ask for its span again).

        Every chunk read has its own header checked against the span it was
        read by (the header is in the bytes read anyway). One that disagrees
        while the index came from the persistent cache proves the saved index
        wrong: it is dropped, the headers are walked again from the start
        (and saved again once complete), and the span must be asked for
        again. A chunk that disagrees with a walked index is damaged in the
        file itself: True, and the decoder reports it.
        """
        offset, cbytes, version = span
        try:
            if self._check(i, offset, bytes(chunk[:_HEAD])) == (version, offset + cbytes):
                return True
        except MRCFileError:
            pass
        with self._cond:
            dropped = self.loaded  # the first reader to find it wrong drops it
            if dropped:
                self.loaded = self._saved = False
                self._offsets, self._versions = self._offsets[:1], []
            known = len(self._offsets) > i + 1
            current = (self._offsets[i], self._offsets[i + 1] - self._offsets[i],
                       self._versions[i]) if known else None
        if dropped:
            if self._store is not None:
                self._store.forget()
            if not self._closed and isinstance(self._src, RemoteFile):
                self._start_walk()
        return current == span

    # -- one step of the walk ----------------------------------------------------
    def _claim(self) -> tuple[int, int, int]:
        """The next chunk to walk, its offset, and the size of the one before (large for the first).

        Marks a step in flight.
        """
        k = len(self._offsets) - 1
        self._busy = True
        last = self._offsets[k] - self._offsets[k - 1] if k > 0 else BLOCK
        return k, self._offsets[k], last

    def _settle(self, k: int, found: tuple[int, int] | None) -> bool:
        """Record a step's result (none if it failed); returns whether the index just became complete."""
        with self._cond:
            self._busy = False
            self._cond.notify_all()
            if found is None or len(self._offsets) != k + 1:
                return False
            self._versions.append(found[0])
            self._offsets.append(found[1])
            return len(self._offsets) > self._nz

    def _step(self, k: int, pos: int, cached: bool) -> tuple[int, int]:
        """Read and check chunk ``k``'s header at ``pos``: (format version, where the next chunk starts)."""
        peek = getattr(self._src, "peek", None)
        head = self._src.pread(pos, _HEAD) if cached or peek is None else peek(pos, _HEAD)
        return self._check(k, pos, head)

    def _check(self, k: int, pos: int, head: bytes) -> tuple[int, int]:
        size = self._src.size
        if len(head) < _HEAD:
            raise TruncatedFileError(
                self.path, f"file is truncated: compressed z-section {k} of {self._nz} "
                f"should start at byte {pos}, the file ends at byte {size}")
        version, _, _, _, nbytes, _, cbytes = blosc_chunks.parse_chunk_header(head)
        if version not in blosc_chunks.BACKEND_BY_VERSION:
            raise MRCFileError(
                self.path, f"z-section {k}: not a blosc chunk (format version {version} "
                f"at byte {pos}; expected 2 or 5)")
        if nbytes != self._expect:
            raise MRCFileError(
                self.path, f"z-section {k}: blosc chunk at byte {pos} holds {nbytes} "
                f"bytes, {self._section} needs {self._expect} bytes")
        if cbytes < _HEAD or pos + cbytes > size:
            raise TruncatedFileError(
                self.path, f"z-section {k}: blosc chunk at byte {pos} claims {cbytes} "
                f"compressed bytes, only {size - pos} remain in the file")
        return version, pos + cbytes

    # -- the background walk and the saved index -----------------------------------
    def start(self, walk: bool = True) -> None:
        """Take the file's own index if it has one; else for a URL, the saved one or (``walk``) a walk.

        The file's own index is its trailer (:mod:`.chunk_trailer`). Without
        one, files on disk start nothing (their readers walk as far as they
        read); a URL loads its saved index if it is good, else walks the
        headers in the background. Plain (uncompressed) files and an index
        already complete start nothing.

        Parameters
        ----------
        walk
            Start the background walk where no saved index was loaded.
        """
        if not self._compressed or self.complete or self._load_trailer():
            return
        if not isinstance(self._src, RemoteFile):
            return
        loaded = self._store.load() if self._store is not None else None
        if loaded is not None and self._agrees(*loaded):
            with self._cond:
                self._offsets, self._versions = loaded
            self.loaded = self._saved = True
            return
        if walk:
            self._start_walk()

    def _start_walk(self) -> None:
        with self._cond:
            if self.thread is not None and self.thread.is_alive():
                return
            thread = threading.Thread(target=self._walk, name="mrcz-chunk-index", daemon=True)
            self._ended.clear()
            try:
                thread.start()
            except RuntimeError:  # no more threads: readers walk as far as they need, as on disk
                self._ended.set()
                return
            self.thread = thread

    def _load_trailer(self) -> bool:
        """Take the index from the file's own trailer (:mod:`.chunk_trailer`) if it has one that fits.

        Asked for only in a file whose label says napari-mrcz wrote it, where
        the header's ``packedBytes`` (the data's size) ends at the file's end:
        then one request. The first chunk's header (its format version, taken
        as every chunk's until a chunk says otherwise) is in the block fetched
        at open.
        """
        size, data_offset = self._src.size, self._offsets[0]
        n = chunk_trailer.nbytes(self._nz)
        if (self._packed <= 0 or data_offset + self._packed != size or size - n < data_offset
                or n > chunk_trailer.MAX_BYTES):
            return False
        try:
            offsets = chunk_trailer.decode(bytes(self._src.pread(size - n, n)), self._nz, data_offset, size)
            if offsets is None:
                return False
            version, end = self._check(0, data_offset, bytes(self._src.pread(data_offset, _HEAD)))
        except (OSError, ValueError):  # the server failed, or no chunk there: walked instead
            return False
        if end != offsets[1]:
            return False
        with self._cond:
            self._offsets, self._versions = offsets, [version] * self._nz
        self.loaded = self._saved = True  # checked chunk by chunk as a saved index is; never saved
        return True

    def _agrees(self, offsets: list[int], versions: list[int]) -> bool:
        """Whether the first and last chunks' headers say what a saved index says of them.

        The first is in the block fetched at open; the last costs one 16-byte request.
        """
        try:
            for k in sorted({0, self._nz - 1}):
                head = self._src.peek(offsets[k], _HEAD)
                if self._check(k, offsets[k], head) != (versions[k], offsets[k + 1]):
                    return False
        except (OSError, ValueError):  # not a chunk there, or the server failed: walked instead
            return False
        return True

    def _walk(self) -> None:
        try:
            while True:
                with self._cond:
                    while (not self._closed and (self._busy or self._wanted)
                           and len(self._offsets) <= self._nz):
                        self._cond.wait()  # a step in flight, or readers walking: theirs go first
                    if self._closed or len(self._offsets) > self._nz:
                        return
                    k, pos, last = self._claim()
                found = None
                try:
                    found = self._step(k, pos, cached=last < SMALL_CHUNK)
                except Exception:  # the server gone, a damaged chunk, the file closed: a reader
                    pass  # that needs this chunk walks here itself, and reports it
                finally:
                    completed = self._settle(k, found)
                if found is None:
                    return
                if completed:
                    self._save()
        finally:
            self._ended.set()

    def _save(self) -> None:
        with self._cond:
            if self._saved or self._store is None:
                return
            self._saved = True
            offsets, versions = list(self._offsets), list(self._versions)
        self._store.save(offsets, versions)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background walk to end (complete, failed or closed); whether the index is complete.

        Parameters
        ----------
        timeout
            Seconds to wait at most (default: as long as it takes).

        Returns
        -------
        bool
            True if every chunk's span is known.
        """
        self._ended.wait(timeout)
        return self.complete

    def close(self) -> None:
        """Stop the background walk: no step starts after this, and one in flight is waited for."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)


class _Store:
    """One URL's saved index: a JSON file in :func:`cache_folder`, named after the URL as shown."""

    def __init__(self, path: Path, source: dict[str, Any], header: MRCHeader) -> None:
        self.path, self.source = path, source
        self.nz, self.data_offset = header.shape[0], header.data_offset
        self.section_nbytes = header.section_nbytes

    @classmethod
    def of(cls, src: Any, path: str, header: MRCHeader) -> _Store | None:
        """The store of a URL whose server names its version; ``None`` for anything else."""
        if not isinstance(src, RemoteFile) or not header.is_compressed:
            return None
        version = src.version
        if len(version) < 2:  # the size alone: a change of the same size would go unseen
            return None
        url = shown(path)
        name = hashlib.sha256(url.encode()).hexdigest()[:32] + ".json"
        return cls(cache_folder() / name, {"url": url, **version}, header)

    def load(self) -> tuple[list[int], list[int]] | None:
        """The saved offsets and versions if they are this file's and hold together; else ``None``."""
        try:
            saved = json.loads(self.path.read_text())
            offsets, versions = saved["offsets"], saved["versions"]
            if (saved.get("format") != _FORMAT or saved.get("source") != self.source
                    or saved.get("section_nbytes") != self.section_nbytes
                    or saved.get("crc32") != _crc(offsets, versions)
                    or not _plausible(offsets, versions, self.nz, self.data_offset, self.source["size"])):
                return None
        except (OSError, ValueError, KeyError, TypeError):  # missing, or damaged: walked again (and
            return None  # written over once complete)
        with contextlib.suppress(OSError):
            os.utime(self.path)  # most recently used
        return offsets, versions

    def forget(self) -> None:
        """Remove the saved index (it proved wrong)."""
        with contextlib.suppress(OSError):
            self.path.unlink()

    def save(self, offsets: list[int], versions: list[int]) -> None:
        """Write the complete index atomically (a temporary file renamed); a failure is ignored."""
        saved = {"format": _FORMAT, "source": self.source, "section_nbytes": self.section_nbytes,
                 "crc32": _crc(offsets, versions), "offsets": offsets, "versions": versions}
        folder = self.path.parent
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=folder)
            with os.fdopen(fd, "w") as f:
                json.dump(saved, f, separators=(",", ":"))
            os.replace(tmp, self.path)
            tmp = None
            _prune(folder, keep=self.path)
        except OSError:  # a read-only or full cache folder: the index is only not kept
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _crc(offsets: list[int], versions: list[int]) -> int:
    return zlib.crc32(json.dumps([offsets, versions], separators=(",", ":")).encode())


def _plausible(offsets: Any, versions: Any, nz: int, data_offset: int, size: int) -> bool:
    """Offsets one more than sections, from the first data byte, a header apart at least, within ``size``."""
    if not (isinstance(offsets, list) and isinstance(versions, list)
            and len(offsets) == nz + 1 and len(versions) == nz):
        return False
    if not all(type(o) is int for o in offsets) or offsets[0] != data_offset or offsets[-1] > size:
        return False
    if any(b - a < _HEAD for a, b in zip(offsets, offsets[1:], strict=False)):
        return False
    return all(v in blosc_chunks.BACKEND_BY_VERSION for v in versions)


def _prune(folder: Path, keep: Path) -> None:
    """Remove the least recently used saved indexes beyond :data:`MAX_SAVED`."""
    saved = list(folder.glob("*.json"))
    if len(saved) <= MAX_SAVED:
        return

    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile (another process pruning)
            return 0.0
    saved.sort(key=used)
    for path in saved[:len(saved) - MAX_SAVED]:
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()
