"""A mutational fuzzer for every reader: damaged and hostile files must give a clean error.

Every file in ``../shared/data`` is a seed, and three made here: two with FEI2
and SerialEM extended headers, and an MRCZ file of ours, which ends with its
chunks' index. A case mutates one seed (bit flips,
int32 header fields set to extremes, truncation, inserted and deleted bytes,
MRCZ chunk-header fields, that index, DM tag numbers; one to three of them stacked) and
reads the result the ways a user would: ``readMRC`` or ``readDM4``, and the
napari reader's path (``read_layers``, which opens the file and samples a frame
for contrast, then the first and the last frame of every layer).

OME-Zarr folders (``--inputs zarr`` or ``all``) are fuzzed too: seeds made
at the start (:func:`write_zarr_seeds`: ours in NGFF 0.5 and 0.4, and two of
zarr-python's), each case a copy with one to three mutations of its JSON
(values replaced by extremes and wrong types, keys deleted, bits flipped, the
file replaced by what is not JSON, or gone) or of its chunk and shard files
(bits flipped, cut short, extended, deleted, swapped, blosc header fields, a
shard index pointing past the end, with its checksum made right). The child
reads it as a user would (:func:`run_zarr_case`: ``open_image``, every
section of level 0, the frame the viewer shows first, and ``convert`` to
MRCZ), and checks what it read against the seed's level 0 where the
mutations left it alone, and the fill value where they deleted a chunk.

Cases run in long-lived child processes, each capped at ``--memory`` bytes of
address space (``RLIMIT_AS``) and ``--timeout`` seconds a case, and with
Python's allocation tracing on. Outcomes:

- good: the file reads, or raises an exception that subclasses ``ValueError``
  or ``OSError`` and names the file;
- defect: any other exception, a ``MemoryError``, an error that does not name
  the file, a peak allocation beyond what the file could back (``--alloc``
  bytes plus 64 x its size), a hang (the child is killed after the time
  limit), or a crash (the child dies); for a folder also data that is not
  what it holds, and a ``convert`` that raises, fails without naming it,
  leaves files behind, or writes other data than was read. Each defect's
  input is kept on disk.

Case ``i`` of seed ``s`` is the same mutation on every machine and in any
order, so a defect is reproduced by its numbers alone.

Usage::

    python -m tests.fuzzer --cases 200000 --seed random --keep fuzz-defects
    python -m tests.fuzzer --cases 2000 --inputs zarr --workers 2
    python -m tests.fuzzer --child      # internal: one worker process
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no address-space cap (and no runs; see tests/test_fuzz.py)
    resource = None

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MRCZ_DATA", ROOT.parent / "shared" / "data"))
SKIP = (".json", ".npz", ".md")
EXTREMES = [0, 1, -1, 2, 3, 4, 7, 16, 101, 255, 256, 1000, 1001, 2002, 3002, 6002, 999002, 0xFFFF, 1 << 16,
            1 << 20, 1 << 24, 1 << 28, (1 << 30) + 1, (1 << 31) - 1, -(1 << 31), (1 << 31) - 16]
#: Header fields of interest (byte offsets of int32s): dimensions, mode, starts, sampling, axes,
#: space group, extended header size, MRCZ fields, IMOD stamp and flags, labels.
#: What reads a case in the children: every way a user would.
READER = "tests.fuzzer:run_case"
MRC_FIELDS = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 64, 68, 72, 88, 92, 104, 128, 132, 136, 140, 144, 148,
              152, 156, 212, 220, 1024, 1028]


# ---------------------------------------------------------------------------
# Mutations (parent side)
# ---------------------------------------------------------------------------
@dataclass
class Seed:
    """One seed file and what the structured mutations need to know about it."""

    path: Path
    data: bytes
    byteorder: str = "<"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset, format version)
    tag_markers: list[int] = field(default_factory=list)
    dm_version: int = 0
    trailer: int = 0  # where the chunks' index of our MRCZ files starts (codec/chunk_trailer.py), if any


def load_seeds(folder: Path) -> list[Seed]:
    """Every readable file under ``folder``, with its chunk offsets or DM tag markers."""
    from napari_mrcz.codec import MRCStack

    seeds = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(SKIP)):
        seed = Seed(path, path.read_bytes())
        if path.suffix.lower() in (".dm3", ".dm4"):
            seed.dm_version = 4 if path.suffix.lower() == ".dm4" else 3
            seed.tag_markers = [i for i in range(len(seed.data) - 3) if seed.data[i:i + 4] == b"%%%%"]
        elif len(seed.data) >= 1024:
            seed.byteorder = ">" if seed.data[212] == 0x11 else "<"
            try:
                with MRCStack(path) as stack:
                    if stack.header.is_compressed:
                        seed.chunks = [stack.chunk_span(i)[::2] for i in range(stack.shape[0])]
                        if stack._index.loaded:
                            seed.trailer = len(seed.data) - 8 * stack.shape[0] - 24
            except Exception:  # a broken seed is still a seed, without chunk mutations
                pass
        seeds.append(seed)
    return seeds


def write_extended_seeds(folder: Path) -> Path:
    """Seeds made here: per-section extended headers (FEI2 by mrcfile, SerialEM per IMOD), an MRCZ of ours."""
    import numpy as np

    from .seri_writer import write_serialem
    from .test_extended import write_fei

    folder.mkdir(parents=True, exist_ok=True)
    data = np.arange(4 * 12 * 10, dtype=np.float32).reshape(4, 12, 10)
    write_fei(folder / "fei2_tilt.mrcs", b"FEI2", data, [-30.0, -10.0, 10.0, 30.0])
    records = {"tilt": [-30.0, -10.0, 10.0, 30.0], "mag": [1000] * 4, "dose": [1.5] * 4}
    write_serialem(folder / "serialem_tilt.st", data, records, flags=1 | 8 | 32)
    from napari_mrcz import codec

    codec.writeMRC(data, folder / "ours_zstd.mrcz", compressor="zstd", meta={"a": 1})  # with its index
    return folder


def _int32(rng: random.Random) -> int:
    return rng.choice(EXTREMES) if rng.random() < 0.8 else rng.randint(-(1 << 31), (1 << 31) - 1)


def _put(buf: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= offset <= len(buf) - size:
        struct.pack_into(fmt, buf, offset, value & ((1 << (8 * size)) - 1) if fmt[-1].isupper() else value)


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, list[str]]:
    """One to three stacked mutations of ``seed``; returns the bytes and what was done."""
    buf = bytearray(seed.data)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kinds = ["flip", "int32", "truncate", "insert", "delete"]
        if seed.chunks:
            kinds += ["chunk", "chunk", "chunk"]
        if seed.tag_markers:
            kinds += ["tag", "tag", "tag"]
        if seed.trailer:
            kinds += ["trailer", "trailer"]
        kind = rng.choice(kinds)
        n = len(buf)
        if kind == "flip" and n:
            for _ in range(rng.randint(1, 8)):
                # header bytes are where the structure is: favour them
                at = rng.randrange(min(n, 1100)) if rng.random() < 0.6 else rng.randrange(n)
                buf[at] ^= 1 << rng.randrange(8)
            done.append("flip")
        elif kind == "int32":
            at = (rng.choice(MRC_FIELDS) if rng.random() < 0.7
                  else 4 * rng.randrange(max(1, min(n, 1024) // 4)))
            value = _int32(rng)
            _put(buf, at, seed.byteorder + "i", value)
            done.append(f"int32@{at}={value}")
        elif kind == "truncate" and n:
            keep = rng.randrange(n)
            del buf[keep:]
            done.append(f"truncate@{keep}")
        elif kind == "insert":
            at = rng.randrange(n + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 64))
            done.append(f"insert@{at}")
        elif kind == "delete" and n:
            at = rng.randrange(n)
            del buf[at:at + rng.randint(1, 64)]
            done.append(f"delete@{at}")
        elif kind == "chunk":
            offset, version = rng.choice(seed.chunks)
            choice = rng.randrange(6)
            if choice < 3:  # nbytes, blocksize or cbytes
                at = offset + 4 * (choice + 1)
                value = rng.choice([0, 1, 16, 32, 0xFFFFFFFF, 0x7FFFFFFF, rng.getrandbits(32)])
                _put(buf, at, "<I", value)
            elif choice == 3:  # version, versionlz, flags or typesize
                at = offset + rng.randrange(4)
                if at < len(buf):
                    buf[at] = rng.choice([0, 1, 2, 3, 4, 5, 0x10, 0xFF, rng.getrandbits(8)])
            elif choice == 4:  # the block-offset table
                at = offset + (32 if version == 5 else 16) + 4 * rng.randrange(4)
                _put(buf, at, "<i", _int32(rng))
            else:  # bytes inside the compressed body
                at = offset + rng.randrange(16, 256)
                if at < len(buf):
                    buf[at] = rng.getrandbits(8)
            done.append(f"chunk@{offset}:{choice}")
        elif kind == "trailer":  # an end, the count or the checksum; the checksum made to agree, or not
            nz = len(seed.chunks)
            at = seed.trailer + 8 * rng.randrange(nz + 2)
            if at + 8 <= len(buf):
                old = int.from_bytes(buf[at:at + 8], "little")
                value = rng.choice([0, 16, 1 << 63, (1 << 64) - 1, rng.getrandbits(64),
                                    max(0, old - 16), old + 8, old + 4096])
                _put(buf, at, "<Q", value)
                crc_at = seed.trailer + 8 * nz + 8
                if rng.random() < 0.5 and crc_at + 8 <= len(buf):
                    _put(buf, crc_at, "<Q", zlib.crc32(bytes(buf[seed.trailer:seed.trailer + 8 * nz])))
            done.append(f"trailer@{at}")
        elif kind == "tag":
            marker = rng.choice(seed.tag_markers)
            width = 8 if seed.dm_version == 4 else 4
            word = rng.randrange(6)
            at = marker + 4 + width * word
            if rng.random() < 0.3:  # the tag's name length or a byte before the marker
                at = marker - rng.randint(1, 24)
                if 0 <= at < len(buf):
                    buf[at] = rng.getrandbits(8)
            else:
                _put(buf, at, ">q" if width == 8 else ">i", _int32(rng))
            done.append(f"tag@{at}")
    return bytes(buf), done


def case_file(seeds: list, seed: int, i: int, folder: Path) -> tuple[Path, Seed | ZarrSeed, list[str]]:
    """Write case ``i`` of run ``seed`` into ``folder``; the name keeps the seed's suffixes.

    A case of an OME-Zarr seed is a folder, with what the child may expect of
    it beside it (:data:`EXPECT_SUFFIX`).
    """
    rng = random.Random(seed * 1_000_003 + i)
    source = rng.choice(seeds)
    path = folder / f"case{i}-{source.path.name}"
    if isinstance(source, ZarrSeed):
        return path, source, case_folder(source, rng, path)
    data, done = mutate(source, rng)
    path.write_bytes(data)
    return path, source, done


def remove_case(path: Path) -> None:
    """Remove a case's file, or its folder and what was expected of it."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    path.unlink(missing_ok=True)
    Path(str(path) + EXPECT_SUFFIX).unlink(missing_ok=True)


