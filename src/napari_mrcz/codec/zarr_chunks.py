"""The chunks of a Zarr array, and Zarr v3 shards, compressed and written by napari-mrcz itself.

zarr-python writes the arrays' metadata (:func:`.ome_zarr.prepare`); the data
goes through here: each chunk compressed by python-blosc (several chunks at
once, one blosc thread each, as :class:`~.blosc_chunks.Compressor` does for
MRCZ sections), decoded again while it is in memory and compared with what it
was made from, and each file's bytes on disk checked against a CRC-32 of what
was written. That is the verification of an MRCZ output, and costs one
decode in memory instead of a read back through zarr (four times slower).

A chunk is stored whole, as Zarr stores it: an edge chunk is padded with the
fill value (0) to the chunk shape. A v3 shard is its chunks in C order of
the shard's chunk grid, then the index: for each chunk its offset and size
(little-endian uint64; ``2**64 - 1`` twice for a chunk wholly outside the
array), then the CRC-32C of the index (the ``sharding_indexed`` codec with
``index_codecs`` bytes + crc32c, ``index_location`` end). Chunk keys: v3
``c/i/j/k``, v2 ``i/j/k`` (the ``/`` separator).
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import blosc_chunks

#: Bytes of a written file read back at a time, to check it.
READ_BACK_BLOCK = 8 << 20
#: Offset and size of a chunk a shard does not hold (the whole chunk lies outside the array).
EMPTY = 0xFFFFFFFFFFFFFFFF


class ChunkMismatchError(ValueError):
    """A chunk that does not decode to what it was made from, or a file whose bytes on disk differ."""


@dataclass(frozen=True)
class ArrayGrid:
    """One array's shape, chunk and shard shape (``shard`` ``None``: Zarr v2, a file per chunk)."""

    shape: tuple[int, ...]
    chunk: tuple[int, ...]
    shard: tuple[int, ...] | None


def _places(origin: tuple[int, ...], grid: ArrayGrid, first: tuple[int, ...],
            count: tuple[int, ...]) -> Iterator[tuple[slice, ...] | None]:
    """Where in the data (which holds the array from ``origin``) chunks ``first``.. lie, in C order.

    ``count`` chunks along each axis; a chunk wholly outside the array is ``None``.
    """
    for index in np.ndindex(*count):
        start = [(f + i) * c for f, i, c in zip(first, index, grid.chunk, strict=True)]
        if any(s >= n for s, n in zip(start, grid.shape, strict=True)):
            yield None
            continue
        yield tuple(slice(s - o, min(s + c, n) - o) for s, o, c, n in
                    zip(start, origin, grid.chunk, grid.shape, strict=True))


