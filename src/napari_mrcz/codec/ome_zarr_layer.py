"""An array (a napari layer's data, in memory or lazy) saved as an OME-Zarr image, section by section.

The napari writers ``write_ome_zarr`` and ``write_labels_ome_zarr`` end
here; no napari or Qt imports. The array is described as an
:class:`~.source.ImageSource` (its shape and type, the scale and units of its
axes in Å, and ``mrcz``: what its source file said, the layer's
``metadata['mrcz']``), laid out by :func:`~.ome_zarr.plan_layout`, given the
attributes :func:`~.convert.zarr_attrs` writes for a file (NGFF
``multiscales``, and under :data:`~.ome_zarr.ATTRS_KEY` the MRC header,
voltage, C3, gain, the JSON metadata ...) and written by
:func:`~.ome_zarr.write_all`: a hidden temporary folder beside the target,
every chunk decoded again and every file checked on disk, then renamed to its name. Sections are
read one at a time (``data[i]``; a :class:`~.lazy.LazyStack`'s frames
through its cache without being kept there), so a lazy layer is never read
whole: what is in memory at once is one slab of the layout (at most about
256 MB of a movie's frames, 128 sections of a volume).

A segmentation (``labels=True``) is stored in the smallest integer type that
holds every label (one pass over the data first), its levels by block
maximum, never rounded, and marked ``image-label``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .export import UnsupportedImageError
from .lazy import LazyStack
from .narrowing import value_range

#: Integer types a segmentation may be stored as in OME-Zarr, smallest first, with the values each holds.
#: Unsigned first: label ids are counts from 0, and uint8 is what viewers and the portal use.
LABEL_TYPES = tuple((name, int(np.iinfo(name).min), int(np.iinfo(name).max))
                    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"))


def labels_zarr_dtype(data: Any, path: str | os.PathLike = "") -> np.dtype:
    """The smallest integer type that holds every label of ``data`` exactly: one pass, a section at a time.

    Zarr holds any integer type, so unlike MRC
    (:func:`~.narrowing.labels_dtype`, whose modes have no uint8 and nothing
    wider than 32 bits) labels 0 to 255 are uint8 and ids beyond 2**32 are kept.

    Parameters
    ----------
    data
        The labels: an integer (or bool, or whole-number float) array-like,
        read along its first axis one section at a time.
    path
        The output, for the message.

    Returns
    -------
    numpy.dtype
        ``uint8``, ``int8``, ``uint16`` ... ``int64``.

    Raises
    ------
    UnsupportedImageError
        Values that are not whole numbers (or NaN), or beyond the 64-bit types.
    """
    read = _reader(data)
    lo, hi, whole = value_range(_sections(data), read)
    if not whole:
        raise UnsupportedImageError(f"{path}: labels are whole numbers; this layer holds other values "
                                    "(NaN, fractions)")
    lo, hi = (0, 0) if lo > hi else (int(lo), int(hi))  # no values at all
    for name, low, high in LABEL_TYPES:
        if low <= lo and hi <= high:
            return np.dtype(name)
    raise UnsupportedImageError(f"{path}: labels {lo} to {hi} fit no 64-bit integer type")


def _sections(data: Any) -> int:
    return int(data.shape[0]) if data.ndim == 3 else 1


def _reader(data: Any) -> Callable[[int], np.ndarray]:
    """``read(i)``: section ``i`` of ``data`` (a 2D image is its only section), as an ndarray.

    A :class:`~.lazy.LazyStack` as it was opened is read through its cache:
    a frame the viewer holds is taken from there, any other decoded and not
    kept (a save of a 20 GB movie does not push the shown frames out, nor fill
    the shared frame budget, nor start prefetching).
    """
    if data.ndim == 2:
        return lambda i: np.asarray(data)
    if isinstance(data, LazyStack) and data._transform is None and data._box is None:
        return lambda i: np.asarray(data.cache.read_through(data._source_index(int(i))))
    return lambda i: np.asarray(data[int(i)])


def save_ome_zarr(data: Any, path: str | os.PathLike, mrcz: dict | None, *, scale: list[float],
                  units: list[str], axis_labels: list[str], stack: bool, labels: bool = False,
                  rgb: bool = False, name: str | None = None, ngff: str = "0.5",
                  compressor: str | None = None, clevel: int | None = None,
                  keepbits: int | str | None = None, max_error: float = 0.01, levels: int | None = None,
                  extra: dict | None = None, n_threads: int | None = None, verify: bool = True) -> str:
    """Write ``data`` as an OME-Zarr image (or segmentation) at ``path``, verified, then renamed into place.

    Parameters
    ----------
    data
        A 2D or 3D array-like (numpy, dask, a :class:`~.lazy.LazyStack` ...),
        read one section (along the first axis) at a time; level 0 is its
        values exactly, in its own type (little-endian), float64 and uint8
        included.
    path
        The output folder (``name.ome.zarr`` or ``name.zarr``). A folder
        already there is replaced once the new one is complete.
    mrcz
        What the source file said (a napari layer's ``metadata['mrcz']``:
        ``header``, ``voltage``, ``C3``, ``gain``, ``meta``, ``extended``,
        ``frame_spacing`` ...), kept in the attributes; ``{}`` for data
        made in napari.
    scale, units, axis_labels
        One per axis: lengths in Å with units ``'Å'``, pixels ``''`` (counted
        as Å, as in MRC), other units as they are. The NGFF ``scale`` is the
        (z, y, x) pixel size in Å (:func:`~.convert.pixel_size`); a first axis
        in another unit (an energy, a time) is written as a stack's frames
        are, y and x in another unit get pixel size 0 (as in MRC). All of
        them, units included, are kept in ``napari_mrcz.axes``.
    stack
        The first axis is frames (a movie, a tilt series): binned in y and x
        only, its NGFF axis ``t``; else a 3D array is a volume.
    labels
        A segmentation: stored in the smallest integer type holding every
        label (:func:`labels_zarr_dtype`), coarser levels by block maximum,
        never rounded, NGFF ``image-label``.
    rgb
        The data is RGB(A): refused.
    name
        The image's name in NGFF ``multiscales`` (default: the folder's
        name without ``.ome.zarr``).
    ngff
        ``'0.5'`` (Zarr v3, sharded) or ``'0.4'`` (the CryoET Data Portal's Zarr v2 layout).
    compressor, clevel
        The blosc codec of the chunks (default: zstd 3 for 0.5, lz4 5 for
        0.4, :func:`~.ome_zarr.plan_layout`'s).
    keepbits, max_error
        Round float32/float16 mantissas of level 0 (lossy, recorded), as
        :func:`~napari_mrcz.codec.mrc.writeMRC` does; ignored for integer data and labels.
    levels
        How many levels (default: down to 2048 pixels on the largest side; 3 for 0.4).
    extra
        More JSON metadata (merged under ``mrcz['meta']``, kept under ``napari_mrcz.meta``).
    n_threads
        Chunks compressed at once (default: all cores).
    verify
        Decode every chunk again and check every file's bytes on disk.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    UnsupportedImageError
        (a ``TypeError``, whose message napari shows) RGB, complex or
        non-numeric data, not 2D or 3D, labels that are no whole numbers, a
        ``keepbits`` for a type it cannot round (float64).
    ModuleNotFoundError
        zarr-python 3 is not installed.
    ZarrOutputError
        A shard that does not read back as written.
    """
    from . import ome_zarr as omz
    from .convert import prepare_zarr
    from .source import ImageSource

    target = Path(path)
    shown = os.fspath(path)
    if rgb:
        raise UnsupportedImageError(f"{shown}: RGB images are not written to OME-Zarr by napari-mrcz")
    if data.ndim not in (2, 3):
        raise UnsupportedImageError(f"{shown}: OME-Zarr output takes 2D and 3D images, not {data.ndim}D")
    given = np.dtype(data.dtype)
    if given.kind == "c":
        raise UnsupportedImageError(f"{shown}: OME-Zarr output takes real numbers, not {given.name} "
                                    "(save complex data as MRCZ, or its amplitude or phase layer)")
    if ngff not in omz.NGFF_VERSIONS:
        raise UnsupportedImageError(f"{shown}: NGFF {ngff!r} is not written; choose one of "
                                    f"{', '.join(omz.NGFF_VERSIONS)}")
    omz._require_zarr()  # before a pass over the labels
    dtype = labels_zarr_dtype(data, shown) if labels else None
    if name is None:
        name = target.name.removesuffix(".zarr").removesuffix(".ome")
    # A first axis that is no length (an energy, a time) is binned as frames are, not as a volume's z.
    stack = data.ndim == 3 and (bool(stack) or str(units[0]) not in ("Å", ""))
    mrcz = {**dict(mrcz or {}), "stack": stack, "slices": 0}
    # A layer is no file: path "" (nothing on disk) records no provenance and no stamp of a source
    # (the stamp ties a batch output to its file; a layer may have been edited since it was read).
    described = ImageSource(path="", shape=tuple(int(s) for s in data.shape), dtype=given,
                            scale=[float(s) for s in scale], units=[str(u) for u in units],
                            axis_labels=[str(a) for a in axis_labels], mrcz=mrcz, slices=0)
    omz.remove_leftovers(target)  # what an interrupted save of this folder left
    try:
        prepared = prepare_zarr(described, target, compressor=compressor, clevel=clevel, keepbits=keepbits,
                                max_error=max_error, ngff=ngff, levels=levels, labels=labels, dtype=dtype,
                                name=name, extra=extra)
    except ValueError as exc:  # as a TypeError, whose message napari shows
        raise UnsupportedImageError(str(exc)) from exc
    omz.write_all(prepared, _reader(data), n_threads, verify)
    return shown