def keep_case(path: Path, keep: Path) -> Path:
    """Copy a case (a file, or a folder and its expectations) into ``keep``; returns the copy."""
    keep.mkdir(parents=True, exist_ok=True)
    kept = keep / path.name
    if path.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(path, kept)
        expect = Path(str(path) + EXPECT_SUFFIX)
        if expect.is_file():
            shutil.copyfile(expect, str(kept) + EXPECT_SUFFIX)
    else:
        shutil.copyfile(path, kept)
    return kept


# ---------------------------------------------------------------------------
# OME-Zarr folders (seeds made at the start, mutated file by file)
# ---------------------------------------------------------------------------
#: The metadata files of a Zarr hierarchy (v3, and v2's three).
ZARR_META = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
#: What the child reads beside a case folder: where its level 0 came from and what may have changed.
EXPECT_SUFFIX = ".fuzz.json"
#: JSON keys whose values the mutations aim at (beside any node at all).
ZARR_KEYS = ("shape", "chunks", "chunk_shape", "data_type", "dtype", "fill_value", "codecs", "compressor",
             "filters", "index_codecs", "index_location", "configuration", "name", "id", "cname", "clevel",
             "shuffle", "typesize", "blocksize", "endian", "order", "dimension_separator", "separator",
             "chunk_key_encoding", "chunk_grid", "zarr_format", "node_type", "storage_transformers",
             "multiscales", "datasets", "path", "axes", "coordinateTransformations", "scale", "translation",
             "version", "ome", "napari_mrcz", "header", "meta", "extended", "record", "stack", "slices",
             "uint4", "labels", "unit", "type")
