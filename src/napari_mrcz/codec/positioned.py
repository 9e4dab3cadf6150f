"""Positioned reads of one file, from any thread, on every operating system.

:class:`PositionedFile` is how the MRC stack and the DM reader read files on
disk. Reads name their offset, so the viewer's, prefetch and batch threads
share one open file without sharing a file position.

- **POSIX** (Linux, macOS 11+): ``os.pread``/``os.preadv`` straight into the
  caller's buffer, and zero-copy views of compressed chunks from a read-only
  memory map whose pages are dropped right after (``MADV_DONTNEED``).
- **Elsewhere** (Windows, where those calls do not exist): each thread reads
  through a handle of its own (seek + ``readinto``), and views are copies.
  ``benchmarks/bench_portable.py`` measured this against one handle behind a
  lock and against slices of a memory map.

Both give the same guarantees: a read never goes past the end of the file,
and a file truncated while open gives the same clear error.

**Replacing a file that is open.** POSIX renames a new file over an open one
and the readers keep the old data. Windows refuses while the file is open or
mapped. :func:`released` is what the atomic writer wraps its rename in: where
the system needs it (:data:`REPLACE_NEEDS_CLOSED_FILES`), it waits for reads in
flight, closes every handle and map of that path, holds new reads back during
the rename, and lets them reopen the file after it. :attr:`PositionedFile.generation`
counts those reopenings, so an owner (the MRC stack) knows to read the new
file's header again.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import threading
import weakref
from collections.abc import Iterator

from .errors import TruncatedFileError
from .remote import RemoteFile, is_url

#: ``os.pread``/``os.preadv`` exist (POSIX): the fast path.
HAVE_PREAD = hasattr(os, "pread") and hasattr(os, "preadv")
#: Windows cannot rename over a file that is open or memory-mapped.
REPLACE_NEEDS_CLOSED_FILES = os.name == "nt"

_open_files: dict[str, weakref.WeakSet[PositionedFile]] = {}
_registry_lock = threading.Lock()


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def open_binary(path: str) -> int:
    """A read-only descriptor of ``path``, in binary mode (Windows' default is text)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _views_drop_pages() -> bool:
    # Looked up at each call: a platform without madvise (Windows) copies instead.
    return HAVE_PREAD and hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")


class PositionedFile:
    """A read-only file read at given offsets, safe to share between threads.

    Parameters
    ----------
    path
        The file.

    Attributes
    ----------
    path : str
        The file, as given.
    size : int
        Its size when (re)opened.
    generation : int
        How many times it was reopened after :func:`released` replaced it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.generation = 0
        self._state = threading.Condition()
        self._users = 0
        self._held_back = False
        self._handles: dict[int, io.FileIO] = {}  # per thread, where there is no pread
        self._map: mmap.mmap | None = None
        self._closed = False
        self._open()
        with _registry_lock:
            _open_files.setdefault(_key(path), weakref.WeakSet()).add(self)

    def _open(self) -> None:
        self._fd = open_binary(self.path)
        self.size = os.fstat(self._fd).st_size
        # Closed by close(), or when dropped unclosed (a napari layer's file): never leaked.
        self._closer = weakref.finalize(self, _close_all, self._fd, self._handles)

    # -- who may use the descriptor -------------------------------------------
    def in_use(self) -> contextlib.AbstractContextManager[int]:
        """Keep the file open for the duration of the block (reopening it if it was released).

        Only where :func:`released` closes files (Windows) is this counted;
        elsewhere nothing closes a file under a read, and reads pay nothing.
        """
        if not REPLACE_NEEDS_CLOSED_FILES:
            return contextlib.nullcontext(self._fd)
        return self._counted_use()

    @contextlib.contextmanager
    def _counted_use(self) -> Iterator[int]:
        with self._state:
            while self._held_back:
                self._state.wait()
            if self._fd < 0:
                if self._closed:
                    raise ValueError(f"{self.path}: the file was closed")
                self._open()
                self.generation += 1
            self._users += 1
            fd = self._fd
        try:
            yield fd
        finally:
            with self._state:
                self._users -= 1
                if not self._users:
                    self._state.notify_all()

    def _release(self) -> None:
        """Wait for reads in flight, close every handle and map, and hold new reads back."""
        with self._state:
            self._state.wait_for(lambda: not self._users)
            self._held_back = True
            self._close_handles()

    def _resume(self) -> None:
        with self._state:
            self._held_back = False
            self._state.notify_all()

    def _close_handles(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._closer()  # once per opening: the descriptor and the threads' handles
        self._fd = -1

    # -- reads ---------------------------------------------------------------
    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer only at the end of the file)."""
        buf = bytearray(max(0, min(n, self.size - offset)))
        got = self.readinto(offset, memoryview(buf))
        return bytes(buf[:got])

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short only at the end of the file)."""
        done, total = 0, len(buf)
        with self.in_use() as fd:
            if HAVE_PREAD:
                while done < total:
                    got = os.preadv(fd, [buf[done:]], offset + done)
                    if got <= 0:
                        break
                    done += got
                return done
            handle = self._thread_handle()
            handle.seek(offset)
            while done < total:
                got = handle.readinto(buf[done:])
                if not got:
                    break
                done += got
        return done

    def _thread_handle(self) -> io.FileIO:
        me = threading.get_ident()
        handle = self._handles.get(me)
        if handle is None:
            handle = io.FileIO(self.path, "r")
            with self._state:
                for ident in [t for t in self._handles if t not in _alive_threads()]:
                    self._handles.pop(ident).close()  # threads that ended
                self._handles[me] = handle
        return handle

    @contextlib.contextmanager
    def view(self, offset: int, n: int) -> Iterator[memoryview]:
        """Bytes ``offset:offset + n``: a zero-copy view of a memory map where pages can be dropped."""
        with self.in_use() as fd:
            end = offset + n
            if os.fstat(fd).st_size < end:
                raise TruncatedFileError(self.path, f"the file was truncated while open (byte {end})")
            if not _views_drop_pages():
                copy = memoryview(bytearray(n))
                if self.readinto(offset, copy) < n:
                    raise TruncatedFileError(self.path, f"the file was truncated while open (byte {end})")
                yield copy
                return
            with self._state:
                if self._map is None:
                    self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                mapped = self._map
            with memoryview(mapped) as whole, whole[offset:end] as part:
                yield part
            start = offset - offset % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Release the file for good."""
        with self._state:
            self._close_handles()
            self._closed = True


