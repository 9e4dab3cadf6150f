"""The chunk index napari-mrcz writes after an MRCZ file's last chunk: section ``k`` found at once remotely.

Nothing in an MRCZ file says where chunk ``k`` starts but the headers of the
chunks before it (:mod:`.chunk_index`). On disk that walk is free; over the
network it is a round trip a chunk, seconds for the middle frame of a movie.
So the files we write end with the chunks' ends::

    after the last chunk   nz x uint64, little-endian: where chunk k ends, from the first data byte
    last 24 bytes          uint64 nz, uint64 CRC-32 of those nz x 8 bytes, then the 8 bytes b"MRCZidx1"

Offsets are counted from the first data byte (1024 + the extended header), so
an edit that rewrites the header and moves the data (a longer JSON extended
header) keeps the trailer right. python-mrcz reads ``nz`` chunks from the data
start and never looks further: it reads these files unchanged. A trailer is
only used when it holds together with the file it ends: its count is the
header's ``nz``, its checksum holds, the ends increase by a chunk header at least, and the last
one is exactly where the trailer starts. A reader asks for it only in a file
whose label says napari-mrcz wrote it and whose ``packedBytes`` (which counts
the trailer: python-mrcz's own tests want it to be the size of everything
after the header) ends at the end of the file: a python-mrcz file costs no
request. A file appended to or cut by another
program fails that and is walked, as a file without a trailer is; every chunk
read through the trailer has its own header checked as well
(:meth:`.chunk_index.ChunkIndex.confirm`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

MAGIC = b"MRCZidx1"
#: Largest trailer read (8 million sections); a file that claims more is walked.
MAX_BYTES = 64 << 20
_FOOT = struct.Struct("<QQ8s")
_HEAD = 16  # a blosc chunk header: no chunk is smaller


def nbytes(nz: int) -> int:
    """Bytes of the trailer of a file with ``nz`` chunks."""
    return 8 * nz + _FOOT.size


def encode(chunk_sizes: Sequence[int]) -> bytes:
    """The trailer of chunks of these compressed sizes, in file order."""
    ends = np.cumsum(np.asarray(chunk_sizes, dtype=np.uint64), dtype=np.uint64).astype("<u8").tobytes()
    return ends + _FOOT.pack(len(chunk_sizes), zlib.crc32(ends), MAGIC)


def decode(tail: bytes, nz: int, data_offset: int, size: int) -> list[int] | None:
    """The ``nz + 1`` chunk offsets a file's last :func:`nbytes` bytes give, or ``None``.

    Parameters
    ----------
    tail
        The file's last ``nbytes(nz)`` bytes (fewer for a short file).
    nz
        The header's number of sections.
    data_offset
        Where the first chunk starts.
    size
        The file's size.

    Returns
    -------
    list of int or None
        Where each chunk starts, then where the last one ends; ``None`` for a
        file without a trailer, or one that does not fit the file.
    """
    n = nbytes(nz)
    if nz < 1 or len(tail) != n or size - n < data_offset + _HEAD * nz:
        return None
    count, crc, magic = _FOOT.unpack(tail[-_FOOT.size:])
    if magic != MAGIC or count != nz or crc != zlib.crc32(memoryview(tail)[:8 * nz]):
        return None
    ends = np.frombuffer(tail, dtype="<u8", count=nz).astype(np.int64)
    if int(ends[-1]) != size - n - data_offset or int(ends[0]) < _HEAD:
        return None
    if nz > 1 and int(np.diff(ends).min()) < _HEAD:
        return None
    return [data_offset, *(data_offset + ends).tolist()]
