"""OME-Zarr output: an image (or a segmentation) as a multiscale NGFF 0.5 or 0.4 image, verified.

Two layouts (:func:`plan_layout`):

- **NGFF 0.5** (the default): Zarr v3 with sharding. Volumes have 128³ inner
  chunks, what copick, neuroglancer and the portal's viewers read well, in
  shards of 128 x 512 x 512 voxels (128 MB of float32: an object of the size
  S3 serves well, and what one task holds while it compresses it). Movies,
  tilt series and 2D images have chunks of one frame, 512 x 512 (a viewer
  stepping through frames reads one frame, not 128), in shards of up to
  4096 x 4096 and as many frames as make about 256 MB. Chunks are blosc zstd 3
  with bit shuffle (``benchmarks/bench_zarr_codecs.py``).
- **NGFF 0.4**: the CryoET Data Portal's layout: Zarr v2, 256³ chunks, key
  separator ``/``, Blosc lz4 level 5 with byte shuffle, levels 1x, 2x and 4x.

Levels: level ``k`` is binned ``2**k`` in z, y and x for volumes, in y and x
only for stacks (movies, tilt series), by exact block mean
(:mod:`.binning`, smaller last blocks averaging what they hold), or by block
maximum for segmentations (a label present in a block survives, and ids are
never blended into ids that do not exist). By default, levels go down until
the largest binned side is at most :data:`MAX_SIDE`.

The work is cut in *slabs* of sections along the first axis
(:meth:`Layout.slabs`), each a task that reads its sections once and writes
whole shards (whole chunks in 0.4) of every level: so a volume's coarser
levels have chunks ``2**k`` times thinner in z (level 1 of a 0.5 volume:
64 x 128 x 128). No task depends on another, a task killed with its worker is
simply run again, and a huge tomogram spreads over a cluster slab by slab.
Every chunk is decoded again while in memory and compared with what it was
made from, and every file's bytes on disk are checked against a CRC-32 of
what was written, before the task ends (:mod:`.zarr_chunks`).

An output is written under a hidden temporary folder beside its target
(:func:`prepare`); :func:`finish` then writes the group's metadata, syncs
every file and folder, and renames it to its name, so a folder under its
final name is always complete and verified.

Metadata: axes with types and units (ångström), a ``scale`` per level from the
pixel size and a ``translation`` from the MRC origin (each level's shifted to
the centre of its first block), and under :data:`ATTRS_KEY` everything the
file said: the whole MRC header, the decoded extended header (per-section
tilt angles, doses ...), voltage, C3, gain, the JSON metadata, DM
calibrations, the source's path and a stamp that ties the output to it (a
re-run skips outputs already done). :mod:`.zarr_source` reads it all back, so
that ``decompress`` / ``compress`` of a ``.zarr`` give the MRC fields again.

zarr is imported only when an output is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from .binning import BlockSums, binned_size, frame_sums
from .export import UnsupportedImageError

#: The namespaced key of the group's attributes that holds what the source file said.
ATTRS_KEY = "napari_mrcz"
#: NGFF versions written.
NGFF_VERSIONS = ("0.5", "0.4")
#: By default, levels go down until the largest binned side is at most this.
MAX_SIDE = 2048
#: Levels of the portal's layout (1x, 2x, 4x).
PORTAL_LEVELS = 3
#: y and x of a volume's shards, and of a stack's (in NGFF 0.5).
VOLUME_SHARD_EDGE = 512
STACK_SHARD_EDGE = 4096
#: Uncompressed bytes a stack's slab (the frames of one shard) holds, about.
STACK_SLAB_BYTES = 256 << 20
#: What makes a folder name an OME-Zarr output.
ZARR_SUFFIX = ".zarr"
_FORMAT = 1


class ZarrOutputError(ValueError):
    """An OME-Zarr output cannot be written or does not verify; the message names the folder."""


def have_zarr() -> bool:
    """Whether zarr-python 3 can be imported (the ``zarr`` extra)."""
    try:
        import zarr
    except ImportError:
        return False
    return int(zarr.__version__.split(".")[0]) >= 3


#: What to install for OME-Zarr output.
ZARR_EXTRA = 'pip install ".[zarr]" in a napari-mrcz checkout (zarr-python 3)'


def _require_zarr() -> Any:
    if not have_zarr():
        raise ModuleNotFoundError(f"OME-Zarr output needs zarr-python 3, which is not installed: "
                                  f"{ZARR_EXTRA}")
    import zarr

    return zarr


@dataclass(frozen=True)
class Layout:
    """How one output is laid out: its levels, chunks, shards and slabs.

    Shapes are (n, ny, nx) even for a 2D image (``ndim`` 2: n = 1, and the
    arrays written have no first axis).
    """

    ngff: str
    ndim: int
    volume: bool
    labels: bool
    dtype: str
    shapes: tuple[tuple[int, int, int], ...]
    chunks: tuple[tuple[int, int, int], ...]
    shards: tuple[tuple[int, int, int], ...] | None
    slab: int
    compressor: str
    clevel: int
    shuffle: str

    @property
    def levels(self) -> int:
        """How many levels (1: level 0 only)."""
        return len(self.shapes)

    def z_factor(self, k: int) -> int:
        """Sections of level 0 per plane of level ``k``."""
        return 2 ** k if self.volume else 1

    def slabs(self) -> list[tuple[int, int]]:
        """(first, end) sections of level 0 of each task."""
        n = self.shapes[0][0]
        return [(z, min(n, z + self.slab)) for z in range(0, n, self.slab)]

    def array_shape(self, k: int) -> tuple[int, ...]:
        """Level ``k``'s shape as written (2D images without the first axis)."""
        return self.shapes[k][3 - self.ndim:]

    def as_dict(self) -> dict[str, Any]:
        """For the attributes and for tasks (plain lists, JSON)."""
        return {k: (list(map(list, v)) if isinstance(v, tuple) and v and isinstance(v[0], tuple) else v)
                for k, v in asdict(self).items()}


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def level_count(shape: tuple[int, int, int], volume: bool, max_side: int = MAX_SIDE) -> int:
    """Levels that bring the largest binned side to at most ``max_side`` (z counts for volumes)."""
    sides = list(shape if volume else shape[1:])
    count, factor = 1, 1
    while max(binned_size(s, factor) for s in sides) > max_side and max(sides) > factor:
        factor *= 2
        count += 1
    return count


