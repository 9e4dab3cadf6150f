"""An OME-Zarr folder as an :class:`~.source.ImageSource`: level 0, frame by frame, and what it says.

So ``compress`` and ``decompress`` (and ``info``) take ``.zarr`` sources:
the OME-Zarr outputs of :mod:`.ome_zarr` give back the MRC header, the
extended header, voltage, C3, gain and JSON metadata their source had (kept
under :data:`~.ome_zarr.ATTRS_KEY`); any other NGFF image gives its level 0
with the scale of its axes (in Å where they are lengths). zarr is imported
only here.

A damaged or hostile folder gives a :class:`~.zarr_guard.ZarrSourceError` naming it
(:mod:`.zarr_guard`).

What the group's ``napari_mrcz`` record says is used where it has the types
napari-mrcz writes; a field that does not is ignored, with a warning.
"""

from __future__ import annotations

import math
import os
import posixpath
import threading
import warnings
from typing import Any

import numpy as np

from .lazy import FrameCache
from .source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, ImageSource
from .zarr_guard import ZarrSourceError, check_sizes, checked_array, open_store, reading

__all__ = ["ZarrSourceError", "folder_size", "is_zarr", "open_zarr_image"]

#: Å per NGFF length unit.
_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1.0e4, "picometer": 0.01,
             "millimeter": 1.0e7, "meter": 1.0e10}

#: Sections read from the store at once, at most (a slab as deep as level 0's chunks, kept for the
#: sections that follow): a chunk 128 sections deep is decoded once for them all, not once a section.
SLAB_BYTES = 64 << 20


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of every file under the folder ``path`` (an OME-Zarr's size on disk)."""
    return sum(os.path.getsize(os.path.join(here, name))
               for here, _, names in os.walk(path) for name in names)


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a Zarr group (v2 or v3)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name))
                                       for name in ("zarr.json", ".zgroup", ".zattrs"))


# --------------------------------------------------------------------------- metadata


