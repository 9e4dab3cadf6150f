"""napari writers: an image or labels layer to compressed MRCZ or to plain MRC.

Everything the file needs comes from the layer: ``scale`` and ``units`` (the
pixel size of each axis, converted to Å), and ``metadata['mrcz']`` (what the
reader found and the dock widget edits: voltage, C3, gain, the header fields
to write back, JSON metadata, and under ``save`` the compressor and clevel to
save with and the precision, ``keepbits`` and ``max_error``: lossless unless set).
Fields the source has are written back as they were. Voltage, C3 and gain a
source lacks (``None``) are written as 0, MRC's "not set". Lazy layers are
streamed frame by frame; the codec writes a temporary file and renames it, so
saving over the file a layer is reading from is safe.

A labels layer (a segmentation) is stored in the smallest integer mode that
holds every label (:func:`~napari_mrcz.codec.narrowing.labels_dtype`, one
pass over the data before writing), and marked as labels: a label
``napari-mrcz labels`` and, in MRCZ, ``napari_mrcz_labels: true`` in the
JSON metadata. The reader opens such files as labels layers again.

``write_ome_zarr`` and ``write_labels_ome_zarr`` save the same layers as
OME-Zarr folders (``.ome.zarr``, ``.zarr``; :func:`save_layer_ome_zarr`), with
the same scale, units, metadata and precision, frame by frame for lazy layers.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
from psygnal import SignalInstance

from .codec.export import (
    AXES_KEY,
    LABELS_KEY,
    LABELS_LABEL,
    LABELS_STAMP,
    UnsupportedImageError,
    json_axes,
    mrc_pixel_size,
    reads_the_source,
    stored_dtype,
    write_image,
)
from .codec.narrowing import LabelValueError, labels_dtype
from .codec.precision import PRECISION_KEY
from .codec.remote import is_url

#: Emitted as ``(path, mrcz)`` after each save, in the saving thread, with the saved layer's
#: ``metadata['mrcz']`` (the dock widget refreshes what it shows of the file).
layer_saved = SignalInstance((str, object), name="layer_saved")
#: The RMS rounding error *Precision: auto* allows, as a fraction of each section's noise level.
DEFAULT_MAX_ERROR = 0.01


def write_mrcz(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer as compressed MRCZ (compressor and clevel from its metadata)."""
    return [save_layer(path, data, attributes, compressed=True)]