def plan_layout(shape: tuple[int, ...], dtype: Any, *, volume: bool, labels: bool = False,
                ngff: str = "0.5", levels: int | None = None, compressor: str | None = None,
                clevel: int | None = None) -> Layout:
    """The layout of an output for data of ``shape`` and ``dtype``.

    Parameters
    ----------
    shape
        (ny, nx) or (n, ny, nx).
    dtype
        The type written (level 0 is the source's data, exactly).
    volume
        A tomogram or map (binned in z too), rather than a stack of frames.
    labels
        A segmentation: levels by block maximum, not mean.
    ngff
        ``'0.5'`` (Zarr v3, sharded) or ``'0.4'`` (the portal's Zarr v2 layout).
    levels
        How many levels (default: down to :data:`MAX_SIDE`; 3 for ``'0.4'``).
    compressor, clevel
        The blosc compressor and level (default: zstd 3 with bit shuffle for 0.5, lz4 5 with
        byte shuffle for 0.4).

    Raises
    ------
    ValueError
        An unknown ``ngff``, or fewer than one level.
    """
    if ngff not in NGFF_VERSIONS:
        raise ValueError(f"NGFF {ngff!r} is not written; choose one of {', '.join(NGFF_VERSIONS)}")
    dtype = np.dtype(dtype)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise UnsupportedImageError(f"OME-Zarr output takes 2D and 3D images, not {ndim}D")
    full = (1, *shape) if ndim == 2 else tuple(int(s) for s in shape)
    volume = volume and ndim == 3
    if levels is None:
        levels = PORTAL_LEVELS if ngff == "0.4" else level_count(full, volume)
    if levels < 1:
        raise ValueError(f"an OME-Zarr image has at least one level, not {levels}")
    shapes = []
    for k in range(levels):
        f = 2 ** k
        shapes.append((binned_size(full[0], f) if volume else full[0], binned_size(full[1], f),
                       binned_size(full[2], f)))
    frame_bytes = full[1] * full[2] * dtype.itemsize
    if volume:
        depth = 256 if ngff == "0.4" else 128
        edge = depth
        slab = max(depth, 2 ** (levels - 1))
    else:
        edge = 1024 if ngff == "0.4" else 512
        slab = int(min(64, max(1, STACK_SLAB_BYTES // max(1, frame_bytes))))
        slab = 2 ** int(math.log2(slab))
    chunks, shards = [], []
    for k, (nz, ny, nx) in enumerate(shapes):
        cz = max(1, min(nz, slab // (2 ** k) if volume else 1))
        cy, cx = min(ny, edge), min(nx, edge)
        chunks.append((cz, cy, cx))
        shard_edge = VOLUME_SHARD_EDGE if volume else STACK_SHARD_EDGE
        sy, sx = min(_round_up(ny, cy), shard_edge), min(_round_up(nx, cx), shard_edge)
        sz = max(1, min(nz, slab // (2 ** k) if volume else slab))
        shards.append((_round_up(sz, cz), sy, sx))
    portal = ngff == "0.4"
    compressor = compressor or ("lz4" if portal else "zstd")
    clevel = int(clevel) if clevel is not None else (5 if portal else 3)
    # 0.5: bit shuffle (benchmarks/bench_zarr_codecs.py: with zstd 3 it compresses floats 1.5x faster
    # than byte shuffle at about its ratio, and 8-bit movies and labels 15-35 % smaller, 2-5x faster).
    # 0.4: the portal's byte shuffle (a no-op for 8-bit data).
    shuffle = "shuffle" if portal else "bitshuffle"
    return Layout(ngff=ngff, ndim=ndim, volume=volume, labels=labels, dtype=dtype.str,
                  shapes=tuple(shapes), chunks=tuple(chunks),
                  shards=tuple(shards) if ngff == "0.5" else None, slab=slab,
                  compressor=compressor, clevel=clevel, shuffle=shuffle)


def output_dtype(dtype: Any, path: str = "") -> np.dtype:
    """The type an image of ``dtype`` is written in (little-endian; what OME-Zarr readers take).

    Raises
    ------
    UnsupportedImageError
        Complex data (no block mean for display, and few OME-Zarr readers), or not numeric.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise UnsupportedImageError(f"{path}: OME-Zarr output takes real numbers, not {dtype} "
                                    "(save complex data as MRCZ)")
    return np.dtype(bool) if dtype.kind == "b" else dtype.newbyteorder("<")


# --------------------------------------------------------------------------- metadata


def _axes(layout: Layout, stack_axis: str) -> list[dict[str, str]]:
    space = [{"name": n, "type": "space", "unit": "angstrom"} for n in ("z", "y", "x")]
    if layout.ndim == 2:
        return space[1:]
    if layout.volume:
        return space
    # a movie or a tilt series: its frames are not a length
    return [{"name": stack_axis, "type": "time" if stack_axis == "t" else "other"}, *space[1:]]


def transforms(layout: Layout, pixel_size: tuple[float, float, float],
               origin: tuple[float, float, float] | None) -> list[list[dict[str, Any]]]:
    """Each level's ``coordinateTransformations``: its scale in Å, and a translation from the origin.

    Level ``k``'s voxel (or pixel) is the mean of a block of ``2**k`` level-0
    voxels: its centre lies ``(2**k - 1) / 2`` level-0 voxels past the
    block's first, which the translation says. A stack's frames are 1 apart
    (their spacing stays in the attributes).
    """
    out = []
    if layout.ndim == 3 and not layout.volume:  # a stack's frames: one apart, from 0 (not a length)
        pixel_size = (1.0, *pixel_size[1:])
        origin = None if origin is None else (0.0, *origin[1:])
    for k in range(layout.levels):
        f = [layout.z_factor(k), 2 ** k, 2 ** k]
        scale = [float(p) * fk for p, fk in zip(pixel_size, f, strict=True)]
        entry: list[dict[str, Any]] = [{"type": "scale", "scale": scale[3 - layout.ndim:]}]
        base = list(origin) if origin is not None else [0.0, 0.0, 0.0]
        shift = [b + (fk - 1) / 2 * float(p) for b, fk, p in zip(base, f, pixel_size, strict=True)]
        if origin is not None or k:
            entry.append({"type": "translation", "translation": shift[3 - layout.ndim:]})
        out.append(entry)
    return out


def multiscales(layout: Layout, pixel_size: tuple[float, float, float],
                origin: tuple[float, float, float] | None, name: str,
                stack_axis: str = "t") -> dict[str, Any]:
    """The NGFF ``multiscales`` entry (without the 0.4 ``version`` key, which :func:`finish` adds)."""
    method = "block maximum (napari-mrcz)" if layout.labels else "block mean (napari-mrcz)"
    return {"name": name, "axes": _axes(layout, stack_axis),
            "datasets": [{"path": str(k), "coordinateTransformations": t}
                         for k, t in enumerate(transforms(layout, pixel_size, origin))],
            "type": "max" if layout.labels else "mean",
            "metadata": {"method": method, "version": __version__}}


# --------------------------------------------------------------------------- writing


@dataclass
class Prepared:
    """An output being written: its temporary folder, layout and what goes into its attributes."""

    source: str
    target: str
    temporary: str
    layout: dict[str, Any]
    attrs: dict[str, Any]
    keepbits: Any = None
    max_error: float = 0.01
    frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def the_layout(self) -> Layout:
        """The :class:`Layout` back from its dict."""
        d = dict(self.layout)
        for key in ("shapes", "chunks", "shards"):
            if d[key] is not None:
                d[key] = tuple(tuple(int(v) for v in s) for s in d[key])
        return Layout(**d)


def temporary_name(target: str | os.PathLike) -> Path:
    """A new hidden temporary folder beside ``target`` (removed by :func:`remove_leftovers`)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")


def remove_leftovers(target: str | os.PathLike) -> None:
    """Remove the temporary folders an interrupted run left for ``target``."""
    target = Path(target)
    if target.parent.is_dir():
        import glob

        for stale in target.parent.glob(f".{glob.escape(target.name)}.{'[0-9a-f]' * 8}.part"):
            shutil.rmtree(stale, ignore_errors=True)


def prepare(source: str, target: str | os.PathLike, layout: Layout, attrs: dict[str, Any], *,
            keepbits: Any = None, max_error: float = 0.01) -> Prepared:
    """Create the temporary folder of ``target`` with its (empty) level arrays.

    Parameters
    ----------
    source
        The file the data comes from (named in errors).
    target
        The output folder (``name.zarr``); its parent is created.
    layout
        From :func:`plan_layout`.
    attrs
        The group's attributes: ``'ome'`` (NGFF 0.5) or ``'multiscales'``
        (0.4), and :data:`ATTRS_KEY`. Written by :func:`finish`.
    keepbits, max_error
        Round float mantissas of level 0 (lossy), as
        :func:`~napari_mrcz.codec.mrc.writeMRC` does.
    """
    zarr = _require_zarr()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(target)
    try:
        fmt = 3 if layout.ngff == "0.5" else 2
        root = zarr.open_group(str(temporary), mode="w", zarr_format=fmt)
        for k in range(layout.levels):
            _create_level(root, layout, k)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return Prepared(str(source), str(target), str(temporary), layout.as_dict(), attrs, keepbits, max_error)


def _create_level(root: Any, layout: Layout, k: int) -> Any:
    import numcodecs
    from zarr.codecs import BloscCodec

    shape = layout.array_shape(k)
    chunks = layout.chunks[k][3 - layout.ndim:]
    dtype = np.dtype(layout.dtype)
    if layout.ngff == "0.5":
        shards = layout.shards[k][3 - layout.ndim:] if layout.shards else None
        names = [a["name"] for a in _axes(layout, "t")]
        codec = BloscCodec(cname=layout.compressor, clevel=layout.clevel, shuffle=layout.shuffle,
                           typesize=dtype.itemsize)
        return root.create_array(str(k), shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                                 compressors=codec, fill_value=0, dimension_names=names)
    shuffle = numcodecs.Blosc.SHUFFLE if layout.shuffle == "shuffle" else numcodecs.Blosc.NOSHUFFLE
    codec = numcodecs.Blosc(cname=layout.compressor, clevel=layout.clevel, shuffle=shuffle)
    return root.create_array(str(k), shape=shape, dtype=dtype, chunks=chunks, compressors=codec,
                             fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})


@dataclass
class SlabResult:
    """What one slab task wrote: its sections, bytes, the rounding it applied and its largest error."""

    first: int
    end: int
    keepbits: list[int] = field(default_factory=list)
    largest_error: float = 0.0


def _max_blocks(frame: np.ndarray, f: int) -> np.ndarray:
    """Block maxima of ``f x f`` blocks of a 2D array (a smaller last block holds what it has)."""
    ny, nx = frame.shape
    by, bx = binned_size(ny, f), binned_size(nx, f)
    if f == 1:
        return frame.copy()
    padded = frame
    if by * f != ny or bx * f != nx:  # edge blocks: pad with the smallest value, which never wins
        low = np.iinfo(frame.dtype).min if frame.dtype.kind in "iu" else False
        padded = np.full((by * f, bx * f), low, dtype=frame.dtype)
        padded[:ny, :nx] = frame
    return padded.reshape(by, f, bx, f).max(axis=(1, 3))


def _mean_plane(sums: BlockSums, dtype: np.dtype) -> np.ndarray:
    mean = sums.mean() if dtype == np.float32 else _mean64(sums)
    if dtype.kind in "iu":
        return np.rint(mean).astype(dtype)
    return mean.astype(dtype, copy=False)


def _mean64(sums: BlockSums) -> np.ndarray:
    counts = np.outer(sums.rows * float(sums.planes), sums.cols.astype(np.float64))
    return sums.sums / counts


class _LevelPlanes:
    """Level ``k``'s planes of one slab, accumulated as its sections are read."""

    def __init__(self, layout: Layout, k: int, n_planes: int) -> None:
        self.k, self.layout, self.dtype = k, layout, np.dtype(layout.dtype)
        self.f, self.fz = 2 ** k, layout.z_factor(k)
        _, ny, nx = layout.shapes[k]
        self.planes = np.empty((n_planes, ny, nx), self.dtype)
        self.pending: Any = None
        self.count = 0

    def add(self, i: int, finer: Any, last: bool) -> Any:
        """Section ``i`` of the slab (0 = its first; ``last`` if no more follow) into this level.

        ``finer`` is the section (for level 1) or what :meth:`add` of the
        level above returned for it: its block sums (or maxima) binned 2x,
        from which this level's are binned 2x again, exactly. Returns this
        level's, for the next.
        """
        if self.layout.labels:
            part = _max_blocks(finer, 2)
            self.pending = part.copy() if self.pending is None else np.maximum(self.pending, part)
        else:
            part = frame_sums(finer, 2) if isinstance(finer, np.ndarray) else finer.coarser()
            if self.pending is None:
                self.pending = BlockSums(part.sums.copy(), part.rows, part.cols, part.planes)
            else:
                self.pending.add(part)
        self.count += 1
        if self.count == self.fz or last:
            plane = self.pending if self.layout.labels else _mean_plane(self.pending, self.dtype)
            self.planes[i // self.fz] = plane
            self.pending, self.count = None, 0
        return part


def write_slab(prepared: Prepared, index: int, read_section: Any = None, n_threads: int | None = None,
               verify: bool = True) -> SlabResult:
    """Read slab ``index``'s sections, and write and verify its shards of every level.

    Parameters
    ----------
    prepared
        From :func:`prepare`.
    index
        Which slab (:meth:`Layout.slabs`).
    read_section
        ``read_section(i) -> ndarray``; default: section ``i`` of
        ``prepared.source`` (opened here: a task on another worker).
    n_threads
        Chunks compressed at once.
    verify
        Decode every chunk again in memory and check every file's bytes on disk.

    Raises
    ------
    ZarrOutputError
        A chunk that does not decode to its data, or a file whose bytes on disk differ.
    """
    layout = prepared.the_layout()
    first, end = layout.slabs()[index]
    opened = None
    if read_section is None:
        from .export import source_sections
        from .source import open_image

        opened = open_image(prepared.source)
        read_section = source_sections(opened, n_threads).__getitem__
    out = SlabResult(first, end)
    try:
        dtype = np.dtype(layout.dtype)
        n = end - first
        level0 = np.empty((n, *layout.shapes[0][1:]), dtype)
        coarse = [_LevelPlanes(layout, k, binned_size(n, layout.z_factor(k)))
                  for k in range(1, layout.levels)]
        for i in range(n):
            section = np.asarray(read_section(first + i))
            if section.ndim == 1:
                section = section[None]
            level0[i] = section  # cast to the stored type, exactly (checked in source order by the caller)
            finer: Any = level0[i]
            for level in coarse:
                finer = level.add(i, finer, last=i == n - 1)
            if prepared.keepbits is not None:
                _round(level0[i], prepared, out)
        planes = [level0, *(level.planes for level in coarse)]
        for k, data in enumerate(planes):
            _write_level(Path(prepared.temporary) / str(k), layout, k, first // layout.z_factor(k), data,
                         verify, n_threads)
    finally:
        if opened is not None:
            opened.handle.close()
    return out


def _round(section: np.ndarray, prepared: Prepared, out: SlabResult) -> None:
    from .precision import auto_keepbits, round_mantissa

    exact = section.copy()
    if prepared.keepbits == "auto":
        bits = auto_keepbits(exact, prepared.max_error, out=section)
    else:
        bits = int(prepared.keepbits)
        round_mantissa(exact, bits, out=section)
    out.keepbits.append(int(bits))
    nonzero = exact != 0
    if nonzero.any():
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            error = np.abs(section[nonzero].astype(np.float64) - exact[nonzero]) / np.abs(exact[nonzero])
        finite = error[np.isfinite(error)]
        if finite.size:
            out.largest_error = max(out.largest_error, float(finite.max()))


def _write_level(folder: Path, layout: Layout, k: int, z0: int, data: np.ndarray, verify: bool,
                 n_threads: int | None) -> None:
    """Write ``data`` (planes ``z0``... of level ``k``): whole shards (0.4: chunks), each verified."""
    from .zarr_chunks import ArrayGrid, ChunkMismatchError, ChunkWriter

    cut = 3 - layout.ndim
    grid = ArrayGrid(layout.array_shape(k), layout.chunks[k][cut:],
                     layout.shards[k][cut:] if layout.shards else None)
    writer = ChunkWriter(folder, grid, np.dtype(layout.dtype), layout.compressor, layout.clevel,
                         layout.shuffle, n_threads, verify)
    try:
        if layout.ndim == 2:
            writer.write(data[0], (0, 0))
        else:
            writer.write(data, (z0, 0, 0))
    except ChunkMismatchError as exc:
        raise ZarrOutputError(f"level {k}, planes {z0}-{z0 + len(data) - 1}: {exc}") from exc


def finish(prepared: Prepared, results: list[SlabResult]) -> int:
    """Write the attributes, check every slab was written, sync, and give the output its name.

    Returns
    -------
    int
        The output's size in bytes.

    Raises
    ------
    ZarrOutputError
        A slab missing from ``results``.
    """
    zarr = _require_zarr()
    layout = prepared.the_layout()
    done = sorted((r.first, r.end) for r in results)
    if done != layout.slabs():
        missing = sorted(set(layout.slabs()) - set(done))
        raise ZarrOutputError(f"{prepared.target}: sections {missing[:3]} were not written")
    attrs = dict(prepared.attrs)
    record = attrs.get(ATTRS_KEY)
    if prepared.keepbits is not None and isinstance(record, dict):
        bits = [b for r in sorted(results, key=lambda r: r.first) for b in r.keepbits]
        record = dict(record)
        record["precision"] = {"lossy": True, "keepbits": bits if prepared.keepbits == "auto" else
                               int(prepared.keepbits), "max_error": prepared.max_error if
                               prepared.keepbits == "auto" else None, "levels": "level 0 rounded; "
                               "coarser levels are means of the exact data",
                               "largest_relative_error": max((r.largest_error for r in results), default=0.0)}
        attrs[ATTRS_KEY] = record
    root = zarr.open_group(prepared.temporary, mode="r+")
    root.attrs.update(attrs)
    temporary, target = Path(prepared.temporary), Path(prepared.target)
    size = _sync_tree(temporary)
    _replace_folder(temporary, target)
    return size


def _sync_tree(folder: Path) -> int:
    """Sync every file and folder under ``folder`` to disk; returns the bytes of its files."""
    size = 0
    for here, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(here, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                size += os.fstat(fd).st_size
            finally:
                os.close(fd)
        _sync_folder(here)
    return size


def _sync_folder(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # not every system syncs folders (Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_folder(temporary: Path, target: Path) -> None:
    """Rename ``temporary`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        os.replace(target, old)  # named as a leftover: removed by the next run if this one dies here
    try:
        os.replace(temporary, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    _sync_folder(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(prepared: Prepared) -> None:
    """Remove an unfinished output's temporary folder."""
    shutil.rmtree(prepared.temporary, ignore_errors=True)


def write_all(prepared: Prepared, read_section: Any = None, n_threads: int | None = None,
              verify: bool = True, on_slab: Any = None) -> tuple[int, list[SlabResult]]:
    """Every slab in this process, then :func:`finish`; returns the output's size and the slabs' results.

    The temporary folder is removed if anything fails.
    """
    results = []
    try:
        for j in range(len(prepared.the_layout().slabs())):
            results.append(write_slab(prepared, j, read_section, n_threads, verify))
            if on_slab is not None:
                on_slab(results[-1])
        return finish(prepared, results), results
    except BaseException:
        discard(prepared)
        raise