class _Ignored:
    """Fields of the group's attributes that do not have the types napari-mrcz writes: ignored, named once."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> None:
        self.names.append(name)

    def warn(self, path: str) -> None:
        if self.names:
            warnings.warn(f"{path}: attributes ignored (not of the types napari-mrcz writes): "
                          f"{', '.join(self.names[:12])}", UserWarning, stacklevel=3)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, ignored: _Ignored, name: str, positive: bool = False) -> float | None:
    """A finite number (``> 0`` if ``positive``), ``None`` where there is none."""
    if value is None:
        return None
    if _real(value) and (value > 0 or not positive):
        return float(value)
    ignored(name)
    return None


_INT_FIELDS = ("nx", "ny", "nz", "mode", "nxstart", "nystart", "nzstart", "mx", "my", "mz", "mapc", "mapr",
               "maps", "ispg", "nsymbt", "nversion", "nint", "nreal", "imodStamp", "imodFlags", "nlabl",
               "packedBytes")
_FLOAT_FIELDS = ("dmin", "dmax", "dmean", "rms", "voltage", "C3", "gain")
_VECTOR_FIELDS = ("cella", "cellb", "origin")
_TEXT_FIELDS = ("exttyp", "map", "machst")


def _header(raw: Any, ignored: _Ignored) -> dict[str, Any]:
    """The MRC header fields of our record, each of its MRC type (others ignored)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ignored("header")
        return {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _INT_FIELDS:
            ok = isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < (1 << 63)
        elif name in _FLOAT_FIELDS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif name in _VECTOR_FIELDS:
            ok = isinstance(value, list) and len(value) == 3 and all(_real(v) for v in value)
        elif name in _TEXT_FIELDS:
            ok = isinstance(value, str)
        elif name == "labels":
            ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        else:
            ok = False
        if ok:
            out[name] = value
        else:
            ignored(f"header.{name}")
    order = [out.get(k) for k in ("mapc", "mapr", "maps")]
    if any(v is not None for v in order) and sorted(v for v in order if v is not None) != [1, 2, 3]:
        for k in ("mapc", "mapr", "maps"):
            out.pop(k, None)
        ignored("header.mapc/mapr/maps")
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _extended(raw: Any, ignored: _Ignored) -> dict | None:
    """Our record's per-section records: a type, and flat lists of values by name (others ignored)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        ignored("extended")
        return None
    out: dict[str, Any] = {k: v for k, v in raw.items() if k != "sections" and _scalar(v)}
    sections = raw.get("sections")
    if sections is not None:
        if isinstance(sections, dict):
            out["sections"] = {str(k): v for k, v in sections.items()
                               if isinstance(v, list) and all(_scalar(x) for x in v)}
            if len(out["sections"]) != len(sections):
                ignored("extended.sections")
        else:
            ignored("extended.sections")
    return out


def _record(attrs: dict, key: str, dtype: np.dtype, ignored: _Ignored) -> dict[str, Any]:
    """Our record (:data:`~.ome_zarr.ATTRS_KEY`), each field of the type we write or left out."""
    raw = attrs.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ignored(key)
        return {}
    out: dict[str, Any] = {}
    for name in ("stack", "uint4"):
        value = raw.get(name)
        if isinstance(value, bool):
            out[name] = value
        elif value is not None:
            ignored(name)
    if out.get("uint4") and dtype != np.uint8:  # 4-bit samples are stored as uint8, nothing else
        ignored("uint4")
        out["uint4"] = False
    slices = raw.get("slices")
    if isinstance(slices, int) and not isinstance(slices, bool) and 0 <= slices < (1 << 31):
        out["slices"] = slices
    elif slices is not None:
        ignored("slices")
    for name in ("voltage", "C3", "gain"):
        out[name] = _number(raw.get(name), ignored, name)
    out["frame_spacing"] = _number(raw.get("frame_spacing"), ignored, "frame_spacing", positive=True)
    tool = raw.get("tool")
    out["tool"] = tool if isinstance(tool, str) else None
    meta = raw.get("meta")
    if isinstance(meta, dict):
        out["meta"] = meta
    elif meta is not None:
        ignored("meta")
    out["header"] = _header(raw.get("header"), ignored)
    out["extended"] = _extended(raw.get("extended"), ignored)
    axes = raw.get("axes")
    if isinstance(axes, list) and all(isinstance(a, dict) for a in axes):
        out["axes"] = axes
    elif axes is not None:
        ignored("axes")
    return out


def _multiscales(attrs: dict, path: str) -> dict:
    """The first NGFF multiscales entry of the group's attributes (0.5 under ``ome``, 0.4 at the top)."""
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    found = ome.get("multiscales")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads (no NGFF multiscales in its "
                              "attributes)")
    return found[0]


def _level0(entry: dict, path: str) -> tuple[dict, str]:
    """The first dataset of a multiscales entry and its path: a folder of the group, never outside it."""
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict):
        raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads (no datasets in its "
                              "multiscales)")
    first = datasets[0]
    name = first.get("path")
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads (its first dataset's path "
                              f"is {name!r}, not a folder of the group)")
    return first, posixpath.join(*parts)


def _scale(first: dict, ndim: int, ignored: _Ignored) -> list[float]:
    """The scale of level 0's axes from its ``coordinateTransformations`` (1 where there is none)."""
    transforms = first.get("coordinateTransformations")
    if transforms is None:
        return [1.0] * ndim
    if not isinstance(transforms, list):
        ignored("coordinateTransformations")
        return [1.0] * ndim
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            values = t.get("scale")
            if isinstance(values, list) and len(values) >= ndim and all(_real(v) and v > 0 for v in values):
                return [float(v) for v in values][-ndim:]
            ignored("coordinateTransformations.scale")
            return [1.0] * ndim
    return [1.0] * ndim