def open_positioned(path: str) -> PositionedFile | RemoteFile:
    """Open ``path`` for positioned reads: a :class:`~.remote.RemoteFile` for a URL, else a file on disk.

    Parameters
    ----------
    path
        A local path, or an ``https://``/``s3://`` URL (see :func:`~.remote.is_url`).

    Returns
    -------
    PositionedFile or RemoteFile
        Both read the same way: ``pread``, ``readinto``, ``view``, ``in_use``, ``close``.
    """
    return RemoteFile(path) if is_url(path) else PositionedFile(path)


def _alive_threads() -> set[int]:
    return {t.ident for t in threading.enumerate()}


def _close_all(fd: int, handles: dict[int, io.FileIO]) -> None:
    for handle in handles.values():
        handle.close()
    handles.clear()
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def released(path: str | os.PathLike) -> Iterator[None]:
    """Around a rename over ``path``: close its readers where the system needs it, reopen after.

    A no-op on POSIX, where readers keep the old file. Where open files
    cannot be replaced (Windows), every :class:`PositionedFile` of ``path`` in
    this process waits for its reads in flight, closes its handles and map,
    and holds new reads back until the block ends; they then reopen the new
    file (``generation`` goes up).
    """
    if not REPLACE_NEEDS_CLOSED_FILES:
        yield
        return
    with _registry_lock:
        readers = list(_open_files.get(_key(os.fspath(path)), ()))
    for reader in readers:
        reader._release()
    try:
        yield
    finally:
        for reader in readers:
            reader._resume()
