"""napari writers: an image layer to compressed MRCZ or to plain MRC.

Everything the file needs comes from the layer: ``scale`` and ``units`` (the
pixel size of each axis, converted to Å), and ``metadata['mrcz']`` (what the
reader found and the dock widget edits: voltage, C3, gain, the header fields
to write back, JSON metadata, and the compressor and clevel to save with).
Fields the source has are written back as they were. Voltage, C3 and gain a
source lacks (``None``) are written as 0, MRC's "not set". Lazy layers are
streamed frame by frame; the codec writes a temporary file and renames it, so
saving over the file a layer is reading from is safe.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .codec.mrc import write_with_header
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR

#: Header fields of the source file written back unchanged.
KEPT_FIELDS = ("origin", "nxstart", "nystart", "nzstart", "labels", "ispg")


def write_mrcz(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer as compressed MRCZ (compressor and clevel from its metadata)."""
    return [save_layer(path, data, attributes, compressed=True)]


def write_mrc(path: str, data: Any, attributes: dict) -> list[str]:
    """Save an image layer as plain MRC2014."""
    return [save_layer(path, data, attributes, compressed=False)]


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


def pixel_size(attributes: dict, ndim: int, stack: bool, frame_spacing: float | None) -> list[float]:
    """(z, y, x) pixel size in Å from the layer's scale and units.

    Axes in a length unit are converted; axes without one (pixels) count as Å,
    as MRC has no other unit. A stack's frame axis is not a length: its z
    spacing is the one the source file stated, else the y pixel size.
    """
    scale = [float(s) for s in attributes.get("scale") or [1.0] * ndim]
    units = list(attributes.get("units") or [None] * ndim)
    size = [s * (angstrom(u) or 1.0) for s, u in zip(scale, units, strict=False)]
    y, x = size[-2], size[-1]
    if ndim < 3:
        z = frame_spacing or y
    elif stack:
        z = frame_spacing if frame_spacing else y
    else:
        z = size[-3]
    return [z, y, x]


class _Frame:
    """One frame of a layer, read only when the writer reaches it (memory stays one frame)."""

    def __init__(self, data: Any, i: int) -> None:
        self.data, self.i = data, i
        self.shape, self.dtype, self.ndim = tuple(data.shape[1:]), np.dtype(data.dtype), data.ndim - 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.data[self.i], dtype=dtype)


def save_layer(path: str, data: Any, attributes: dict, compressed: bool) -> str:
    """Write one image layer's data and attributes to ``path``; returns the path."""
    if attributes.get("rgb"):
        # TypeError, as for data types MRC cannot store: napari would swallow a ValueError
        # from a writer and tell the user the plugin "is not a valid writer".
        raise TypeError(f"{path}: MRC cannot store RGB images")
    metadata = dict(attributes.get("metadata") or {})
    mrcz = dict(metadata.pop("mrcz", None) or {})
    labels = list(attributes.get("axis_labels") or [])
    stack = bool(mrcz.get("stack")) or (data.ndim >= 3 and labels[-3:-2] == ["frame"])
    save = dict(mrcz.get("save") or {})
    compressor = (save.get("compressor") or DEFAULT_SAVE_COMPRESSOR) if compressed else None
    clevel = int(save.get("clevel") or DEFAULT_SAVE_CLEVEL)
    meta = {**_json_safe(metadata), **dict(mrcz.get("meta") or {})}
    header = dict(mrcz.get("header") or {})
    fields = {k: header[k] for k in KEPT_FIELDS if k in header}
    if stack or data.ndim > 3:
        frames: Any = [_Frame(data, i) for i in range(data.shape[0])]
    else:
        frames = data
    voltage, c3, gain = (mrcz.get(k) for k in ("voltage", "C3", "gain"))
    write_with_header(frames, path, fields, meta=meta or None,
                      pixelsize=pixel_size(attributes, data.ndim, stack, mrcz.get("frame_spacing")),
                      voltage=0.0 if voltage is None else float(voltage),
                      C3=0.0 if c3 is None else float(c3), gain=0.0 if gain is None else float(gain),
                      compressor=compressor, clevel=clevel)
    return path