def _axes(entry: dict, ndim: int, ignored: _Ignored) -> list[tuple[str | None, str | None]]:
    """(name, unit) of level 0's axes as the multiscales entry states them (``None`` where it does not)."""
    axes = entry.get("axes")
    if axes is None:
        return [(None, None)] * ndim
    if not isinstance(axes, list) or len(axes) < ndim:
        ignored("axes")
        return [(None, None)] * ndim
    out = []
    for axis in axes[-ndim:]:
        if isinstance(axis, str):
            out.append((axis, None))
        elif isinstance(axis, dict):
            name, unit = axis.get("name"), axis.get("unit")
            if not isinstance(name, str) or not (unit is None or isinstance(unit, str)):
                ignored("axes")
            out.append((name if isinstance(name, str) else None, unit if isinstance(unit, str) else None))
        else:
            ignored("axes")
            out.append((None, None))
    return out


def _kept_axes(record: dict, labels: list[str], units: list[str], scale: list[float],
               ignored: _Ignored) -> None:
    """The axes as the source file described them (our record), where it has one per axis, of our types."""
    axes = record.get("axes")
    if not axes:
        return
    if len(axes) != len(labels):
        ignored("axes")
        return
    for k, a in enumerate(axes):
        label, unit, value = a.get("label", labels[k]), a.get("units", units[k]), a.get("scale", scale[k])
        if isinstance(label, str) and isinstance(unit, str) and _real(value):
            labels[k], units[k], scale[k] = label, unit, float(value)
        else:
            ignored(f"axes.{k}")


def _multiscales_version(attrs: dict, entry: dict) -> str:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("version"), str):
        return ome["version"]
    version = entry.get("version", "0.4")
    return version if isinstance(version, str) else "0.4"


# --------------------------------------------------------------------------- the source


