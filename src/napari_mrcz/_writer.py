"""napari writers: an image layer to compressed MRCZ or to plain MRC.

Everything the file needs comes from the layer: ``metadata['mrcz']`` (what the
reader found and the dock widget edits: compressor, clevel, units, voltage, C3,
gain, JSON metadata) and ``scale`` (the pixel size). Lazy layers are streamed
frame by frame; the codec writes a temporary file and renames it, so saving
over the file a layer is reading from is safe.
"""

from __future__ import annotations

import json
from typing import Any

from .codec import writeMRC
from .codec.source import codec_units, length_unit

DEFAULT_COMPRESSOR = "zstd"
DEFAULT_CLEVEL = 1


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


def save_layer(path: str, data: Any, attributes: dict, compressed: bool) -> str:
    """Write one image layer's data and attributes to ``path``; returns the path."""
    if attributes.get("rgb"):
        raise ValueError(f"{path}: MRC cannot store RGB images")
    metadata = dict(attributes.get("metadata") or {})
    mrcz = dict(metadata.pop("mrcz", None) or {})
    compressor = (mrcz.get("compressor") or DEFAULT_COMPRESSOR) if compressed else None
    unit = length_unit(str(mrcz.get("pixelunits") or "Å")) or "Å"
    scale = [float(s) for s in attributes.get("scale") or [1.0] * data.ndim]
    pixelsize = scale[-3:] if len(scale) >= 3 else [scale[-2], *scale[-2:]]
    meta = {**_json_safe(metadata), **dict(mrcz.get("meta") or {})}
    frames = data if data.ndim <= 3 else [data[i] for i in range(data.shape[0])]
    writeMRC(frames, path, meta=meta or None, pixelsize=pixelsize, pixelunits=codec_units(unit),
             voltage=float(mrcz.get("voltage") or 0.0), C3=float(mrcz.get("C3") or 0.0),
             gain=float(mrcz.get("gain") or 1.0), compressor=compressor,
             clevel=int(mrcz.get("clevel") or DEFAULT_CLEVEL))
    return path
