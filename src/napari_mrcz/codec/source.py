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

from .dm import DMFile
from .header import angstrom_per_unit
from .lazy import FrameCache
from .stack import MRCStack

DM_SUFFIXES = (".dm3", ".dm4")
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
        Of the decoded data (a trailing axis of 4 for RGB).
    cache
        Decodes frames (along the first axis) on demand; ``None`` for data
        small enough to read at once (``data`` then holds it).
    scale, units, axis_labels
        One per axis of ``shape`` (not the RGB channel axis).
    mrcz
        What the file says, as the napari layer keeps it in ``metadata['mrcz']``.
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

    def sample_frame(self) -> np.ndarray:
        """The frame napari shows first (the middle one), for contrast limits."""
        if self.cache is None:
            data = self.data
            return np.asarray(data[(data.shape[0] - 1) // 2] if data.ndim >= 3 and not self.rgb else data)
        return self.cache.get((self.cache.n - 1) // 2)


def open_image(path: str | os.PathLike) -> ImageSource:
    """Open an MRC, MRCZ or DigitalMicrograph file for viewing.

    Raises
    ------
    MRCFileError
        The file is damaged or not of these formats; the message says how.
    """
    path = os.fspath(path)
    if path.lower().endswith(DM_SUFFIXES):
        return _open_dm(path)
    return _open_mrc(path)


def _open_mrc(path: str) -> ImageSource:
    stack = MRCStack(path)
    h = stack.header
    meta = stack.meta("\\AA")
    nz, ny, nx = h.shape
    raw = h.raw
    lo, hi = float(raw["dmin"]), float(raw["dmax"])
    stats = (lo, hi) if hi > lo and np.isfinite([lo, hi]).all() else None
    json_meta = dict(h.json_meta or {})
    mrcz = {
        "source": path, "format": "MRCZ" if h.is_compressed else "MRC",
        "pixelsize": [float(v) for v in meta["pixelsize"]], "pixelunits": "Å",
        "voltage": meta["voltage"], "C3": meta["C3"], "gain": meta["gain"],
        "compressor": h.compressor, "clevel": None, "meta": json_meta,
        "shape": list(h.shape), "dtype": h.dtype.name, "size_on_disk": stack.size_on_disk,
        "slices": h.slices,
    }
    pz, py, px = mrcz["pixelsize"]
    common = dict(path=path, dtype=h.dtype, mrcz=mrcz, slices=h.slices,
                  stats=stats, handle=stack)
    # Plain data is memory-mapped: the OS pages frames in, nothing is copied.
    mapped = stack.memmap() if not h.is_compressed else None
    if nz == 1:
        data = mapped[0] if mapped is not None else stack.read(0, 1)[0]
        return ImageSource(shape=(ny, nx), scale=[py, px], units=["Å", "Å"], axis_labels=["y", "x"],
                           data=data, **common)
    spatial = dict(shape=(nz, ny, nx), scale=[pz, py, px], units=["Å", "Å", "Å"],
                   axis_labels=["z", "y", "x"])
    if isinstance(mapped, np.memmap) and h.slices <= 1:
        return ImageSource(data=mapped, **spatial, **common)
    # One decoder thread per frame: the viewer's own drawing needs the other core.
    cache = FrameCache(lambda i: stack.read(i, i + 1, n_threads=1)[0],
                       nz, ny * nx * h.dtype.itemsize)
    return ImageSource(cache=cache, **spatial, **common)


def _open_dm(path: str) -> ImageSource:
    dm = DMFile(path)
    image = dm.main_image
    shape = image.shape
    axes = image.axes
    tags = image.tags
    micro = tags.get("Microscope Info", {}) if isinstance(tags.get("Microscope Info"), dict) else {}
    unit = length_unit(axes[-1].units) or "Å"
    voltage = micro.get("Voltage")
    mrcz = {
        "source": path, "format": f"DM{dm.version}",
        "pixelsize": [a.scale for a in axes], "pixelunits": unit,
        "voltage": float(voltage) / 1000.0 if isinstance(voltage, (int, float)) else 0.0,
        "C3": float(micro.get("Cs(mm)", 0.0) or 0.0), "gain": 1.0,
        "compressor": None, "clevel": None, "meta": {"name": image.name, "data_type": image.data_type},
        "shape": list(shape), "dtype": image.dtype.name, "size_on_disk": dm.size,
        "axes": [{"scale": a.scale, "offset": a.offset, "units": a.units} for a in axes], "slices": 0,
    }
    labels = ["z", "y", "x"][-len(axes):] if len(axes) <= 3 else [f"d{k}" for k in range(len(axes))]
    common = dict(path=path, dtype=image.dtype, mrcz=mrcz, rgb=image.is_rgb,
                  scale=[a.scale for a in axes], units=[a.units for a in axes], axis_labels=labels,
                  handle=dm)
    # memmap() maps plain numeric data (any size opens at once) and decodes the rest.
    return ImageSource(shape=shape, data=dm.memmap(image), **common)


def convert_length(value: float, from_unit: str, to_unit: str) -> float:
    """A length in ``from_unit`` expressed in ``to_unit`` (Å, nm, µm, pm)."""
    return value * LENGTH_UNITS[from_unit] / LENGTH_UNITS[to_unit]


def codec_units(unit: str) -> str:
    """python-mrcz's spelling of a length unit (backslash-AA, nm, backslash-mum, pm)."""
    spelling = {"Å": "\\AA", "nm": "nm", "µm": "\\mum", "pm": "pm"}[length_unit(unit) or "Å"]
    angstrom_per_unit(spelling)
    return spelling