DTYPE_NAMES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
               "float32", "float64", "complex64", "complex128", "string", "bytes", "r8", "r16", "r7",
               "float8_e4m3", "object", "", "<f4", ">f4", "<i2", "|u1", "<u8", "<c8", "<c16", "|b1", "|O",
               "<U10", "|S10", "|V8", "<M8[ns]", "<m8[s]", "<f16", ">u2", "|i1", [["a", "<f4"], ["b", "<i2"]],
               {"name": "float32"}, {"name": "r8", "configuration": {}}, 7, None]
CODEC_NAMES = ["blosc", "bytes", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed", "vlen-utf8",
               "numcodecs.zlib", "zlib", "lz4", "bz2", "delta", "fixedscaleoffset", "bogus", "", "Blosc",
               "blosclz", "lz4hc", "snappy", "zlib", "no-such-codec", 0, None]
HOSTILE = [None, True, False, 0, 1, -1, 2, 3, 7, 255, 256, 65535, 1 << 31, (1 << 31) - 1, -(1 << 31),
           (1 << 63) - 1, -(1 << 63), 1 << 64, 10 ** 30, 0.5, -0.0, 1e308, -1e308, float("nan"),
           float("inf"), "", "x", "NaN", "Infinity", "0", "-1", "../0", "..", "/", "0/../..", "/etc",
           "c", "1", "2", "9", "\x00", "é" * 3, "x" * 5000, [], {}, [None], [0], [-1], [1 << 40], {"a": 1},
           {"name": "bogus"}, [{"name": "bogus"}], [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]


@dataclass
class ZarrSeed:
    """One seed OME-Zarr folder: its files' bytes, its level 0 (as a .npy), and where each stored file lies.

    ``regions`` maps each level-0 data file (a v2 chunk, a v3 chunk or shard)
    to the box of level 0 it holds (``[start, stop]`` per axis, clipped to
    the array); ``shards`` maps each shard to its inner chunk shape and its
    whole shape (its index has an entry per inner chunk of the whole shape,
    in C order).
    """

    path: Path
    files: dict[str, bytes]
    level0: str
    expected: Path
    fill: float
    regions: dict[str, list[list[int]]] = field(default_factory=dict)
    shards: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)


def _level0_path(attrs: dict) -> str:
    ome = attrs.get("ome", attrs)
    return str(ome["multiscales"][0]["datasets"][0]["path"])


def load_zarr_seed(folder: Path) -> ZarrSeed:
    """A seed from an intact OME-Zarr folder (read here with zarr-python, not with the code under test)."""
    import numpy as np
    import zarr

    root = zarr.open_group(str(folder), mode="r")
    level0 = _level0_path(dict(root.attrs))
    array = root[level0]
    data = np.asarray(array[...])
    expected = folder.with_name(folder.name + ".npy")
    np.save(expected, data)
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    fill = array.fill_value
    seed = ZarrSeed(folder, files, level0, expected, float(fill) if fill is not None else 0.0)
    outer = array.shards or array.chunks
    grid = [-(-n // c) for n, c in zip(array.shape, outer, strict=True)]
    for coords in np.ndindex(*grid):
        key = f"{level0}/{array.metadata.encode_chunk_key(coords)}"
        box = [[i * c, min((i + 1) * c, n)] for i, c, n in zip(coords, outer, array.shape, strict=True)]
        if key in files:
            seed.regions[key] = box
            if array.shards:
                seed.shards[key] = (list(array.chunks), list(array.shards))
    return seed


def write_zarr_seeds(folder: Path, data: Path = DATA) -> list[ZarrSeed]:
    """OME-Zarr seeds: ours (NGFF 0.5 and 0.4; a 2D image, volumes of 2 levels, labels, movies) and two
    written by zarr-python alone (small chunks, missing chunks, other codecs, big-endian data)."""
    import numpy as np
    import zarr

    from napari_mrcz import codec
    from napari_mrcz.codec.convert import convert

    folder.mkdir(parents=True, exist_ok=True)
    made = folder / "sources"
    made.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    labels = np.zeros((10, 16, 18), np.uint16)
    labels[2:7, 3:12, 4:9], labels[5:9, 9:15, 10:17] = 3, 17
    codec.writeMRC(labels, made / "labels.mrc", meta={"napari_mrcz_labels": True}, pixelsize=[4.0, 4.0, 4.0])
    movie = rng.integers(-300, 300, size=(5, 16, 20)).astype(np.int16)
    codec.writeMRC(movie, made / "movie.mrcs", pixelsize=[1.0, 1.1, 1.1])
    image = data / "dm" / "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4"
    if not image.is_file():
        codec.writeMRC(rng.normal(size=(64, 128)).astype(np.float32), made / "image.mrc")
        image = made / "image.mrc"
    volume = data / "mrc" / "emdb" / "EMD-3197.map"
    if not volume.is_file():
        codec.writeMRC(rng.normal(size=(20, 20, 20)).astype(np.float32), made / "volume.map")
        volume = made / "volume.map"
    for name, source, ngff, levels in (("image2d-05.zarr", image, "0.5", 2),
                                       ("volume-05.zarr", volume, "0.5", 2),
                                       ("volume-04.zarr", volume, "0.4", 2),
                                       ("labels-05.zarr", made / "labels.mrc", "0.5", 2),
                                       ("movie-04.zarr", made / "movie.mrcs", "0.4", 2),
                                       ("movie-05.zarr", made / "movie.mrcs", "0.5", 1)):
        out = convert(source, folder / name, ome_zarr=True, ngff=ngff, levels=levels)
        if out.status != "done":
            raise RuntimeError(f"a fuzz seed could not be written: {out.reason}")
    # zarr-python's own: a v3 sharded uint16 volume (zstd, crc32c index; chunks of zeros left out),
    # and a v2 big-endian float32 stack (zlib, '.' keys, fill value 0, a chunk of zeros left out)
    v3 = np.zeros((6, 20, 18), np.uint16)
    v3[:3] = rng.integers(0, 4000, size=(3, 20, 18))
    root = zarr.open_group(str(folder / "foreign-v3.zarr"), mode="w", zarr_format=3)
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1.5, 0.5, 0.5]}]}]}]}})
    root.create_array("s0", shape=v3.shape, dtype=v3.dtype, chunks=(1, 8, 8), shards=(2, 16, 16),
                      fill_value=0, dimension_names=list("zyx"))[...] = v3
    v2 = rng.normal(size=(4, 12, 10)).astype(">f4")
    v2[2:, 8:] = 0
    root = zarr.open_group(str(folder / "foreign-v2.zarr"), mode="w", zarr_format=2)
    root.attrs.update({"multiscales": [{"version": "0.4", "axes": [{"name": "t", "type": "time"},
                                                                   *axes[1:]],
                                        "datasets": [{"path": "0", "coordinateTransformations": [
                                            {"type": "scale", "scale": [1.0, 2.0, 2.0]}]}]}]})
    import numcodecs

    root.create_array("0", shape=v2.shape, dtype=v2.dtype, chunks=(2, 4, 4), fill_value=0,
                      compressors=numcodecs.Zlib(level=1),
                      chunk_key_encoding={"name": "v2", "separator": "."},
                      config={"write_empty_chunks": False})[...] = v2
    return [load_zarr_seed(p) for p in sorted(folder.glob("*.zarr"))]


