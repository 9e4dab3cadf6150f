"""A journal for changing a few bytes of a file in place, safe against a crash at any moment.

A header edit overwrites 1024 bytes (and perhaps the JSON extended header)
of a file that may hold tens of GB. Rewriting the file is slow; overwriting
the bytes is not atomic: a crash or a power cut mid-write can leave half a
header. The journal makes it safe:

1. The old and the new bytes of every region go to a journal beside the file
   (``.<name>.napari-mrcz-journal``), with a CRC-32 of the whole; the journal
   and its folder are fsync'ed.
2. The new bytes are written into the file, which is fsync'ed.
3. The journal is removed (and the folder fsync'ed).

Opening a file whose journal is present (:func:`recover`, which every MRC
open calls) finishes the story: if the file holds the new bytes in full, the
edit had completed and only the journal is removed ("completed"); otherwise
the old bytes are written back ("restored"); a journal that is itself
incomplete (its CRC fails) was cut off in step 1, before the file was
touched, and is removed. The file therefore always holds the old bytes or
the new ones, never a mixture. The data bytes of a file are never part of a
journal.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from .atomic import fsync_folder
from .errors import MRCFileError

MAGIC = b"napari-mrcz header journal 1\n"
SUFFIX = ".napari-mrcz-journal"
#: A journal holds headers, not data: anything larger is not ours.
MAX_JOURNAL_BYTES = 64 << 20

Region = tuple[int, bytes, bytes]  # (offset, old bytes, new bytes)


def journal_path(path: str | os.PathLike) -> Path:
    """The journal of ``path``: a hidden file beside it."""
    path = Path(os.fspath(path))
    return path.with_name(f".{path.name}{SUFFIX}")


def _encode(size: int, regions: list[Region]) -> bytes:
    index = json.dumps({"size": size, "regions": [[offset, len(new)] for offset, _, new in regions]})
    body = (MAGIC + struct.pack("<Q", len(index)) + index.encode("ascii")
            + b"".join(old for _, old, _ in regions) + b"".join(new for _, _, new in regions))
    return body + struct.pack("<I", zlib.crc32(body))


def _decode(data: bytes) -> tuple[int, list[Region]] | None:
    """The file size and regions a journal holds, or ``None`` if it is incomplete or not a journal."""
    if len(data) < len(MAGIC) + 12 or not data.startswith(MAGIC):
        return None
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        return None
    at = len(MAGIC)
    (n,) = struct.unpack("<Q", body[at:at + 8])
    try:
        index = json.loads(body[at + 8:at + 8 + n])
        size, spans = int(index["size"]), [(int(o), int(k)) for o, k in index["regions"]]
    except (ValueError, KeyError, TypeError):
        return None
    at += 8 + n
    total = sum(k for _, k in spans)
    if len(body) - at != 2 * total:
        return None
    if size < 0 or any(o < 0 or k < 0 or o + k > size for o, k in spans):
        raise ValueError("its regions lie outside the file it was made for")
    regions, old_at, new_at = [], at, at + total
    for offset, k in spans:
        regions.append((offset, body[old_at:old_at + k], body[new_at:new_at + k]))
        old_at, new_at = old_at + k, new_at + k
    return size, regions


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_folder(str(path.parent))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    out = b""
    while len(out) < n:
        piece = os.pread(fd, n - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return out


def _remove(journal: Path) -> None:
    journal.unlink(missing_ok=True)
    fsync_folder(str(journal.parent))


def write_in_place(path: str | os.PathLike, regions: list[Region]) -> None:
    """Replace each region's old bytes with its new bytes in ``path``, through the journal.

    Raises
    ------
    MRCFileError
        The file no longer holds a region's old bytes (it changed since it
        was read): nothing is written.
    OSError
        The journal or the file cannot be written (the file is then as it
        was, or is restored when next opened).
    """
    path = Path(os.fspath(path))
    journal = journal_path(path)
    regions = [(offset, old, new) for offset, old, new in regions if old != new]
    if not regions:
        return
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        for offset, old, _ in regions:
            if _pread_exact(fd, len(old), offset) != old:
                raise MRCFileError(path, "the file changed while it was being edited: nothing was written")
        size = os.fstat(fd).st_size
        _write_durably(journal, _encode(size, regions))  # 1. the journal, durable
        for offset, _, new in regions:  # 2. the new bytes, durable
            _pwrite_all(fd, new, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    _remove(journal)  # 3. done


def recover(path: str | os.PathLike) -> str | None:
    """Finish an edit of ``path`` that was interrupted; returns what was done (for a warning), or ``None``.

    Raises
    ------
    MRCFileError
        The journal belongs to a file of another size (the file was replaced
        since): both are left as they are.
    OSError
        The file cannot be written to restore it.
    """
    journal = journal_path(path)
    try:
        if journal.stat().st_size > MAX_JOURNAL_BYTES:
            raise MRCFileError(path, f"{journal} is not a header journal of napari-mrcz (too large): "
                                     "remove it if nobody is editing this file")
        data = journal.read_bytes()
    except FileNotFoundError:
        return None
    try:
        decoded = _decode(data)
    except ValueError as exc:
        raise MRCFileError(path, f"{journal.name} beside it is not a journal of an edit of this file "
                                 f"({exc}): the file is left as it is; remove the journal if nobody is "
                                 "editing it") from None
    if decoded is None:  # cut off while it was written: the file was not touched yet
        _remove(journal)
        return (f"{path}: a header edit was interrupted before it began; the file is unchanged "
                f"(its unfinished journal {journal.name} was removed)")
    size, regions = decoded
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise MRCFileError(path, f"{journal.name} beside it records an interrupted header edit of a "
                                     f"{size}-byte file, but the file has {actual} bytes: both are left as "
                                     "they are; remove the journal if the file is right")
        if all(_pread_exact(fd, len(new), offset) == new for offset, _, new in regions):
            how = "completed: the new header had been written in full"
        else:
            for offset, old, _ in regions:
                _pwrite_all(fd, old, offset)
            os.fsync(fd)
            how = "restored: the header is as it was before the edit"
    finally:
        os.close(fd)
    _remove(journal)
    return f"{path}: an interrupted header edit was {how} (from its journal {journal.name})"