class _Handle:
    """What ImageSource.handle is for a zarr: reads level 0's sections, a slab at a time; closes.

    A slab is as deep as level 0's chunks (at most :data:`SLAB_BYTES`), and
    the last one read is kept: reading its sections one after the other
    decodes each chunk once, not once a section (zarr keeps nothing).
    """

    def __init__(self, array: Any, path: str) -> None:
        self.array, self.path = array, path
        frame = math.prod(array.shape[1:]) * array.dtype.itemsize if array.ndim == 3 else 1
        depth = int(array.chunks[0]) if array.ndim == 3 else 1
        self.depth = max(1, min(depth, SLAB_BYTES // max(1, frame)))
        self._slab: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def read_section(self, i: int) -> np.ndarray:
        """Section ``i`` of level 0 (a copy: the slab it was read with is kept, for the next ones).

        Raises
        ------
        ZarrSourceError
            A chunk that cannot be read or decoded (the message names the folder and the section).
        """
        i = int(i)
        with self._lock:
            array = self.array
            if array is None:
                raise ZarrSourceError(f"{self.path}: closed")
            if not 0 <= i < array.shape[0]:
                raise IndexError(f"{self.path}: section {i} of {array.shape[0]}")
            first = i // self.depth * self.depth
            slab = self._slab
            if slab is None or slab[0] != first:
                with reading(self.path, f"section {i} cannot be read"):
                    slab = (first, np.asarray(array[first:first + self.depth]))
                self._slab = slab
            return slab[1][i - first].copy()

    def close(self) -> None:
        with self._lock:
            self.array, self._slab = None, None


def open_zarr_image(path: str | os.PathLike) -> ImageSource:
    """Open an OME-Zarr image's level 0 for reading, frame by frame.

    Raises
    ------
    ZarrSourceError
        Not a Zarr group, no NGFF ``multiscales``, level 0 not a 2D or 3D
        array of numbers, codecs napari-mrcz does not read, sizes its
        chunks could not back (see :func:`check_sizes`), or (a 2D image)
        a chunk that cannot be decoded.
    ModuleNotFoundError
        zarr-python 3 is not installed.
    """
    from .ome_zarr import ATTRS_KEY, _require_zarr

    path = os.fspath(path)
    zarr = _require_zarr()
    with reading(path, "not an OME-Zarr image napari-mrcz reads"):
        root = zarr.open_group(store=open_store(path), mode="r")
        attrs = dict(root.attrs)
    entry = _multiscales(attrs, path)
    first, name = _level0(entry, path)
    with reading(path, f"its level 0 ({name!r}) cannot be opened"):
        try:
            array = root[name]
        except KeyError as exc:
            raise ZarrSourceError(f"{path}: not an OME-Zarr image napari-mrcz reads "
                                  f"(no array {exc})") from exc
    if not isinstance(array, zarr.Array):
        raise ZarrSourceError(f"{path}: its level 0 ({name!r}) is a group, not an array")
    with reading(path, f"its level 0 ({name!r}) cannot be opened"):
        ndim, dtype = array.ndim, np.dtype(array.dtype)
    if ndim not in (2, 3):
        raise ZarrSourceError(f"{path}: level 0 is {ndim}D; napari-mrcz reads 2D and 3D images")
    if dtype.kind not in "biufc":
        raise ZarrSourceError(f"{path}: level 0 holds {dtype}, not numbers")
    with reading(path, f"its level 0 ({name!r}) cannot be opened"):
        check_sizes(array, path, os.path.join(path, *name.split("/")))
        array = checked_array(array, path)
    ignored = _Ignored()
    record = _record(attrs, ATTRS_KEY, dtype, ignored)
    scale = _scale(first, ndim, ignored)
    labels, units = [], []
    stack = bool(record.get("stack"))
    for k, (axis_name, unit) in enumerate(_axes(entry, ndim, ignored)):
        label = axis_name or "zyx"[k + 3 - ndim]
        if unit in _ANGSTROM:
            scale[k], unit_k = scale[k] * _ANGSTROM[unit], "Å"
        else:
            unit_k = unit or ""
        labels.append("frame" if stack and k == 0 and ndim == 3 else label)
        units.append("" if labels[-1] == "frame" else unit_k)
    _kept_axes(record, labels, units, scale, ignored)
    with reading(path, "its size cannot be read"):
        size = folder_size(path)
    shape = tuple(int(s) for s in array.shape)
    meta = dict(record.get("meta") or {})
    mrcz = {
        "source": path, "format": f"OME-Zarr {_multiscales_version(attrs, entry)}", "compressor": None,
        "written_by": record.get("tool"), "shape": list(shape), "dtype": dtype.name,
        "size_on_disk": size, "slices": int(record.get("slices") or 0),
        "stack": stack, "voltage": record.get("voltage"), "C3": record.get("C3"),
        "gain": record.get("gain"), "meta": meta, "header": dict(record.get("header") or {}),
        "frame_spacing": record.get("frame_spacing"), "extended": record.get("extended"),
        "save": {"compressor": DEFAULT_SAVE_COMPRESSOR, "clevel": DEFAULT_SAVE_CLEVEL},
    }
    if record.get("uint4"):
        meta.setdefault("napari_mrcz_uint4", True)
    elif meta.get("napari_mrcz_uint4") and dtype != np.uint8:  # 4-bit samples are stored as uint8 only
        ignored("meta.napari_mrcz_uint4")
        del meta["napari_mrcz_uint4"]
    ignored.warn(path)
    handle = _Handle(array, path)
    common = dict(path=path, dtype=dtype, mrcz=mrcz, scale=scale, units=units, axis_labels=labels,
                  handle=handle)
    if ndim == 2:
        with reading(path, "its image cannot be read"):
            data = np.asarray(array[...])
        return ImageSource(shape=shape, cache=None, data=data, **common)
    cache = FrameCache(handle.read_section, shape[0])
    return ImageSource(shape=shape, cache=cache, **common)
