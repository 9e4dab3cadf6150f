"""Atomic, durable file replacement: write a temporary file beside the target, fsync, rename.

A failure or an interrupt (``KeyboardInterrupt`` included) before the rename
removes the temporary file and leaves any existing file untouched. The
temporary file is fsync'ed before the rename and the folder after it, as
databases do, so after a power cut the name holds either the old file or the
whole new one, never an empty or partial file. On POSIX, readers that hold
the old file open (a lazily loaded napari layer) keep reading the old data;
where an open file cannot be renamed over (Windows), our own readers of it are
closed for the rename and read the new file after it (:func:`.positioned.released`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .positioned import released


def _new_file_mode(target: str) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


#: Bytes written between two write-backs started in the background (see :class:`WritebackFile`).
WRITEBACK_BYTES = 32 << 20


class WritebackFile:
    """An unbuffered file whose written bytes go to disk while more are written.

    Every ``every`` bytes written, a thread of its own starts an
    ``fdatasync`` of what is written so far, as databases do with
    ``bytes_per_sync``: the disk takes one part while the next is
    compressed, and the final ``fsync`` before the rename has little left to
    wait for. A write costs about the larger of compression and the disk,
    not their sum. Everything else is the file's.
    """

    def __init__(self, f: BinaryIO, every: int | None = None) -> None:
        self._f, self._since = f, 0
        self._every = WRITEBACK_BYTES if every is None else every
        self._sync = getattr(os, "fdatasync", os.fsync)  # macOS and Windows have fsync only
        self._wake, self._stopping = threading.Event(), False
        self._thread = threading.Thread(target=self._run, name="mrcz-writeback", daemon=True)
        self._thread.start()

    def write(self, data: Any) -> int:
        """Write ``data`` (all of it or less, as an unbuffered file does); returns the bytes written."""
        n = self._f.write(data) or 0
        self._since += n
        if self._since >= self._every:
            self._since = 0
            self._wake.set()
        return n

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            with contextlib.suppress(OSError):  # the final fsync reports what failed
                self._sync(self._f.fileno())

    def stop(self) -> None:
        """End the background write-backs (the caller's fsync follows)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing that replaces ``path`` on success.

    Written bytes start going to disk in the background as they are written
    (:class:`WritebackFile`); the file is fsync'ed before the rename.

    Parameters
    ----------
    path
        The file to create or replace.

    Yields
    ------
    BinaryIO
        The temporary file, open for ``'wb+'``.

    """
    target = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)  # see temporaries()
    except OSError as exc:
        raise _naming(exc, target, exc.filename) from exc  # about the temporary file it tried
    try:
        with os.fdopen(fd, "wb+", buffering=0) as raw:
            os.chmod(tmp, _new_file_mode(target))  # mkstemp's 0600 would hide the file from the group
            f = WritebackFile(raw)
            try:
                yield f  # type: ignore[misc]
            finally:
                f.stop()
            os.fsync(raw.fileno())
        replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            named = _naming(exc, target, tmp)
            if named is not exc:
                raise named from exc
        raise


def _naming(exc: OSError, target: str, tmp: str | None = None) -> OSError:
    """The error about ``target``, which the user named, where it names the temporary file or no file.

    An error that names another file (a source that failed to read) is left as it is.
    """
    about_tmp = exc.filename is not None and exc.filename == tmp or tmp is not None and tmp in str(exc)
    if not about_tmp and (exc.filename is not None or target in str(exc)):
        return exc
    try:
        return type(exc)(exc.errno, f"cannot write {target}: {exc.strerror or exc}", target)
    except TypeError:  # an OSError subclass with other arguments
        return OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}", target)


def temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """The temporary files :func:`atomic_write` left in ``folder`` for targets named ``name`` (a glob)."""
    return list(Path(folder).glob(f".{name}.*.part"))


def replace(done: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished, fsync'ed file ``done`` over ``target``, durably, even while ``target`` is open."""
    with released(target):
        os.replace(done, target)
    fsync_folder(os.path.dirname(os.path.abspath(target)))


def fsync_folder(folder: str) -> None:
    """Make a rename or a new file in ``folder`` durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder; NTFS journals the rename itself
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)
