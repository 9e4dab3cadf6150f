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

    def __init__(self, f: BinaryIO, every: int | None = None, target: str | None = None) -> None:
        self._f, self._since, self._target = f, 0, target
        self._every = WRITEBACK_BYTES if every is None else every
        self._sync = getattr(os, "fdatasync", os.fsync)  # macOS and Windows have fsync only
        self._wake, self._stopping = threading.Event(), False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="mrcz-writeback", daemon=True)
        self._thread.start()

    def write(self, data: Any) -> int:
        """Write ``data`` (all of it or less, as an unbuffered file does); returns the bytes written."""
        try:
            n = self._f.write(data) or 0
        except OSError as exc:  # a full disk, a quota: about the file the user named
            raise (exc if self._target is None else _naming(exc, self._target, self._f.name)) from exc
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
            try:
                self._sync(self._f.fileno())
            except OSError as exc:  # reported once per file by the kernel: kept for stop() to raise
                self._error = exc
                return

    def stop(self) -> None:
        """End the background write-backs (the caller's fsync follows).

        Raises
        ------
        OSError
            A write-back failed (the disk is full, or lost the data): the
            kernel reports that once, to the first sync, which was ours.
        """
        self._stopping = True
        self._wake.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

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
            f = WritebackFile(raw, target=target)
            try:
                yield f  # type: ignore[misc]
            except BaseException:
                with contextlib.suppress(OSError):
                    f.stop()
                raise
            try:
                f.stop()
                os.fsync(raw.fileno())
            except OSError as exc:
                raise _naming(exc, target, tmp) from exc
        replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _naming(exc: OSError, target: str, tmp: Any = None) -> OSError:
    """A file operation's error about ``target``, which the user named, not the temporary file beside it."""
    if target in str(exc) and (tmp is None or str(tmp) not in str(exc)):
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