def write_mrc(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer as plain MRC2014."""
    return [save_layer(path, data, attributes, compressed=False)]


def write_labels_mrcz(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as compressed MRCZ, in the smallest integer mode that holds every label.

    Parameters
    ----------
    path
        The file to write.
    data
        The layer's data (integer labels; read a section at a time).
    attributes
        The layer's state (``scale``, ``units``, ``metadata`` ...), as napari gives it.

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    UnsupportedImageError
        A label no MRC mode holds (a ``TypeError``: napari takes a writer's
        ``ValueError`` for "not a valid writer" and drops its message).
    """
    return [_save_labels(path, data, attributes, compressed=True)]


def write_labels_mrc(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as plain MRC2014, in the smallest standard mode that holds every label.

    As :func:`write_labels_mrcz`, uncompressed (a label no plain MRC2014
    mode holds is refused).
    """
    return [_save_labels(path, data, attributes, compressed=False)]


def _save_labels(path: str, data: Any, attributes: dict, compressed: bool) -> str:
    try:
        return save_layer(path, data, attributes, compressed=compressed, layer_type="labels")
    except LabelValueError as exc:  # as a TypeError, so that napari shows the message
        raise UnsupportedImageError(str(exc)) from exc


def _json_safe(metadata: dict) -> dict:
    out = {}
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def angstrom(unit: Any) -> float | None:
    """Å per ``unit`` (a pint unit or its name), or ``None`` if it is not a length (pixels, eV ...)."""
    from napari.utils._units import get_unit_registry

    registry = get_unit_registry()
    try:
        quantity = registry.Quantity(1.0, str(unit) if unit is not None else "pixel")
        if quantity.dimensionality != registry.angstrom.dimensionality:
            return None
        return float(quantity.to(registry.angstrom).magnitude)
    except Exception:  # noqa: BLE001 - pint raises many kinds for names it does not know
        return None


def _axes(attributes: dict, ndim: int) -> tuple[list[float], list[str]]:
    """Each axis's scale and unit as the codec writes them: lengths in Å (``'Å'``), pixels (``''``), others.

    An axis in another unit (eV, s) keeps its scale and the unit's short name.
    """
    from napari.utils._units import get_unit_registry

    registry = get_unit_registry()
    scales, units = [], []
    for s, u in zip([float(s) for s in attributes.get("scale") or [1.0] * ndim],
                    list(attributes.get("units") or [None] * ndim), strict=False):
        factor = angstrom(u)
        if factor is not None:
            scales.append(s * factor)
            units.append("Å")
        elif u is None or str(u) in ("", "pixel"):
            scales.append(s)
            units.append("")
        else:
            scales.append(s)
            units.append(f"{registry.Unit(str(u)):~}")
    return scales, units


def pixel_size(attributes: dict, ndim: int, stack: bool, frame_spacing: float | None) -> list[float]:
    """(z, y, x) pixel size in Å from the layer's scale and units.

    Axes in a length unit are converted; axes without one (pixels) count as Å,
    as MRC has no other unit. An axis in a unit that is not a length (an
    energy in eV) is left unset (0). A stack's frame axis is not a length:
    its z spacing is the one the source file stated, else the y pixel size.
    """
    scales, units = _axes(attributes, ndim)
    return mrc_pixel_size([s if u in ("Å", "") else None for s, u in zip(scales, units, strict=False)], stack,
                          frame_spacing)


def _narrowing_notice(path: str, data: Any, attributes: dict) -> None:
    """Tell the user, in napari, when the file keeps fewer digits than the layer (float64 as float32).

    Every time such a layer is saved (napari's notification, not a warning
    Python or napari would show once).
    """
    given = np.dtype(data.dtype)
    try:
        stored = stored_dtype(given)
    except TypeError:  # a type MRC cannot store: write_image says so
        return
    if given.kind in "fc" and stored.itemsize < given.itemsize:
        from napari.utils.notifications import show_warning

        name = attributes.get("name") or os.path.basename(path)
        show_warning(f"{os.path.basename(path)}: {name} is {given.name}, which MRC cannot store: saved as "
                     f"{stored.name} (about 7 significant digits)")


def _saved_over_source(path: str, attributes: dict) -> None:
    """After a save over the file a layer was read from, its ``metadata['mrcz']`` says what that file is now.

    Format, compressor, type, shape, size on disk and the record of a rounding
    (``napari_mrcz_precision``) are the new file's (the layer's own, in place,
    shared by the layers read from the same file).
    """
    live = (attributes.get("metadata") or {}).get("mrcz")
    source = live.get("source") if isinstance(live, dict) else None
    if not source or is_url(source):  # a save never writes over a URL
        return
    try:
        same = os.path.samefile(path, source)
    except OSError:
        return
    if same:
        from .codec.stack import MRCStack

        with MRCStack(path) as stack:
            h = stack.header
            live.update(format="MRCZ" if h.is_compressed else "MRC", compressor=h.compressor,
                        dtype=h.dtype.name, shape=list(h.shape), size_on_disk=stack.size_on_disk)
            record = (h.json_meta or {}).get(PRECISION_KEY)
            if record is not None:  # rounded now: the layer shows (and saves back) what the file is
                if not isinstance(live.get("meta"), dict):
                    live["meta"] = {}
                live["meta"][PRECISION_KEY] = record


def save_precision(mrcz: dict, dtype: Any) -> tuple[int | str | None, float]:
    """The rounding a save applies: ``keepbits`` and ``max_error`` from ``mrcz['save']``.

    Nothing is rounded unless ``keepbits`` was set (the dock widget's
    *Precision*, or a script); integer layers are stored exactly, whatever it says.

    Parameters
    ----------
    mrcz
        The layer's ``metadata['mrcz']``.
    dtype
        The layer's data type.

    Returns
    -------
    tuple
        ``keepbits`` (``None``: lossless; a count of mantissa bits; ``'auto'``)
        and ``max_error`` (for ``'auto'``, a fraction of the noise level).
    """
    save = dict(mrcz.get("save") or {})
    keepbits = save.get("keepbits")
    max_error = save.get("max_error")
    max_error = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
    if keepbits is None or np.dtype(dtype).kind not in "fc":
        return None, max_error
    return keepbits, max_error


def save_layer(path: str, data: Any, attributes: dict, compressed: bool, layer_type: str = "image") -> str:
    """Write one image or labels layer's data and attributes to ``path``.

    Parameters
    ----------
    path
        The file to write (atomically).
    data
        The layer's data (a multiscale layer's levels: the first is written),
        read one section at a time.
    attributes
        The layer's state: ``scale``, ``units``, ``axis_labels``,
        ``metadata`` (its ``'mrcz'`` entry: what the source said and the save
        settings), ``multiscale``, ``rgb``.
    compressed
        MRCZ (compressor and clevel from ``metadata['mrcz']['save']``) or plain MRC2014.
    layer_type
        ``'image'`` or ``'labels'``: labels are stored in the smallest integer
        mode that holds them all (a first pass over the data), never rounded,
        and marked as labels for the reader.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    UnsupportedImageError
        What MRC cannot hold (RGB, more than three dimensions, types with no mode).
    LabelValueError
        (a ``ValueError``) a label no MRC mode holds; the message names the file and the label.
    """
    labels_layer = layer_type == "labels"
    if attributes.get("rgb"):
        # A TypeError, as for data types MRC cannot store: napari would swallow a ValueError
        # from a writer and tell the user the plugin "is not a valid writer".
        raise UnsupportedImageError(f"{path}: MRC cannot store RGB images")
    if attributes.get("multiscale"):  # a large volume: its full-size level is the data
        data = data[0]
    if compressed and np.dtype(data.dtype) == np.float16:
        warnings.warn(f"{path}: float16 MRCZ (mode 12) is written, which python-mrcz 0.6.0 cannot read "
                      "(mrcfile, IMOD and napari-mrcz can); convert the layer to float32 for python-mrcz",
                      UserWarning, stacklevel=2)
    if not labels_layer:
        _narrowing_notice(path, data, attributes)
    metadata = dict(attributes.get("metadata") or {})
    mrcz = dict(metadata.pop("mrcz", None) or {})
    if not labels_layer and LABELS_KEY in (mrcz.get("meta") or {}):  # an image made of a labels file
        mrcz["meta"] = {k: v for k, v in mrcz["meta"].items() if k != LABELS_KEY}
    labels = list(attributes.get("axis_labels") or [])
    stack = bool(mrcz.get("stack")) or (data.ndim >= 3 and labels[-3:-2] == ["frame"])
    extra = _json_safe(metadata)
    axes = json_axes(labels or [f"axis {k}" for k in range(data.ndim)], *_axes(attributes, data.ndim))
    if axes is not None:  # energy, time ...: MRC's header has no such axes; the JSON keeps them
        extra[AXES_KEY] = axes
    keepbits, max_error = save_precision(mrcz, data.dtype)
    dtype = None
    if labels_layer:  # the smallest mode, exact; the label (and MRCZ's JSON) say "labels"
        dtype, keepbits = labels_dtype(data, path, compressed), None
        if compressed:
            extra[LABELS_KEY] = True
    write_image(data, path, {**mrcz, "slices": 0}, pixel_size(attributes, data.ndim, stack,
                                                              mrcz.get("frame_spacing")),
                stack=stack, compressed=compressed, extra_meta=extra, dtype=dtype,
                stamp=LABELS_STAMP if labels_layer else None,
                unchanged=keepbits is None and not labels_layer and reads_the_source(data, mrcz),
                keepbits=keepbits, max_error=max_error)
    _saved_over_source(path, attributes)
    layer_saved.emit(path, (attributes.get("metadata") or {}).get("mrcz"))
    return path


#: The key of ``metadata['mrcz']['save']`` that holds what an OME-Zarr save uses (see
#: :func:`ome_zarr_settings`).
OME_ZARR_SAVE_KEY = "ome_zarr"


def write_ome_zarr(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer as an OME-Zarr folder (NGFF 0.5, Zarr v3 sharded, unless its metadata says 0.4).

    Parameters
    ----------
    path
        The folder to write (``.ome.zarr`` or ``.zarr``), atomically.
    data
        The layer's data (a lazy layer is read one frame at a time).
    attributes
        The layer's state (``scale``, ``units``, ``metadata`` ...), as napari gives it.

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    UnsupportedImageError
        RGB, complex, not 2D or 3D (a ``TypeError``, whose message napari shows).
    """
    return [save_layer_ome_zarr(path, data, attributes)]


