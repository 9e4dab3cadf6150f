"""One description of an image file, whatever its format: what a viewer needs to show it.

:func:`open_image` opens an MRC/MRCZ (also gzip/bzip2) or DM3/DM4 file and
returns an :class:`ImageSource`: its shape and type, a lazy frame cache, the
per-axis scale and units, and the header fields as the napari layer keeps them
in ``metadata['mrcz']``. Only headers and indexes are read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import positioned
from .dm import DMFile
from .header import data_axes_cell
from .lazy import FrameCache
from .remote import RemoteFile, is_url
from .stack import MRCStack

DM_SUFFIXES = (".dm3", ".dm4")
#: What "Save as MRCZ" uses for a file that is not MRCZ already.
DEFAULT_SAVE_COMPRESSOR = "zstd"
DEFAULT_SAVE_CLEVEL = 1
#: Length units offered for pixel sizes, with their size in Å.
LENGTH_UNITS = {"Å": 1.0, "nm": 10.0, "µm": 1.0e4, "pm": 0.01}
_UNIT_SPELLINGS = {"A": "Å", "Å": "Å", "\\AA": "Å", "angstrom": "Å", "nm": "nm", "um": "µm", "µm": "µm",
                   "μm": "µm", "\\mum": "µm", "pm": "pm"}


def length_unit(units: str) -> str | None:
    """The canonical spelling (Å, nm, µm, pm) of a length unit, or ``None``."""
    return _UNIT_SPELLINGS.get(units.strip())


@dataclass
class ImageSource:
    """An open image file, ready to be shown frame by frame.

    Attributes
    ----------
    shape, dtype
        Of the decoded data (a trailing axis of 3 for RGB: DM's unused 4th byte is left out).
    cache
        Decodes frames (along the first axis) on demand; ``None`` for data
        small enough to read at once (``data`` then holds it).
    scale, units, axis_labels
        One per axis of ``shape`` (not the RGB channel axis). Every length is
        in Å, whatever unit the file uses, so that all spatial axes of a layer
        share one unit; a stack's first axis is ``'frame'``, with scale 1 and
        no unit. Non-length axes (eV, 1/nm, s) keep the file's units. MRC
        axes stay in the file's order and are named after the cell axis they
        run along (``'z'``, ``'y'``, ``'x'`` in the standard order; MAPC, MAPR,
        MAPS may say otherwise), each with its own spacing.
    mrcz
        What the file says, as the napari layer keeps it in ``metadata['mrcz']``:
        ``format``, ``compressor`` (of the file), ``size_on_disk``, ``shape``,
        ``dtype``, ``stack`` (frames, not a volume), ``voltage`` (kV), ``C3``
        (mm), ``gain`` (each ``None`` where the file has no such field),
        ``meta`` (JSON metadata), ``header`` (every MRC header field and the
        labels), ``extended`` (per-section records, see
        :class:`~napari_mrcz.codec.extended.ExtendedHeader`), ``frame_spacing``
        (the z spacing an MRC stack states, in Å), for DM files ``axes`` and
        ``tags`` (the whole tag tree), and ``save``: the compressor and clevel
        "Save as MRCZ" will use.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: list[float]
    units: list[str]
    axis_labels: list[str]
    mrcz: dict
    slices: int = 0
    rgb: bool = False
    stats: tuple[float, float] | None = None
    cache: FrameCache | None = None
    data: np.ndarray | None = None
    handle: Any = field(default=None, repr=False)

    @property
    def remote(self) -> RemoteFile | None:
        """The file on a server this was opened from (its URL, version and fetch counters), else ``None``."""
        if not is_url(self.path):
            return None
        src = getattr(self.handle, "_src", None) or getattr(self.handle, "_file", None)  # MRCStack, DMFile
        src = getattr(src, "remote", src)  # a .gz/.bz2 URL: streamed into memory from this one
        return src if isinstance(src, RemoteFile) else None

    def sample_frame(self) -> np.ndarray:
        """The frame napari shows first (the middle one), for contrast limits."""
        if self.cache is None:
            data = self.data
            return np.asarray(data[(data.shape[0] - 1) // 2] if data.ndim >= 3 and not self.rgb else data)
        return self.cache.get((self.cache.n - 1) // 2)


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open an MRC, MRCZ or DigitalMicrograph file, or its URL (``https://``, ``s3://``), for viewing.

    An OME-Zarr folder (``.zarr``) opens too, by :mod:`.zarr_source`.

    Raises
    ------
    MRCFileError
        The file is damaged or not of these formats; the message says how.
    """
    path = os.fspath(path)
    if path.lower().endswith(DM_SUFFIXES):
        return _open_dm(path)
    if not is_url(path) and (path.rstrip("/").lower().endswith(".zarr") or os.path.isdir(path)):
        from .zarr_source import open_zarr_image

        return open_zarr_image(path)
    return _open_mrc(path)


def _microscope(fields: dict) -> dict[str, float | None]:
    """Voltage, C3 and gain, ``None`` where the file has no value.

    MRCZ stores 0 for a value it was not given, and in other MRC files bytes
    132-143 are MRC2014's unused EXTRA area, zero unless something was put
    there: so 0 (and anything not finite) reads as "not set", and is written
    back as 0. A Cs-corrected microscope's C3 of 0 reads as "not set" too;
    the file is the same either way.
    """
    out: dict[str, float | None] = {}
    for name in ("voltage", "C3", "gain"):
        value = float(fields[name])
        out[name] = value if np.isfinite(value) and value != 0.0 else None
    return out


def _open_mrc(path: str) -> ImageSource:
    stack = MRCStack(path)
    h = stack.header
    nz, ny, nx = h.shape
    raw = h.raw
    lo, hi = float(raw["dmin"]), float(raw["dmax"])
    stats = (lo, hi) if hi > lo and np.isfinite([lo, hi]).all() else None
    pz, py, px = (float(v) for v in h.pixelsize)
    # Each data axis is named after the cell axis it runs along: z, y, x unless MAPC, MAPR, MAPS
    # say otherwise (EMD-3001's 3, 1, 2: sections along y, rows along x, columns along z).
    lz, ly, lx = ("xyz"[k] for k in data_axes_cell(h.axis_order))
    volume = h.is_volume
    extended = stack.extended_header if h.extended_bytes else None
    fields = h.fields()
    records = (extended.as_meta() if extended is not None and extended.kind not in ("", "json")
               else (h.json_meta or {}).get("napari_mrcz_extended"))  # kept in an MRCZ of ours
    microscope = _microscope(fields)
    sections = records.get("sections") if isinstance(records, dict) else None
    ht = np.asarray(sections.get("HT", []) if isinstance(sections, dict) else [])
    if microscope["voltage"] is None and ht.ndim == 1 and ht.size and ht.dtype.kind in "fiu" \
            and np.isfinite(ht[0]) and ht[0] > 0:
        microscope["voltage"] = float(ht[0]) / 1000.0  # FEI states the high tension in V
    mrcz = {
        "source": path, "format": "MRCZ" if h.is_compressed else "MRC", "compressor": h.compressor,
        "written_by": h.written_by,
        "shape": list(h.shape), "dtype": h.dtype.name, "size_on_disk": stack.size_on_disk,
        "slices": h.slices, "stack": not volume and nz > 1,
        **microscope, "meta": dict(h.json_meta or {}),
        "header": fields, "frame_spacing": None if volume else pz,
        "extended": records if isinstance(records, dict) else None,
        "save": {"compressor": h.compressor or DEFAULT_SAVE_COMPRESSOR, "clevel": DEFAULT_SAVE_CLEVEL},
    }
    common = dict(path=path, dtype=h.dtype, mrcz=mrcz, slices=h.slices, stats=stats, handle=stack)
    # Plain data is memory-mapped: the OS pages frames in, nothing is copied. Not where a
    # mapped file cannot be renamed over (Windows): saving over it must be able to close it.
    mappable = not (h.is_compressed or positioned.REPLACE_NEEDS_CLOSED_FILES or is_url(path))
    mapped = stack.memmap() if mappable else None
    if nz == 1:
        data = mapped[0] if mapped is not None else stack.read(0, 1)[0]
        if ny == 1:  # a spectrum or a profile: one axis, as readMRC returns it
            axes = _json_axes(h.json_meta, [lx], [px], ["Å"])
            return ImageSource(shape=(nx,), data=data[0], **axes, **common)
        axes = _json_axes(h.json_meta, [ly, lx], [py, px], ["Å", "Å"])
        return ImageSource(shape=(ny, nx), data=data, **axes, **common)
    first = (lz, pz, "Å") if volume else ("frame", 1.0, "")
    axes = _json_axes(h.json_meta, [first[0], ly, lx], [first[1], py, px], [first[2], "Å", "Å"])
    spatial = dict(shape=(nz, ny, nx), **axes)
    if isinstance(mapped, np.memmap) and h.slices <= 1:
        return ImageSource(data=mapped, **spatial, **common)
    # One decoder thread per frame: the viewer's own drawing needs the other core.
    # A URL's frame being prefetched is a transfer in flight: waited for, not fetched twice.
    cache = FrameCache(lambda i: stack.read(i, i + 1, n_threads=1)[0], nz, wait_for_prefetch=is_url(path))
    return ImageSource(cache=cache, **spatial, **common)


def _json_axes(meta: dict | None, labels: list[str], scale: list[float], units: list[str]) -> dict[str, list]:
    """The axes of an MRC image: the header's, except those the JSON metadata keeps (``napari_mrcz_axes``).

    MRC's header holds lengths only; an axis that is not one (an EELS
    spectrum's energy in eV) is written with its pixel size unset and kept,
    with its unit, in the JSON (see :func:`~napari_mrcz.codec.export.json_axes`).
    Those are matched to the trailing axes; lengths stay the header's.
    """
    kept = (meta or {}).get("napari_mrcz_axes")
    if isinstance(kept, list):
        for k, axis in zip(range(len(labels) - 1, -1, -1), reversed(kept), strict=False):
            if not isinstance(axis, dict):
                continue
            unit, value = str(axis.get("units", "")), axis.get("scale")
            if unit not in ("Å", "") and isinstance(value, (int, float)) and np.isfinite(value):
                labels[k], scale[k], units[k] = str(axis.get("label", labels[k])), float(value), unit
    return {"axis_labels": labels, "scale": scale, "units": units}


def _dm_axis(axis: Any, position: int, ndim: int) -> tuple[str, float, str]:
    """(label, scale, units) of a DM axis: lengths in Å, other units kept as DM states them."""
    unit = length_unit(axis.units)
    names = ["z", "y", "x"][-ndim:] if ndim <= 3 else [f"d{k}" for k in range(ndim)]
    if unit is not None:
        return names[position], convert_length(axis.scale, unit, "Å"), "Å"
    if position >= ndim - 2 and not axis.units.strip():
        return names[position], axis.scale, ""  # an uncalibrated image axis: pixels
    units = axis.units.strip()
    if units.endswith("eV"):
        return "energy", axis.scale, units
    return (names[position] if units else "frame"), axis.scale, units


def _open_dm(path: str) -> ImageSource:
    dm = DMFile(path)
    image = dm.main_image
    shape = image.shape
    axes = image.axes
    tags = image.tags
    micro = tags.get("Microscope Info", {}) if isinstance(tags.get("Microscope Info"), dict) else {}
    voltage, cs = micro.get("Voltage"), micro.get("Cs(mm)")
    described = [_dm_axis(a, k, len(axes)) for k, a in enumerate(axes)]
    mrcz = {
        "source": path, "format": f"DM{dm.version}", "compressor": None,
        "shape": list(shape), "dtype": image.dtype.name, "size_on_disk": dm.size, "slices": 0,
        "stack": len(axes) == 3 and described[0][0] == "frame",
        # DM states the voltage in V; MRCZ in kV. DM has no detector gain.
        **_microscope({"voltage": voltage / 1000.0 if isinstance(voltage, (int, float)) else 0.0,
                       "C3": cs if isinstance(cs, (int, float)) else 0.0, "gain": 0.0}),
        "meta": {"name": image.name, "data_type": image.data_type},
        "axes": [{"scale": a.scale, "offset": a.offset, "units": a.units} for a in axes],
        "frame_spacing": None, "tags": dm.tags,
        "save": {"compressor": DEFAULT_SAVE_COMPRESSOR, "clevel": DEFAULT_SAVE_CLEVEL},
    }
    common = dict(path=path, dtype=image.dtype, mrcz=mrcz, rgb=image.is_rgb,
                  scale=[d[1] for d in described], units=[d[2] for d in described],
                  axis_labels=[d[0] for d in described], handle=dm)
    if is_url(path) and len(shape) == 3 and not (image.is_rgb or image.is_fft):
        # A stack on a server: frames are fetched as they are shown, not all at open.
        cache = FrameCache(lambda i: dm.read(image, i, i + 1)[0], shape[0])
        return ImageSource(shape=shape, cache=cache, **common)
    # memmap() maps plain numeric data (any size opens at once) and decodes the rest.
    data = dm.memmap(image)
    if image.is_rgb:  # DM's 4th byte is padding, 0, never an alpha: as alpha it would show black
        data, shape = data[..., :3], (*shape[:-1], 3)
    return ImageSource(shape=shape, data=data, **common)


def convert_length(value: float, from_unit: str, to_unit: str) -> float:
    """A length in ``from_unit`` expressed in ``to_unit`` (Å, nm, µm, pm)."""
    return value * LENGTH_UNITS[from_unit] / LENGTH_UNITS[to_unit]
