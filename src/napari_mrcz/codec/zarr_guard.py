"""Guards for reading OME-Zarr folders: what zarr-python would do with a hostile folder, refused first.

A damaged or hostile folder gives a :class:`ZarrSourceError` naming it,
never another exception, a huge allocation or an endless read:

- whatever zarr-python and its codecs raise on bad metadata or chunks
  (``ValueError``, ``KeyError``, ``RuntimeError`` from blosc, ``zlib.error``,
  ``RecursionError`` from deeply nested JSON ...) is wrapped;
- level 0 must be a 2D or 3D array of numbers, in a folder of the group
  (``datasets[0].path`` is a relative name, never ``..``), with only the
  codecs of :data:`V3_CODECS` or :data:`V2_CODECS` and :data:`V2_FILTERS`:
  those whose decoders are known to allocate no more than a chunk, or are
  checked here;
- chunk headers are checked before a codec allocates what they claim
  (numcodecs' blosc, zstd and lz4 allocate the decoded size their header
  states, up to 2 GiB, before finding it false), and a byte range of a
  shard's index past its file's end is refused (zarr-python's
  ``LocalStore`` allocates the range's length before reading);
- its declared sizes must be what its stored chunks could back
  (:func:`check_sizes`): a Zarr's missing chunks read as the fill value,
  so a damaged shape would otherwise describe terabytes of zeros, a frame
  no memory holds, or millions of sections.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
from collections.abc import Iterator
from typing import Any

#: The largest frame (bytes) read at once: a shape no real image has is refused, not allocated.
MAX_FRAME_BYTES = 16 << 30
#: What is allocated at once (a frame, a decoded chunk) beyond this many bytes must be backed by
#: level 0's files: at most :data:`AT_ONCE_EXPANSION` times their size.
AT_ONCE_FLOOR = 64 << 20
AT_ONCE_EXPANSION = 1024
#: All of level 0 beyond this many bytes must be backed too, at most :data:`TOTAL_EXPANSION` times its
#: files' size (blosc compresses zeros about 10 000 times: an empty segmentation stays readable).
TOTAL_FLOOR = 256 << 20
TOTAL_EXPANSION = 16384
#: Sections, chunks and shards beyond these many must be backed too: each costs zarr time to read even
#: where its files are missing (about 0.5 ms a section, 40 µs a chunk, 200 µs a shard). At most
#: :data:`SPARSITY` times those level 0's files hold (a chunk file, one chunk; a shard, its chunks).
SECTIONS_FLOOR = 4096
CHUNKS_FLOOR = 4096
SHARDS_FLOOR = 1024
SPARSITY = 16
#: Chunks (and shards) one section may span, and inner chunks one shard's index may list.
MAX_CHUNKS_PER_SECTION = 1 << 16
MAX_SHARD_ENTRIES = 1 << 20
#: The codecs level 0 may use: Zarr v3 codec names, and Zarr v2 compressor and filter ids.
V3_CODECS = ("bytes", "transpose", "blosc", "zstd", "gzip", "crc32c", "sharding_indexed")
V2_CODECS = ("blosc", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma")
V2_FILTERS = ("delta", "shuffle", "astype", "fixedscaleoffset", "quantize", "bitround")
_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ZarrSourceError(ValueError):
    """A folder that is not an OME-Zarr image napari-mrcz can read; the message names it."""


@contextlib.contextmanager
def reading(path: str, what: str) -> Iterator[None]:
    """Whatever zarr (or a codec) raises while reading ``path`` as a :class:`ZarrSourceError` naming it.

    zarr-python passes on what its codecs' libraries raise (``RuntimeError``
    from blosc, ``zlib.error``, ``SystemError`` ...): every one of them, but
    a ``MemoryError``, means the folder cannot be read.
    """
    try:
        yield
    except (ZarrSourceError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - zarr and numcodecs raise many types for one damaged file
        raise ZarrSourceError(f"{path}: {what}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- chunk checks


def _claimed_size(kind: str, data: Any, limit: int) -> None:
    """Refuse a chunk whose header claims more than ``limit`` decoded bytes (or more bytes than it has).

    blosc, zstd and lz4 (numcodecs) allocate the size their header states before they decode.
    """
    buf = memoryview(data).cast("B")
    n = len(buf)
    claimed = None
    if kind == "blosc":
        if n < 16:
            raise ValueError(f"a blosc chunk of {n} bytes, shorter than its 16-byte header")
        claimed, _, cbytes = struct.unpack_from("<III", buf, 4)
        if cbytes > n:
            raise ValueError(f"a blosc chunk says it holds {cbytes} bytes; it has {n}")
    elif kind == "lz4":
        if n < 4:
            raise ValueError(f"an lz4 chunk of {n} bytes, shorter than its size")
        claimed = int.from_bytes(buf[:4], "little")
    elif kind == "zstd" and n >= 5 and bytes(buf[:4]) == _ZSTD_MAGIC:
        descriptor = buf[4]
        single = (descriptor >> 5) & 1
        width = (1 if single else 0, 2, 4, 8)[descriptor >> 6]
        at = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
        if width and n >= at + width:
            claimed = int.from_bytes(buf[at:at + width], "little") + (256 if width == 2 else 0)
    if claimed is not None and claimed > limit:
        raise ValueError(f"a {kind} chunk says it decodes to {claimed} bytes; a chunk holds at most {limit}")


def _limit(raw: int) -> int:
    """The most bytes a bytes-to-bytes codec may decode to, for a chunk of ``raw`` bytes.

    Codecs before it (a checksum, say) may add a little.
    """
    return 2 * raw + 4096


@functools.cache
def _v3_checked() -> dict[str, type]:
    """The blosc and zstd codecs of zarr, checking a chunk's header before decoding it."""
    from zarr.codecs import BloscCodec, ZstdCodec

    def chunk_bytes(spec: Any) -> int:
        return math.prod(spec.shape) * spec.dtype.to_native_dtype().itemsize

    class CheckedBlosc(BloscCodec):
        def _decode_sync(self, chunk: Any, spec: Any) -> Any:
            _claimed_size("blosc", chunk.as_numpy_array(), _limit(chunk_bytes(spec)))
            return super()._decode_sync(chunk, spec)

    class CheckedZstd(ZstdCodec):
        def _decode_sync(self, chunk: Any, spec: Any) -> Any:
            _claimed_size("zstd", chunk.as_numpy_array(), _limit(chunk_bytes(spec)))
            return super()._decode_sync(chunk, spec)

    return {"blosc": CheckedBlosc, "zstd": CheckedZstd}


