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

from .codec.export import UnsupportedImageError, mrc_pixel_size, write_image


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
    return mrc_pixel_size([s * (angstrom(u) or 1.0) for s, u in zip(scale, units, strict=False)], stack,
                          frame_spacing)


def save_layer(path: str, data: Any, attributes: dict, compressed: bool) -> str:
    """Write one image layer's data and attributes to ``path``; returns the path."""
    if attributes.get("rgb"):
        # A TypeError, as for data types MRC cannot store: napari would swallow a ValueError
        # from a writer and tell the user the plugin "is not a valid writer".
        raise UnsupportedImageError(f"{path}: MRC cannot store RGB images")
    if attributes.get("multiscale"):  # a large volume: its full-size level is the data
        data = data[0]
    metadata = dict(attributes.get("metadata") or {})
    mrcz = dict(metadata.pop("mrcz", None) or {})
    labels = list(attributes.get("axis_labels") or [])
    stack = bool(mrcz.get("stack")) or (data.ndim >= 3 and labels[-3:-2] == ["frame"])
    write_image(data, path, {**mrcz, "slices": 0}, pixel_size(attributes, data.ndim, stack,
                                                              mrcz.get("frame_spacing")),
                stack=stack, compressed=compressed, extra_meta=_json_safe(metadata))
    return path