def _nodes(value, path=()):
    """Every (path, value) of a JSON tree, the root first."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, (*path, key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _nodes(item, (*path, k))


def _hostile(key, old, rng: random.Random):
    """A value to put where ``old`` was (under ``key``): extremes, wrong types, near misses."""
    if rng.random() < 0.25:
        return rng.choice(HOSTILE)
    if key in ("data_type", "dtype"):
        return rng.choice(DTYPE_NAMES)
    if key in ("name", "id", "cname") and isinstance(old, str):
        return rng.choice(CODEC_NAMES)
    if isinstance(old, list) and old and all(isinstance(v, int) and not isinstance(v, bool) for v in old):
        choice = rng.randrange(8)
        if choice == 0:
            return [rng.choice([1 << 31, 1 << 40, (1 << 63) - 1, 1 << 64])] * len(old)
        if choice == 1:
            return [rng.choice([0, -1, -(1 << 31)])] * len(old)
        if choice == 2:
            return old + [rng.choice([1, 2, 5])]
        if choice == 3:
            return old[1:]
        if choice == 4:
            return [float(v) + 0.5 for v in old]
        new = list(old)
        new[rng.randrange(len(new))] = _int32(rng) if choice < 7 else rng.choice([0, 1, 2, 3, 5, 7, 1 << 16])
        return new
    if isinstance(old, bool):
        return not old
    if isinstance(old, int):
        return rng.choice([*EXTREMES, 1 << 63, 1 << 64, -(1 << 63), old + 1, old - 1, 2 * old, 0.5])
    if isinstance(old, float):
        return rng.choice([0.0, -old, old * 1e300, float("nan"), float("inf"), 1e-320, "1.0", None])
    if isinstance(old, str):
        return rng.choice(["", old + "x", old.upper(), old[:-1], "0", "1", "../" + old, "/" + old, "x" * 300,
                           rng.choice(CODEC_NAMES) or "bogus", "little", "big", "F", "C", ".", "/", "end",
                           "start"])
    if isinstance(old, list) and old:
        items = list(old)
        choice = rng.randrange(5)
        if choice == 0:
            return items[::-1]
        if choice == 1:
            return items + [items[rng.randrange(len(items))]]
        if choice == 2:
            return items[:1] * 3
        if choice == 3:
            return [None] + items
        return items[1:]
    if isinstance(old, dict) and old:
        return {k: (None if rng.random() < 0.3 else v) for k, v in old.items()}
    return rng.choice(HOSTILE)


def _raw_json(text: bytes, rng: random.Random) -> bytes:
    """What a damaged metadata file holds instead: not JSON, cut short, nested deeply, another type."""
    choice = rng.randrange(10)
    if choice == 0:
        return b""
    if choice == 1:
        return text[:rng.randrange(max(1, len(text)))]
    if choice == 2:
        return rng.randbytes(rng.randint(1, 300))
    if choice == 3:
        return b"[" * 100_000 + b"]" * 100_000
    if choice == 4:
        return b'{"a":' * 30_000 + b"1" + b"}" * 30_000
    if choice == 5:
        return rng.choice([b"[]", b"null", b"1", b'"zarr"', b"true", b"NaN", b"1e999", b"{}"])
    if choice == 6:
        return b"\xef\xbb\xbf" + text  # a byte-order mark
    if choice == 7:
        return text.decode("utf-8", "replace").encode("utf-16")
    if choice == 8:
        return text + b"\n{}"
    return text.replace(b"}", b"", 1)


def _is_level0_exact(name: str, path: tuple, seed: ZarrSeed) -> bool:
    """Whether a change at ``path`` (``()``: all of it) of metadata file ``name`` leaves level 0 alone."""
    folder = name.rsplit("/", 1)[0] if "/" in name else ""
    if folder == seed.level0:  # level 0's own metadata: its attributes and dimension names only
        return name.endswith(".zattrs") or (bool(path) and path[0] in ("attributes", "dimension_names"))
    if folder:  # another level's
        return True
    # the group's: all but what says which array is level 0 (datasets, and what holds them)
    datasets = ("attributes", "ome", "multiscales", 0, "datasets") if name == "zarr.json" else \
        ("multiscales", 0, "datasets")
    return bool(path) and "datasets" not in path and path != datasets[:len(path)]


def _entries(seed: ZarrSeed, name: str) -> int:
    """How many entries shard ``name``'s index has."""
    inner, shard = seed.shards[name]
    n = 1
    for s, c in zip(shard, inner, strict=True):
        n *= -(-s // c)
    return n


def _entry_box(seed: ZarrSeed, name: str, entry: int) -> list[list[int]]:
    """The box of level 0 that entry ``entry`` of shard ``name``'s index holds (empty past the array)."""
    inner, shard = seed.shards[name]
    coords = []
    for s, c in zip(reversed(shard), reversed(inner), strict=True):
        n = -(-s // c)
        coords.append(entry % n)
        entry //= n
    return [[min(lo + i * c, hi), min(lo + (i + 1) * c, hi)]
            for (lo, hi), i, c in zip(seed.regions[name], coords[::-1], inner, strict=True)]


def mutate_zarr(seed: ZarrSeed, rng: random.Random) -> tuple[dict[str, bytes | None], list[str], dict]:
    """One to three stacked mutations of a seed folder's files; returns the files (``None``: deleted),
    what was done, and what the child may expect of level 0 (``exact``: as the seed, but for the
    ``free`` boxes, which may hold anything, and the ``filled`` boxes, which read as the fill value)."""
    files: dict[str, bytes | None] = dict(seed.files)
    done: list[str] = []
    expect = {"expected": str(seed.expected), "fill": seed.fill, "exact": True, "free": [], "filled": []}
    meta = [n for n in files if n.rsplit("/", 1)[-1] in ZARR_META]
    chunks = [n for n in files if n not in meta]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if rng.random() < 0.5:
            level0 = [n for n in meta if n.startswith(seed.level0 + "/")]
            top = [n for n in meta if "/" not in n]
            pick = rng.random()
            name = rng.choice(top if pick < 0.4 else level0 if pick < 0.85 and level0 else meta)
            text = files[name]
            if text is None:
                continue
            try:
                tree = json.loads(text)
            except (ValueError, RecursionError):  # damaged by an earlier mutation of this case
                tree = None
            kind = rng.choice(["raw", "flip"]) if tree is None else \
                rng.choice(["set", "set", "set", "set", "del", "raw", "flip", "gone"])
            if kind in ("set", "del"):
                nodes = list(_nodes(tree))[1:]
                aimed = [n for n in nodes if n[0] and n[0][-1] in ZARR_KEYS]
                if not nodes:
                    continue
                path, old = rng.choice(aimed if aimed and rng.random() < 0.6 else nodes)
                parent = tree
                for p in path[:-1]:
                    parent = parent[p]
                if kind == "del":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = _hostile(path[-1], old, rng)
                files[name] = json.dumps(tree).encode()
                done.append(f"json-{kind}:{name}:{'/'.join(map(str, path))}")
                if not _is_level0_exact(name, path, seed):
                    expect["exact"] = False
            elif kind in ("raw", "flip"):
                if kind == "raw":
                    files[name] = _raw_json(text, rng)
                else:  # bits of the text: a digit, a quote, a brace changed
                    buf = bytearray(text)
                    for _ in range(rng.randint(1, 4)):
                        if buf:
                            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
                    files[name] = bytes(buf)
                done.append(f"json-{kind}:{name}")
                expect["exact"] = expect["exact"] and _is_level0_exact(name, (), seed)
            else:
                files[name] = None
                done.append(f"json-gone:{name}")
                expect["exact"] = expect["exact"] and _is_level0_exact(name, (), seed)
            continue
        if not chunks:
            continue
        ours = [n for n in chunks if n in seed.regions]
        name = rng.choice(ours if ours and rng.random() < 0.8 else chunks)
        buf = files[name]
        if buf is None:
            continue
        buf = bytearray(buf)
        box = seed.regions.get(name)
        kinds = ["flip", "flip", "truncate", "extend", "insert", "delete", "gone", "empty", "swap", "blosc"]
        if name in seed.shards:
            kinds += ["index"] * 4
        kind = rng.choice(kinds)
        filled = False
        if kind == "flip" and buf:
            for _ in range(rng.randint(1, 8)):
                where = rng.random()
                at = (rng.randrange(min(len(buf), 16)) if where < 0.3 else
                      len(buf) - 1 - rng.randrange(min(len(buf), 64)) if where < 0.6
                      else rng.randrange(len(buf)))
                buf[at] ^= 1 << rng.randrange(8)
        elif kind == "truncate" and buf:
            del buf[rng.randrange(len(buf)):]
        elif kind == "extend":
            buf += rng.randbytes(rng.choice([1, 4, 16, 64, 4096]))
        elif kind == "insert":
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == "delete" and buf:
            at = rng.randrange(len(buf))
            del buf[at:at + rng.randint(1, 64)]
        elif kind == "gone":
            files[name] = None
            done.append(f"gone:{name}")
            if box is not None:
                expect["filled"].append(box)
            continue
        elif kind == "empty":
            buf = bytearray()
        elif kind == "swap":
            other = rng.choice(chunks)
            if files[other] is None:
                continue
            files[name], files[other] = files[other], bytes(buf)
            done.append(f"swap:{name}:{other}")
            for n in (name, other):
                if n in seed.regions:
                    expect["free"].append(seed.regions[n])
                elif n.startswith(seed.level0 + "/"):
                    expect["exact"] = False
            continue
        elif kind == "blosc":  # a blosc header field (v2 chunks; a shard's first inner chunk)
            field_at = rng.choice([0, 1, 2, 3, 4, 8, 12])
            if field_at < 4:
                if field_at < len(buf):
                    buf[field_at] = rng.choice([0, 1, 2, 3, 4, 5, 0x10, 0xFF, rng.getrandbits(8)])
            else:
                _put(buf, field_at, "<I", rng.choice([0, 1, 16, 32, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFFFEF,
                                                      rng.getrandbits(32)]))
        elif kind == "index":  # the shard index at its end: (offset, nbytes) per inner chunk, then CRC-32C
            n = _entries(seed, name)
            at = len(buf) - 4 - 16 * n
            if at < 0:
                continue
            entry = rng.randrange(n)
            end = len(buf)
            choice = rng.randrange(7)
            offset, nbytes = struct.unpack_from("<QQ", buf, at + 16 * entry)
            if choice == 0:
                offset = end + rng.choice([0, 1, 100, 1 << 20])
            elif choice == 1:
                nbytes = rng.choice([end, end * 2, 1 << 31, 1 << 40, (1 << 63) - 1, 0xFFFFFFFFFFFFFFFE])
            elif choice == 2:
                offset, nbytes = 0xFFFFFFFFFFFFFFF0, 32
            elif choice == 3:
                offset, nbytes = 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF  # an empty chunk: reads as the fill
                filled = True
            elif choice == 4:
                nbytes = 0
            elif choice == 5:
                offset = max(0, offset - rng.randint(1, 64))
            else:
                offset, nbytes = at, 16 * n  # the index itself
            struct.pack_into("<QQ", buf, at + 16 * entry, offset, nbytes)
            if rng.random() < 0.8:  # a valid checksum: the reader gets past it
                import google_crc32c

                struct.pack_into("<I", buf, len(buf) - 4, google_crc32c.value(bytes(buf[at:len(buf) - 4])))
            done.append(f"index:{name}:{entry}:{choice}")
            files[name] = bytes(buf)
            if filled:
                expect["filled"].append(_entry_box(seed, name, entry))
            else:
                expect["free"].append(box)
            continue
        files[name] = bytes(buf)
        done.append(f"{kind}:{name}")
        if box is not None:
            expect["free"].append(box)
        elif name.startswith(seed.level0 + "/"):
            expect["exact"] = False
    return files, done, expect


def case_folder(seed: ZarrSeed, rng: random.Random, path: Path) -> list[str]:
    """Write a mutated copy of ``seed`` at ``path`` (a folder) and what the child may expect beside it."""
    files, done, expect = mutate_zarr(seed, rng)
    for name, content in files.items():
        if content is None:
            continue
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    path.mkdir(parents=True, exist_ok=True)
    Path(str(path) + EXPECT_SUFFIX).write_text(json.dumps(expect))
    return done


class FuzzDefect(Exception):
    """What a case's reading found wrong, beyond an exception (never a ValueError: always a defect)."""


def _box_mask(shape: tuple[int, ...], boxes: list):
    """A boolean array of ``shape``, true inside the ``boxes`` (those of as many axes)."""
    import numpy as np

    mask = np.zeros(shape, bool)
    for box in boxes:
        if len(box) == len(shape):
            mask[tuple(slice(lo, hi) for lo, hi in box)] = True
    return mask


def run_zarr_case(path: str) -> None:
    """Read an OME-Zarr folder as a user would, and convert it to MRCZ; raises what the readers raise.

    ``open_image``, then every section of level 0 (as ``compress`` reads them)
    and the frame napari shows first (through the frame cache). Then
    ``convert(path, 'out.mrcz')``, which must never raise: ``failed`` with a
    reason naming the folder and nothing left behind, or ``done`` with an
    output that holds what was read. With a ``.fuzz.json`` beside the case,
    what was read must be its seed's level 0, where the mutations leave it
    alone, and the fill value where they deleted a chunk.
    """
    import numpy as np

    from napari_mrcz.codec.convert import convert
    from napari_mrcz.codec.export import source_sections
    from napari_mrcz.codec.source import open_image

    spec_file = Path(path + EXPECT_SUFFIX)
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else None
    failure: Exception | None = None
    read: list = []
    got_shape = None
    try:
        image = open_image(path)
        try:
            got_shape = tuple(image.shape)
            expected = np.load(spec["expected"]) if spec and spec["exact"] else None
            if expected is not None and (got_shape != expected.shape or image.dtype != expected.dtype):
                raise FuzzDefect(f"level 0 reads as {got_shape} {image.dtype}, the seed's is "
                                 f"{expected.shape} {expected.dtype}")
            if expected is not None:
                free = _box_mask(expected.shape, spec["free"])
                filled = _box_mask(expected.shape, spec["filled"]) & ~free
                want = np.where(filled, np.asarray(spec["fill"], expected.dtype), expected)
                keep = ~free
            sections = source_sections(image)
            frame_shape = tuple(sections.shape[1:])
            keep_sections = np.prod(sections.shape, dtype=np.float64) * sections.dtype.itemsize < 32 << 20
            for i in range(len(sections)):
                section = np.asarray(sections[i])
                if section.shape != frame_shape or section.dtype != sections.dtype:
                    raise FuzzDefect(f"section {i} is {section.shape} {section.dtype}, not {frame_shape} "
                                     f"{sections.dtype}")
                if expected is not None:
                    exact, where = (want, keep) if expected.ndim == 2 else (want[i], keep[i])
                    same = section == exact
                    if section.dtype.kind in "fc":
                        same |= np.isnan(section) & np.isnan(exact)
                    if not same[where].all():
                        raise FuzzDefect(f"section {i} is not what the folder holds "
                                         f"({int((~same & where).sum())} values differ)")
                read.append(section if keep_sections else None)
            shown = np.asarray(image.sample_frame())
            if image.cache is not None:
                middle = (image.shape[0] - 1) // 2
                again = np.asarray(sections[middle])
                if not np.array_equal(shown, again, equal_nan=shown.dtype.kind in "fc"):
                    raise FuzzDefect("the frame cache and the sections differ")
        finally:
            if image.cache is not None:
                image.cache.close()
            image.handle.close()
    except (ValueError, OSError) as exc:
        failure = exc
    out_dir = Path(tempfile.mkdtemp(prefix="out-", dir=Path(path).parent))
    try:
        target = out_dir / "out.mrcz"
        try:
            out = convert(path, target)
        except BaseException as exc:
            raise FuzzDefect(f"convert raised {type(exc).__name__}: {exc}") from exc
        left = sorted(p.name for p in out_dir.iterdir())
        if out.status != "done":
            if path not in out.reason:
                raise FuzzDefect(f"convert {out.status} without naming the folder: {out.reason}")
            if left:
                raise FuzzDefect(f"convert {out.status} and left {left}")
            if failure is None and out.status == "failed":
                raise FuzzDefect(f"the folder reads, but convert failed: {out.reason}")
        else:
            if failure is not None:
                raise FuzzDefect(f"convert wrote what the reader refuses ({failure})")
            if left != ["out.mrcz"]:
                raise FuzzDefect(f"convert left {left}")
            written = open_image(target)
            try:
                back = source_sections(written)
                if len(back) != len(read):
                    raise FuzzDefect(f"convert wrote {len(back)} sections of {len(read)}")
                for i, section in enumerate(read):
                    again = np.asarray(back[i])
                    if section is not None and not np.array_equal(
                            again, section.astype(again.dtype), equal_nan=again.dtype.kind in "fc"):
                        raise FuzzDefect(f"convert wrote section {i} unlike what was read")
            finally:
                written.handle.close()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if failure is not None:
        raise failure


# ---------------------------------------------------------------------------
# The child: reads cases, one per line
# ---------------------------------------------------------------------------
def folder_size(path: str) -> int:
    """Bytes of every file under a folder."""
    return sum(os.path.getsize(os.path.join(here, name))
               for here, _, names in os.walk(path) for name in names)


def run_case(path: str) -> None:
    """Read one file every way a user would (raises what the readers raise)."""
    import numpy as np

    from napari_mrcz import codec
    from napari_mrcz._reader import read_layers

    if os.path.isdir(path):
        run_zarr_case(path)
        return
    if path.lower().endswith((".dm3", ".dm4")):
        dm = codec.readDM4(path)
        for image in dm.im:
            np.asarray(image.imageData).sum()
    else:
        image, _ = codec.readMRC(path)
        for frame in image if isinstance(image, list) else [image]:
            np.asarray(frame).sum()
    for data, _, _ in read_layers(path):
        if len(data.shape) >= 3:
            np.asarray(data[0]).sum()
            np.asarray(data[-1]).sum()
        else:
            np.asarray(data).sum()


def child(memory: int, alloc: int, warm: list[str], reader: str = READER) -> None:
    """Serve cases from stdin: ``{"path": ...}`` in, one JSON result line out.

    Before the first case it reads the ``warm`` files (intact seeds) the way
    cases are read, so that everything a read imports (napari, pint, dask,
    the decompressors) is loaded, then says ``{"ready": true}``: a case's
    time is the read's own, never the ~1 300 modules a first napari read
    imports. ``reader`` (``module:function``) reads a case. The objects that
    warm-up left are frozen out of the collector's reach (``gc.freeze``), so
    the collection after each case costs what the case left, not what napari
    holds.
    """
    import gc
    import importlib
    import tracemalloc
    import warnings

    import napari_mrcz._reader  # noqa: F401 - imported before the cap, as a real session has it
    from napari_mrcz.codec import blosc_chunks

    module, name = reader.split(":")
    read = getattr(importlib.import_module(module), name)
    blosc_chunks.warm()
    warnings.simplefilter("ignore")
    for path in warm:
        try:
            read(path)
        except Exception:  # noqa: BLE001 - a broken seed warms up as well as a good one
            pass
    gc.collect()
    gc.freeze()
    if resource is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    tracemalloc.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = json.loads(line)["path"]
        size = folder_size(path) if os.path.isdir(path) else os.path.getsize(path)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result: dict = {"ok": True}
        t0 = time.perf_counter()
        try:
            read(path)
        except MemoryError as exc:  # after which this process is not to be trusted: a new one follows
            print(json.dumps({"ok": False, "why": f"MemoryError: {exc}"}), flush=True)
            return
        except (ValueError, OSError) as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            if path not in text:
                result = {"ok": False, "why": f"{type(exc).__name__} does not name the file: {exc}"}
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            result = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = time.perf_counter() - t0
        gc.collect()
        grown = tracemalloc.get_traced_memory()[1] - before
        if result["ok"] and grown > alloc + 64 * size:
            result = {"ok": False, "why": f"allocated {grown} bytes at once for a {size}-byte file"}
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# The parent: hands out cases, watches the children
# ---------------------------------------------------------------------------
@dataclass
class Defect:
    """One case that did not end well, and where its input is kept."""

    case: int
    seed_file: str
    mutations: list[str]
    why: str
    kept: str


class Worker:
    """One child process, warmed up before its first case, restarted after a crash or a hang."""

    def __init__(self, memory: int, alloc: int, warm: list[str], reader: str) -> None:
        self.args = [sys.executable, "-m", "tests.fuzzer", "--child", "--memory", str(memory),
                     "--alloc", str(alloc), "--reader", reader, "--warm", *warm]
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.case: tuple | None = None
        self.started = 0.0

    def start(self) -> None:
        """A new child; it takes cases once it has said it is ready."""
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.ready, self.case, self.started = False, None, time.monotonic()

    def send(self, case: tuple) -> None:
        self.case, self.started = case, time.monotonic()
        self.proc.stdin.write(json.dumps({"path": str(case[0])}) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


def warm_files(seeds: list[Seed]) -> list[str]:
    """One intact seed of each kind of file (by suffix), for the children to read before any case."""
    kinds: dict[str, str] = {}
    for seed in seeds:
        kinds.setdefault("".join(seed.path.suffixes[-2:]).lower(), str(seed.path))
    return list(kinds.values())


def fuzz(cases: int, seed: int, *, workers: int = 2, timeout: float = 20.0, memory: int = 3 << 30,
         alloc: int = 256 << 20, keep: Path | None = None, data: Path = DATA,
         progress: bool = False, startup: float = 600.0, reader: str = READER,
         inputs: str = "files") -> tuple[int, list[Defect]]:
    """Run ``cases`` cases of run ``seed``; returns the number run and the defects.

    ``timeout`` is what one case may take in a warmed-up child. A case that
    takes longer is run again at the end, alone, in a fresh warmed-up child,
    and is a hang only if it takes longer there too: a machine busy with
    other work slows a case down, it does not make one hang. ``startup``
    bounds a child's start and warm-up. ``reader`` (``module:function``)
    reads a case in the children (default: every way a user would). Each defect's input is copied into
    ``keep`` (default: a folder named ``fuzz-defects`` in the current
    directory, made only when needed). ``inputs``: ``'files'`` (every file
    under ``data``, and two with extended headers made here), ``'zarr'``
    (OME-Zarr folders made here, :func:`write_zarr_seeds`) or ``'all'``.
    """
    if inputs not in ("files", "zarr", "all"):
        raise ValueError(f"inputs must be 'files', 'zarr' or 'all', not {inputs!r}")
    seeds: list = load_seeds(data) if inputs != "zarr" else []
    if inputs != "zarr" and not seeds:
        raise FileNotFoundError(f"no seed files under {data}")
    work = Path(tempfile.mkdtemp(prefix="mrcz-fuzz-"))
    try:
        if inputs != "zarr":
            seeds += load_seeds(write_extended_seeds(work / "seeds"))
        if inputs != "files":
            seeds += write_zarr_seeds(work / "zarr-seeds", data)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    warm = warm_files(seeds)
    keep = Path(keep or "fuzz-defects")
    defects: list[Defect] = []
    suspects: list[tuple] = []  # cases that took longer than ``timeout``: run again, alone
    selector = selectors.DefaultSelector()
    next_case, done, t0 = 0, 0, time.monotonic()

    def record(case: tuple, why: str) -> None:
        path, source, mutations, i = case
        kept = keep_case(path, keep)
        defects.append(Defect(i, source.path.name, mutations, why, str(kept)))

    def launch(worker: Worker) -> None:
        worker.start()
        selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)

    def retire(worker: Worker) -> None:
        if worker.proc is not None:
            selector.unregister(worker.proc.stdout)
            worker.kill()

    def give(worker: Worker) -> None:
        nonlocal next_case
        if next_case < cases:
            path, source, mutations = case_file(seeds, seed, next_case, work)
            worker.send((path, source, mutations, next_case))
            next_case += 1

    def finish(worker: Worker, result: dict | None, again: bool = False) -> None:
        """Judge the worker's case by the child's answer (``None``: the child died under it).

        ``again``: a suspected hang run again, counted already.
        """
        nonlocal done
        case, worker.case = worker.case, None
        if result is None:
            code = worker.proc.wait()
            record(case, f"crash ({signal.Signals(-code).name if code < 0 else f'exit {code}'})")
        elif not result["ok"]:
            record(case, result["why"])
        remove_case(case[0])
        done += 0 if again else 1
        if progress and done % 1000 == 0:
            print(f"{done} cases, {len(defects)} defects, {done / (time.monotonic() - t0):.0f}/s",
                  flush=True)

    def serve(worker: Worker) -> None:
        """Read the worker's next line: ready, or its case's result; restart it where it ended."""
        line = worker.proc.stdout.readline()
        if not worker.ready:
            if not line:
                raise RuntimeError(f"a fuzzing child ended before it was ready: {' '.join(worker.args)}")
            worker.ready = json.loads(line).get("ready", False)
            give(worker)
            return
        result = json.loads(line) if line else None
        finish(worker, result)
        if result is None or "MemoryError" in result.get("why", ""):  # the child has ended
            retire(worker)
            if next_case < cases:
                launch(worker)
        else:
            give(worker)

    def watch(pool: list[Worker]) -> None:
        """Set aside the cases that overran ``timeout``; fail a child that never got ready."""
        nonlocal done
        now = time.monotonic()
        for worker in pool:
            if worker.proc is None:
                continue
            if not worker.ready and now - worker.started > startup:
                raise RuntimeError(f"a fuzzing child was not ready after {startup:.0f} s")
            if worker.case is not None and now - worker.started > timeout:
                suspects.append(worker.case)
                worker.case = None
                done += 1
                retire(worker)
                if next_case < cases:
                    launch(worker)

    pool = [Worker(memory, alloc, warm, reader) for _ in range(max(1, workers))]
    try:
        for worker in pool[:cases]:
            launch(worker)
        while done < cases:
            for key, _ in selector.select(timeout=0.5):
                serve(key.data)
            watch(pool)
        for worker in pool:
            if worker.proc is not None:
                selector.unregister(worker.proc.stdout)
                worker.close()
        for case in suspects:  # again, alone: the only child running
            alone = Worker(memory, alloc, warm, reader)
            pool = [alone]
            launch(alone)
            while alone.proc is not None and not alone.ready:
                for key, _ in selector.select(timeout=0.5):
                    serve(key.data)
                watch(pool)
            alone.send(case)
            while alone.case is not None:
                if selector.select(timeout=0.5):
                    line = alone.proc.stdout.readline()
                    finish(alone, json.loads(line) if line else None, again=True)
                elif time.monotonic() - alone.started > timeout:
                    record(case, f"hang (more than {timeout:.0f} s among {workers} workers, and again alone)")
                    remove_case(case[0])
                    alone.case = None
            retire(alone)
    finally:
        for worker in pool:
            retire(worker)
        shutil.rmtree(work, ignore_errors=True)
    return done, defects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", default="0", help="a number, or 'random'")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take")
    ap.add_argument("--memory", type=int, default=3 << 30, help="address-space cap of a child (bytes)")
    ap.add_argument("--alloc", type=int, default=256 << 20,
                    help="peak allocation allowed beyond 64 x the file's size (bytes)")
    ap.add_argument("--keep", type=Path, default=Path("fuzz-defects"), help="where defects' inputs go")
    ap.add_argument("--inputs", choices=("files", "zarr", "all"), default="all",
                    help="mutate files (MRC, MRCZ, DM), OME-Zarr folders, or both")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--reader", default=READER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.memory, args.alloc, args.warm, args.reader)
        return
    seed = random.SystemRandom().randrange(1 << 31) if args.seed == "random" else int(args.seed)
    print(f"fuzzing: {args.cases} cases, seed {seed}, {args.workers} workers, {args.inputs} inputs, "
          f"seeds from {DATA}", flush=True)
    t0 = time.monotonic()
    done, defects = fuzz(args.cases, seed, workers=args.workers, timeout=args.timeout, memory=args.memory,
                         alloc=args.alloc, keep=args.keep, progress=True, inputs=args.inputs)
    for d in defects:
        print(f"DEFECT case {d.case} ({d.seed_file}; {', '.join(d.mutations)}): {d.why}\n  kept: {d.kept}")
    print(f"{done} cases in {time.monotonic() - t0:.0f} s, seed {seed}: {len(defects)} defects")
    sys.exit(1 if defects else 0)


if __name__ == "__main__":
    main()