def write_labels_ome_zarr(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a labels layer as an OME-Zarr segmentation, in the smallest integer type that holds every label.

    Its coarser levels are block maxima (a label present in a block stays,
    no id is blended into one that does not exist), and it is marked as
    NGFF ``image-label``: napari-ome-zarr opens it as a labels layer.

    Parameters
    ----------
    path
        The folder to write (``.ome.zarr`` or ``.zarr``), atomically.
    data
        The layer's data (integer labels; read a section at a time).
    attributes
        The layer's state, as napari gives it.

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    UnsupportedImageError
        Labels beyond the 64-bit integers, or that are no whole numbers.
    """
    return [save_layer_ome_zarr(path, data, attributes, layer_type="labels")]


def ome_zarr_settings(mrcz: dict) -> dict[str, Any]:
    """What an OME-Zarr save of a layer uses: ``ngff``, ``compressor``, ``clevel``, ``levels``.

    From ``mrcz['save']['ome_zarr']`` (a script sets it; each key optional),
    not from ``mrcz['save']``'s ``compressor`` and ``clevel``: those are the
    MRCZ file's (every file opens with clevel 1, MRCZ's fast default, and the
    source's own compressor), and would say nothing of what the user wants
    for Zarr chunks. So by default an OME-Zarr is written as
    ``napari-mrcz compress --format ome-zarr`` writes it: NGFF 0.5 with zstd
    level 3 (blosc's bit shuffle), or for ``ngff='0.4'`` the CryoET Data
    Portal's lz4 level 5; levels down to 2048 pixels on the largest side (3
    for 0.4). The precision (``keepbits``, ``max_error``) is the layer's, as
    for MRCZ (:func:`save_precision`).

    Parameters
    ----------
    mrcz
        The layer's ``metadata['mrcz']``.

    Returns
    -------
    dict
        ``ngff`` (``'0.5'`` by default) and ``compressor``, ``clevel``,
        ``levels`` (``None``: the layout's default).
    """
    chosen = (mrcz.get("save") or {}).get(OME_ZARR_SAVE_KEY) or {}
    clevel, levels = chosen.get("clevel"), chosen.get("levels")
    return {"ngff": str(chosen.get("ngff") or "0.5"), "compressor": chosen.get("compressor") or None,
            "clevel": None if clevel is None else int(clevel),
            "levels": None if levels is None else int(levels)}


def save_layer_ome_zarr(path: str, data: Any, attributes: dict, layer_type: str = "image") -> str:
    """Write one image or labels layer as an OME-Zarr folder at ``path``.

    As :func:`save_layer` does for MRC: the scale and units of each axis
    (lengths in Å), ``metadata['mrcz']`` (the header fields, voltage, C3,
    gain, JSON metadata, kept under the ``napari_mrcz`` attributes) and the
    precision of ``metadata['mrcz']['save']``; the chunks' codec, the NGFF
    version and the levels from :func:`ome_zarr_settings`. Level 0 holds
    the layer's values exactly, in its own type (float64, uint8 ... are kept:
    Zarr has every type); labels in the smallest integer type that holds them.

    Parameters
    ----------
    path
        The folder to write (``.ome.zarr`` or ``.zarr``). It is written
        beside, under a hidden name, verified, then renamed: a folder
        already there (even the one the layer reads) is replaced only then.
    data
        The layer's data (a multiscale layer's levels: the first is written),
        read one section at a time.
    attributes
        The layer's state: ``scale``, ``units``, ``axis_labels``, ``name``,
        ``metadata``, ``multiscale``, ``rgb``.
    layer_type
        ``'image'`` or ``'labels'``.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    UnsupportedImageError
        (a ``TypeError``, whose message napari shows) RGB, complex, not 2D or
        3D, labels no integer type holds, a precision float64 cannot be rounded to.
    """
    from .codec.ome_zarr_layer import save_ome_zarr

    labels_layer = layer_type == "labels"
    if attributes.get("multiscale"):  # a large layer: its full-size level is the data
        data = data[0]
    metadata = dict(attributes.get("metadata") or {})
    mrcz = dict(metadata.pop("mrcz", None) or {})
    meta = dict(mrcz.get("meta") or {})
    meta.pop(LABELS_KEY, None)
    header = dict(mrcz.get("header") or {})
    if isinstance(header.get("labels"), list):  # our "labels" label: the JSON says it, for labels only
        header["labels"] = [t for t in header["labels"] if str(t).strip() != LABELS_LABEL]
    mrcz.update(meta=meta, header=header)
    axis_labels = list(attributes.get("axis_labels") or [f"axis {k}" for k in range(data.ndim)])
    stack = bool(mrcz.get("stack")) or (data.ndim >= 3 and axis_labels[-3:-2] == ["frame"])
    scales, units = _axes(attributes, data.ndim)
    extra = _json_safe(metadata)
    if labels_layer:  # as in MRCZ: a decompress of the folder gives a labels file again
        extra[LABELS_KEY] = True
    keepbits, max_error = save_precision(mrcz, data.dtype)
    settings = ome_zarr_settings(mrcz)
    save_ome_zarr(data, path, mrcz, scale=scales, units=units, axis_labels=axis_labels, stack=stack,
                  labels=labels_layer, rgb=bool(attributes.get("rgb")), name=attributes.get("name") or None,
                  keepbits=None if labels_layer else keepbits, max_error=max_error, extra=extra, **settings)
    layer_saved.emit(path, (attributes.get("metadata") or {}).get("mrcz"))
    return path