class ChunkWriter:
    """Compresses, verifies and writes the chunks of one array.

    Parameters
    ----------
    folder
        The array's folder (its ``zarr.json`` or ``.zarray`` is there already).
    grid
        Its shape, chunks and shards.
    dtype
        Its data type (little-endian).
    cname, clevel, shuffle
        The blosc codec of its chunks (``shuffle``: ``'shuffle'``, ``'noshuffle'`` or ``'bitshuffle'``).
    n_threads
        Chunks compressed at once.
    verify
        Decode every chunk again and check every file's bytes on disk.
    """

    def __init__(self, folder: str | os.PathLike, grid: ArrayGrid, dtype: np.dtype, cname: str, clevel: int,
                 shuffle: str, n_threads: int | None = None, verify: bool = True) -> None:
        self.folder, self.grid, self.dtype, self.verify = Path(folder), grid, np.dtype(dtype), verify
        self.n_threads = blosc_chunks.threads(n_threads)
        nbytes = int(np.prod(grid.chunk)) * self.dtype.itemsize
        self.compressor = blosc_chunks.Compressor(cname, clevel, self.dtype.itemsize, nbytes, "blosc1",
                                                  self.n_threads, shuffle=shuffle)
        self._local = threading.local()
        self._readback = bytearray(READ_BACK_BLOCK)  # the disk thread's (one at a time)

    def write(self, data: np.ndarray, origin: tuple[int, ...]) -> int:
        """Write every shard (v2: chunk) that ``data``, the array from ``origin``, covers; returns bytes.

        ``data`` must cover whole shards (or whole chunks), clipped at the
        array's end. Each file is written (and synced, and checked) by a
        thread of its own while the next one's chunks are compressed.

        Raises
        ------
        ChunkMismatchError
            A chunk that does not decode to its data, or a file that does not
            read back as written.
        """
        data = np.asarray(data, dtype=self.dtype)
        unit = self.grid.shard or self.grid.chunk
        ends = [min(o + s, n) for o, s, n in zip(origin, data.shape, self.grid.shape, strict=True)]
        starts = [range(o, e, u) for o, e, u in zip(origin, ends, unit, strict=True)]
        written = 0
        pending = None
        with self.compressor.session(), ThreadPoolExecutor(self.n_threads) as pool, \
                ThreadPoolExecutor(1) as disk:
            for corner in np.ndindex(*(len(r) for r in starts)):
                place = tuple(r[i] for r, i in zip(starts, corner, strict=True))
                path, parts = self._unit(pool, data, origin, place)
                if pending is not None:  # one file on its way to disk while the next is compressed
                    written += pending.result()
                pending = disk.submit(self._write_file, path, parts)
            if pending is not None:
                written += pending.result()
        return written

    def _unit(self, pool: ThreadPoolExecutor, data: np.ndarray, origin: tuple[int, ...],
              place: tuple[int, ...]) -> tuple[Path, list[bytes]]:
        """The file of the shard (v2: chunk) at ``place``, and its bytes in parts."""
        grid = self.grid
        unit = grid.shard or grid.chunk
        first = tuple(p // c for p, c in zip(place, grid.chunk, strict=True))
        count = tuple(u // c for u, c in zip(unit, grid.chunk, strict=True))
        encoded = list(pool.map(lambda where: self._encode(data, where), _places(origin, grid, first, count)))
        key = [str(p // u) for p, u in zip(place, unit, strict=True)]
        path = self.folder.joinpath(*(["c", *key] if grid.shard else key))
        if grid.shard is None:
            return path, [encoded[0] or b""]
        index = np.full((len(encoded), 2), EMPTY, dtype="<u8")
        offset = 0
        for n, chunk in enumerate(encoded):
            if chunk is not None:
                index[n] = (offset, len(chunk))
                offset += len(chunk)
        raw = index.tobytes()
        return path, [*(c for c in encoded if c is not None), raw, _crc32c(raw).to_bytes(4, "little")]

    def _buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """The calling thread's chunk and decode buffers (reused: no fresh pages for every chunk)."""
        mine = getattr(self._local, "buffers", None)
        if mine is None:
            block = np.empty(self.grid.chunk, self.dtype)
            mine = self._local.buffers = (block, np.empty(block.nbytes, np.uint8))
        return mine

    def _encode(self, data: np.ndarray, where: tuple[slice, ...] | None) -> bytes | None:
        """One chunk compressed (in a pool thread: the copy out of ``data`` too), verified."""
        if where is None:
            return None
        block, decoded = self._buffers()
        part = data[where]
        if part.shape != block.shape:
            block.fill(0)  # the fill value, past the array's end
        block[tuple(slice(0, n) for n in part.shape)] = part
        chunk = self.compressor(block)
        if self.verify:
            blosc_chunks.decompress_into(chunk, decoded, chunk[0], 1)
            from .convert import same_bytes

            if not same_bytes(decoded, block.reshape(-1).view(np.uint8)):
                raise ChunkMismatchError(f"{self.folder}: a chunk does not decode to the data it was "
                                         "made from")
        return chunk

    def _write_file(self, path: Path, parts: list[bytes]) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        crc, size = 0, 0
        with open(path, "wb", buffering=0) as f:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = f.write(view)
                    view = view[n:]
                crc, size = zlib.crc32(part, crc), size + len(part)
            os.fsync(f.fileno())
        if self.verify:
            buffer = self._readback
            back, total = 0, 0
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    back, total = zlib.crc32(memoryview(buffer)[:n], back), total + n
            if total != size or back != crc:
                raise ChunkMismatchError(f"{path}: the bytes on disk are not the bytes written")
        return size


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as the Zarr v3 ``crc32c`` codec computes it."""
    import google_crc32c  # zarr-python 3 needs it, so it is there wherever zarr is

    return int(google_crc32c.value(data))
