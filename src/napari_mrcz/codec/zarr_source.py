"""An OME-Zarr folder as an :class:`~.source.ImageSource`: level 0, frame by frame, and what it says.

So ``compress`` and ``decompress`` (and ``info``) take ``.zarr`` sources:
the OME-Zarr outputs of :mod:`.ome_zarr` give back the MRC header, the
extended header, voltage, C3, gain and JSON metadata their source had (kept
under :data:`~.ome_zarr.ATTRS_KEY`); any other NGFF image gives its level 0
with the scale of its axes (in Å where they are lengths). zarr is imported
only here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .lazy import FrameCache
from .source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, ImageSource

#: Å per NGFF length unit.
_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1.0e4, "picometer": 0.01,
             "millimeter": 1.0e7, "meter": 1.0e10}


#: The largest frame (bytes) read at once: a shape no real image has is refused, not allocated.
MAX_FRAME_BYTES = 16 << 30


class ZarrSourceError(ValueError):
    """A folder that is not an OME-Zarr image napari-mrcz can read; the message names it."""


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a Zarr group (v2 or v3)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name))
                                       for name in ("zarr.json", ".zgroup", ".zattrs"))


class _Handle:
    """What ImageSource.handle is for a zarr: something to close."""

    def __init__(self, array: Any, path: str) -> None:
        self.array, self.path = array, path

    def read_section(self, i: int) -> np.ndarray:
        """Section ``i`` of level 0, read from the store (not kept).

        Raises
        ------
        ZarrSourceError
            A chunk that cannot be read or decoded (the message names the folder and the section).
        """
        try:
            return np.asarray(self.array[i])
        except (ValueError, OSError, RuntimeError, TypeError, KeyError) as exc:
            raise ZarrSourceError(f"{self.path}: section {i} cannot be read: {exc}") from exc

    def close(self) -> None:
        self.array = None


def _multiscales(attrs: dict) -> dict:
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    found = ome.get("multiscales")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise ValueError("no NGFF multiscales in its attributes")
    return found[0]


def open_zarr_image(path: str | os.PathLike) -> ImageSource:
    """Open an OME-Zarr image's level 0 for reading, frame by frame.

    Raises
    ------
    ZarrSourceError
        Not a Zarr group, no NGFF ``multiscales``, or level 0 not 2D or 3D.
    ModuleNotFoundError
        zarr-python 3 is not installed.
    """
    from .ome_zarr import ATTRS_KEY, _require_zarr

    path = os.fspath(path)
    zarr = _require_zarr()
    try:
        root = zarr.open_group(path, mode="r")
        attrs = dict(root.attrs)
        entry = _multiscales(attrs)
        first = entry["datasets"][0]
        array = root[first["path"]]
        axes = entry.get("axes") or []
    except KeyError as exc:
        raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads (no array {exc})") from exc
    except (ValueError, TypeError, OSError, AttributeError, IndexError) as exc:
        raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads ({exc})") from exc
    if array.ndim not in (2, 3):
        raise ZarrSourceError(f"{path}: level 0 is {array.ndim}D; napari-mrcz reads 2D and 3D images")
    frame_bytes = int(np.prod(array.shape[-2:], dtype=np.float64)) * array.dtype.itemsize
    if frame_bytes > MAX_FRAME_BYTES:
        raise ZarrSourceError(f"{path}: a frame of {array.shape[-2]} x {array.shape[-1]} {array.dtype} "
                              f"({frame_bytes / 2**30:.0f} GiB) is more than napari-mrcz reads at once")
    record = attrs.get(ATTRS_KEY) if isinstance(attrs.get(ATTRS_KEY), dict) else {}
    scale = [1.0] * array.ndim
    for t in first.get("coordinateTransformations") or []:
        if isinstance(t, dict) and t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]][-array.ndim:]
    labels, units = [], []
    for k, axis in enumerate(axes[-array.ndim:] if axes else [{}] * array.ndim):
        name = axis.get("name", "zyx"[k + 3 - array.ndim]) if isinstance(axis, dict) else str(axis)
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if unit in _ANGSTROM:
            scale[k], units_k = scale[k] * _ANGSTROM[unit], "Å"
        else:
            units_k = "" if not unit else str(unit)
        labels.append("frame" if record.get("stack") and k == 0 and array.ndim == 3 else str(name))
        units.append("" if labels[-1] == "frame" else units_k)
    if record.get("axes") and len(record["axes"]) == array.ndim:  # as the source file described them
        labels = [str(a.get("label", n)) for a, n in zip(record["axes"], labels, strict=True)]
        units = [str(a.get("units", u)) for a, u in zip(record["axes"], units, strict=True)]
        scale = [float(a.get("scale", s)) for a, s in zip(record["axes"], scale, strict=True)]
    size = sum(os.path.getsize(os.path.join(here, n)) for here, _, names in os.walk(path) for n in names)
    shape = tuple(int(s) for s in array.shape)
    meta = dict(record.get("meta") or {})
    mrcz = {
        "source": path, "format": f"OME-Zarr {_multiscales_version(attrs, entry)}", "compressor": None,
        "written_by": record.get("tool"), "shape": list(shape), "dtype": array.dtype.name,
        "size_on_disk": size, "slices": int(record.get("slices") or 0),
        "stack": bool(record.get("stack")), "voltage": record.get("voltage"), "C3": record.get("C3"),
        "gain": record.get("gain"), "meta": meta, "header": dict(record.get("header") or {}),
        "frame_spacing": record.get("frame_spacing"), "extended": record.get("extended"),
        "save": {"compressor": DEFAULT_SAVE_COMPRESSOR, "clevel": DEFAULT_SAVE_CLEVEL},
    }
    if record.get("uint4"):
        meta.setdefault("napari_mrcz_uint4", True)
    common = dict(path=path, dtype=np.dtype(array.dtype), mrcz=mrcz, scale=scale, units=units,
                  axis_labels=labels, handle=_Handle(array, path))
    if array.ndim == 2:
        return ImageSource(shape=shape, cache=None, data=np.asarray(array[...]), **common)
    handle = common["handle"]
    cache = FrameCache(handle.read_section, shape[0])
    return ImageSource(shape=shape, cache=cache, **common)


def _multiscales_version(attrs: dict, entry: dict) -> str:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("version"):
        return str(ome["version"])
    return str(entry.get("version", "0.4"))