def _v2_checked(codec: Any, limit: int) -> Any:
    """A v2 compressor that checks a chunk's header before decoding it (blosc, zstd, lz4), else ``codec``."""
    import numcodecs

    kind = getattr(codec, "codec_id", None)
    base = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "lz4": numcodecs.LZ4}.get(kind)
    if base is None:
        return codec

    class Checked(base):
        def decode(self, buf: Any, out: Any = None) -> Any:
            _claimed_size(kind, numcodecs.compat.ensure_contiguous_ndarray(buf), limit)
            return super().decode(buf, out)

    config = dict(codec.get_config())
    config.pop("id", None)
    return Checked(**config)


def _v3_codecs(codecs: tuple, path: str, chunk: tuple[int, ...]) -> tuple:
    """``codecs`` (of chunks of shape ``chunk``) with blosc and zstd checked, inside shards too.

    Refuses codecs not in :data:`V3_CODECS`, and shards whose index would list
    more than :data:`MAX_SHARD_ENTRIES` inner chunks.
    """
    from zarr.codecs import (
        BloscCodec,
        BytesCodec,
        Crc32cCodec,
        GzipCodec,
        ShardingCodec,
        TransposeCodec,
        ZstdCodec,
    )

    checked = _v3_checked()
    out = []
    for codec in codecs:
        if isinstance(codec, BloscCodec):
            codec = checked["blosc"](typesize=codec.typesize, cname=codec.cname, clevel=codec.clevel,
                                     shuffle=codec.shuffle, blocksize=codec.blocksize)
        elif isinstance(codec, ZstdCodec):
            codec = checked["zstd"](level=codec.level, checksum=codec.checksum)
        elif isinstance(codec, ShardingCodec):
            inner = tuple(int(c) for c in codec.chunk_shape)
            per = [-(-s // max(1, c)) for s, c in zip(chunk, inner, strict=False)]
            if math.prod(per) > MAX_SHARD_ENTRIES:
                raise ZarrSourceError(f"{path}: a shard of level 0 holds {math.prod(per)} chunks; "
                                      f"napari-mrcz reads at most {MAX_SHARD_ENTRIES}")
            codec = ShardingCodec(chunk_shape=inner, codecs=_v3_codecs(tuple(codec.codecs), path, inner),
                                  index_codecs=_v3_codecs(tuple(codec.index_codecs), path, (*per, 2)),
                                  index_location=codec.index_location)
        elif not isinstance(codec, (BytesCodec, TransposeCodec, GzipCodec, Crc32cCodec)):
            raise ZarrSourceError(f"{path}: level 0's chunks use the codec {type(codec).__name__}; "
                                  f"napari-mrcz reads {', '.join(V3_CODECS)}")
        out.append(codec)
    return tuple(out)


def open_store(path: str) -> Any:
    """A read-only store of ``path`` refusing byte ranges past a file's end (instead of allocating them)."""
    from zarr.abc.store import RangeByteRequest
    from zarr.storage import LocalStore

    class Store(LocalStore):
        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            if isinstance(byte_range, RangeByteRequest):
                try:
                    size = os.path.getsize(os.path.join(str(self.root), key))
                except OSError:
                    size = None
                if size is not None and not 0 <= byte_range.start <= byte_range.end <= size:
                    raise ValueError(f"{key}: bytes {byte_range.start}-{byte_range.end} asked of a "
                                     f"{size}-byte file (a damaged shard index)")
            return await super().get(key, prototype, byte_range)

    return Store(path, read_only=True)


def checked_array(array: Any, path: str) -> Any:
    """Level 0 with its chunk headers checked as it is read; refuses codecs napari-mrcz does not read."""
    import dataclasses

    from zarr import Array
    from zarr.core.array import AsyncArray

    metadata = array.metadata
    inner = math.prod(array.chunks) * array.dtype.itemsize
    if metadata.zarr_format == 2:
        compressor = metadata.compressor
        kind = getattr(compressor, "codec_id", None) if compressor is not None else None
        if compressor is not None and kind not in V2_CODECS:
            raise ZarrSourceError(f"{path}: level 0's chunks are compressed by {kind!r}; napari-mrcz "
                                  f"reads {', '.join(V2_CODECS)}")
        for f in metadata.filters or ():
            if getattr(f, "codec_id", None) not in V2_FILTERS:
                which = getattr(f, "codec_id", f)
                raise ZarrSourceError(f"{path}: level 0's chunks are filtered by {which!r}; "
                                      f"napari-mrcz reads {', '.join(V2_FILTERS)}")
        if compressor is None:
            return array
        metadata = dataclasses.replace(metadata, compressor=_v2_checked(compressor, _limit(inner)))
    else:
        outer = tuple(int(c) for c in (array.shards or array.chunks))
        metadata = dataclasses.replace(metadata, codecs=_v3_codecs(tuple(metadata.codecs), path, outer))
    return Array(AsyncArray(metadata, array.store_path))


# --------------------------------------------------------------------------- sizes


def _stored(folder: str) -> tuple[int, int]:
    """Bytes and number of the data files (chunks, shards) under an array's folder."""
    size = count = 0
    for here, _, names in os.walk(folder):
        for name in names:
            if name not in _METADATA:
                with contextlib.suppress(OSError):
                    size += os.path.getsize(os.path.join(here, name))
                    count += 1
    return size, count


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_sizes(array: Any, path: str, folder: str) -> None:
    """Refuse a level 0 whose declared sizes its stored chunks could not back.

    A frame and a decoded chunk are allocated at once: beyond
    :data:`AT_ONCE_FLOOR` each must be at most :data:`AT_ONCE_EXPANSION`
    times the bytes level 0's files hold (and a frame at most
    :data:`MAX_FRAME_BYTES`); all of level 0, beyond :data:`TOTAL_FLOOR`, at
    most :data:`TOTAL_EXPANSION` times. Its sections beyond
    :data:`SECTIONS_FLOOR`, its chunks beyond :data:`CHUNKS_FLOOR` and its
    shards beyond :data:`SHARDS_FLOOR` are at most :data:`SPARSITY` times
    those its files hold. A section may span at most
    :data:`MAX_CHUNKS_PER_SECTION` chunks.
    """
    shape = tuple(int(s) for s in array.shape)
    if any(s <= 0 for s in shape):
        raise ZarrSourceError(f"{path}: level 0 holds no data (shape {shape})")
    itemsize = array.dtype.itemsize
    stored, objects = _stored(folder)
    at_once = min(MAX_FRAME_BYTES, max(AT_ONCE_FLOOR, AT_ONCE_EXPANSION * stored))
    frame = math.prod(shape[-2:]) * itemsize
    if frame > at_once:
        raise ZarrSourceError(f"{path}: a frame of {shape[-2]} x {shape[-1]} {array.dtype} "
                              f"({_gib(frame)}) is more than napari-mrcz reads at once from a level 0 of "
                              f"{stored} bytes")
    chunks = tuple(int(c) for c in array.chunks)
    outer = tuple(int(c) for c in (array.shards or array.chunks))
    if any(c <= 0 for c in (*chunks, *outer)):
        raise ZarrSourceError(f"{path}: level 0's chunks are {chunks}")
    chunk = math.prod(chunks) * itemsize
    if chunk > at_once:
        raise ZarrSourceError(f"{path}: a chunk of {' x '.join(map(str, chunks))} {array.dtype} "
                              f"({_gib(chunk)}) is more than napari-mrcz decodes at once from a level 0 of "
                              f"{stored} bytes")
    per_section = max(math.prod(-(-s // c) for s, c in zip(shape[-2:], chunks[-2:], strict=True)),
                      math.prod(-(-s // c) for s, c in zip(shape[-2:], outer[-2:], strict=True)))
    if per_section > MAX_CHUNKS_PER_SECTION:
        raise ZarrSourceError(f"{path}: a section of level 0 spans {per_section} chunks; napari-mrcz reads "
                              f"at most {MAX_CHUNKS_PER_SECTION}")
    total = math.prod(shape) * itemsize
    if total > max(TOTAL_FLOOR, TOTAL_EXPANSION * stored):
        raise ZarrSourceError(f"{path}: level 0 declares {_gib(total)} ({' x '.join(map(str, shape))} "
                              f"{array.dtype}), more than its {stored} bytes of chunks could hold")
    if len(shape) == 3:
        covered = objects * min(outer[0], shape[0])
        if shape[0] > max(SECTIONS_FLOOR, SPARSITY * covered):
            raise ZarrSourceError(f"{path}: level 0 declares {shape[0]} sections; its {objects} chunk files "
                                  f"hold at most {covered}")
    per_file = math.prod(-(-o // c) for o, c in zip(outer, chunks, strict=True))  # chunks a shard holds
    grids = [(chunks, "chunks", CHUNKS_FLOOR, objects * per_file)]
    if array.shards:
        grids.append((outer, "shards", SHARDS_FLOOR, objects))
    for unit, what, floor, held in grids:
        grid = math.prod(-(-s // c) for s, c in zip(shape, unit, strict=True))
        if grid > max(floor, SPARSITY * held):
            raise ZarrSourceError(f"{path}: level 0 declares {grid} {what} of {' x '.join(map(str, unit))}; "
                                  f"its {objects} files hold at most {held}")


