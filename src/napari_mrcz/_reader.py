"""napari reader: MRC, MRCZ and DigitalMicrograph files as lazy image layers.

Thin by design: :func:`napari_mrcz.codec.source.open_image` knows the formats;
this module turns an :class:`~napari_mrcz.codec.source.ImageSource` into
napari ``LayerData`` tuples whose arrays decode frames only when napari asks.
Files written from a napari Labels layer (marked so: see
:func:`~napari_mrcz.codec.export.is_labels`) open as labels layers. A URL
(``https://``, ``s3://``) opens as a file does; its layer's
``metadata['mrcz']['remote']`` is the :class:`~napari_mrcz.codec.remote.RemoteFile`
it reads through (version, bytes fetched).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._pyramid import FillingStack, LevelFill, hidden_until_added, register, wants_pyramid, watch
from .codec.blosc_chunks import warm
from .codec.export import is_labels, source_sections
from .codec.frame_levels import FrameLevels, LazyPlane, plan_frame_levels, stack_3d_factor
from .codec.lazy import LazyCast, LazyStack, LazyVolumes
from .codec.pyramid import COARSEST_BYTES
from .codec.read_ahead import ReadAhead
from .codec.remote import file_name, shown
from .codec.source import ImageSource, open_image

# Load the faster decompressor in the background while napari builds the layer.
threading.Thread(target=warm, name="mrcz-warm", daemon=True).start()

SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".rec", ".ali", ".preali", ".mrcz", ".dm3", ".dm4",
            ".mrc.gz", ".map.gz", ".mrcs.gz", ".mrc.bz2", ".map.bz2", ".mrcs.bz2")
#: Unit spellings of files -> names napari's units (pint) understand.
NAPARI_UNITS = {"": "pixel", "A": "angstrom", "Å": "angstrom", "nm": "nanometer", "um": "micrometer",
                 "µm": "micrometer", "μm": "micrometer", "pm": "picometer"}

LayerData = tuple[Any, dict, str]


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` for files this plugin reads, else ``None``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(str(p).lower().endswith(SUFFIXES) for p in paths):
        return read_layers
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Open each file as one or more image layers (lazily)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        layers.extend(layer_data(open_image(p)))
    return layers


def _units(units: list[str]) -> list[str]:
    """Unit names napari (pint) understands; units pint does not know ('counts', '') become pixels."""
    from napari.utils._units import get_unit_registry

    registry = get_unit_registry()
    out = []
    for unit in units:
        name = NAPARI_UNITS.get(unit.strip(), unit.strip())
        try:
            registry.Unit(name)
        except Exception:  # noqa: BLE001 - pint raises many kinds for names it does not know
            name = "pixel"
        out.append(name)
    return out


def _contrast(source: ImageSource, transform: Callable | None) -> list[float]:
    if source.stats is not None and transform is None:
        return [float(v) for v in source.stats]
    sample = source.sample_frame()
    step = max(1, int(np.sqrt(sample.size / 65536)))  # about 65 000 values are plenty
    sample = sample[..., ::step, ::step] if sample.ndim >= 2 else sample[::step]
    sample = transform(sample) if transform is not None else sample
    values = np.asarray(sample, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0, 1.0]
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return [float(lo), float(hi)] if hi > lo else [float(finite.min()), float(finite.min()) + 1.0]


def layer_data(source: ImageSource) -> list[LayerData]:
    """The ``LayerData`` tuples for one opened file.

    A URL's frames in a napari window: its layers are made hidden and shown
    once added (:func:`hidden_until_added`), so that the frame shown is the
    only one fetched, not frame 0 before it.
    """
    layers = _layer_data(source)
    if source.remote is None or source.cache is None:
        return layers
    return [(data, {**kwargs, **hidden_until_added(data, bool(kwargs.get("multiscale")))}, kind)
            for data, kwargs, kind in layers]


def _layer_data(source: ImageSource) -> list[LayerData]:
    name = file_name(source.path)
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    name = Path(name).stem
    scale, units, labels = list(source.scale), list(source.units), list(source.axis_labels)
    data: Any = source.data
    if source.cache is not None:
        data = LazyStack(source.cache, source.shape[1:], source.dtype)
    if data.ndim == 1 or (source.rgb and data.ndim == 2):  # a spectrum: one row
        data = data[None]
        scale, units, labels = [1.0, *scale], ["", *units], ["row", *labels]
    if source.remote is not None:  # the widget shows what was fetched of it
        source.mrcz["remote"] = source.remote
    base = {"scale": scale, "units": _units(units), "axis_labels": labels,
            "metadata": {"mrcz": source.mrcz}}
    if source.rgb:
        return [(data, {**base, "name": name, "rgb": True}, "image")]

    volumes = source.slices > 1 and source.cache is not None
    if volumes:  # a list of multi-slice frames (python-mrcz's slices): one 4D layer, a stack of volumes
        data = LazyVolumes(source.cache, source.slices, source.shape[1:], source.dtype)
        z = (labels[0], scale[0], units[0]) if labels[0] != "frame" else \
            ("z", float(source.mrcz.get("frame_spacing") or scale[1]), "Å")  # named a stack: still z-sections
        base.update(scale=[1.0, z[1], *scale[1:]], units=_units(["", z[2], *units[1:]]),
                    axis_labels=["volume", z[0], *labels[1:]])
    if is_labels(source.mrcz) and np.dtype(source.dtype).kind in "biuf":  # a segmentation of ours
        # Single-scale: the coarse levels of images are block means, which are no labels.
        return [(labels_data(data), {**base, "name": name}, "labels")]
    variants: list[tuple[str, Any, Callable | None]] = [(name, data, None)]
    if np.dtype(source.dtype).kind == "c":
        real = np.float32 if np.dtype(source.dtype).itemsize == 8 else np.float64
        complex_variants = []
        for label, arr, _ in variants:
            for part, fn in (("amplitude", np.abs), ("phase", np.angle)):
                if isinstance(arr, LazyVolumes):
                    view = LazyVolumes(arr.cache, arr.slices, arr.frame_shape, real, transform=fn)
                elif isinstance(arr, LazyStack):
                    view = LazyStack(arr.cache, arr.frame_shape, real, index=arr._index, n=arr.shape[0],
                                     transform=fn)
                else:
                    view = fn(arr).astype(real)
                complex_variants.append((f"{label} ({part})", view, fn))
        variants = complex_variants
    levels = _levels(source, data) if len(variants) == 1 and variants[0][2] is None and not volumes else None
    if levels is not None:  # large: coarse levels for zooming out and for 3D
        return [(levels, {**base, "name": name, "multiscale": True,
                          "contrast_limits": _contrast(source, None)}, "image")]
    return [(arr, {**base, "name": label, "contrast_limits": _contrast(source, fn)}, "image")
            for label, arr, fn in variants]


def labels_data(data: Any) -> Any:
    """A segmentation's data as a napari Labels layer takes it: integers, edits refused until loaded.

    Plain MRC2014 has no 32-bit integer mode: labels beyond uint16 are stored
    as float32 (whole numbers up to 2**24) and given back as int32. Data in
    memory, or mapped copy-on-write (plain MRC), is given as it is: it can be
    painted at once. Data decoded as it is shown (MRCZ) is given through a
    :class:`~napari_mrcz.codec.lazy.LazyCast`, whose reads are new arrays:
    painting it says to load it into memory first.

    Parameters
    ----------
    data
        The layer's data as an image layer would get it.

    Returns
    -------
    array-like
        ``data`` itself, or a :class:`~napari_mrcz.codec.lazy.LazyCast` of it.
    """
    floats = np.dtype(data.dtype).kind == "f"
    if isinstance(data, np.ndarray) and data.flags.writeable and not floats:
        return data
    if floats and isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        return data.astype(np.int32)  # read whole already (small)
    return LazyCast(data, np.int32 if floats else data.dtype)


def _levels(source: ImageSource, full: Any) -> list[Any] | None:
    """All levels of a layer that gets coarse ones (a volume's pyramid, or its frames'), else ``None``.

    A volume at a URL gets its frames' levels, as a movie does: in 2D a plane
    shown (binned in y and x if zoomed out) fetches that plane only, and the
    level drawn in 3D is filled (over the network) when the viewer shows 3D. A
    volume's pyramid, binned in z too, fills as soon as the file opens: its
    2D levels are not there before that.
    """
    if wants_pyramid(source) and source.remote is None:
        return _volume_levels(source, full)
    coarse = _frame_levels(source)
    return None if coarse is None else [full, *coarse]


def _fill(source: ImageSource, viewer: Any, factor: int | None = None) -> LevelFill | None:
    """A background pass to fill coarse levels (see :class:`LevelFill`), wired to ``viewer``.

    It reads the file, not the viewer's frame cache, with one decoder thread,
    so that the viewer's own drawing keeps the other core; a URL's sections
    are read ahead, several at a time (:class:`ReadAhead`). ``None``, with a
    warning, where the cache has no room (a read-only or full cache folder).
    """
    read: Any = source_sections(source, n_threads=1).__getitem__
    if source.remote is not None:  # a round trip a section: several in flight, to fill the link
        section_bytes = int(np.prod(source.shape[1:])) * np.dtype(source.dtype).itemsize
        read = ReadAhead(read, source.shape[0], section_bytes)
    try:
        fill = LevelFill(source, read, factor=factor)
    except OSError as exc:
        warnings.warn(f"{shown(source.path)}: opened without coarse levels for 3D ({exc})", stacklevel=4)
        return None
    watch(viewer)
    return fill


def _frame_levels(source: ImageSource) -> list[Any] | None:
    """Coarse levels, binned on demand, for the huge frames of an image, movie or tilt series.

    In a napari window a stack too large to draw in 3D at once also gets a
    coarsest level filled in the background (and cached), started when the
    viewer shows 3D. Not for RGB or complex data (no single mean).
    """
    frame_shape = source.shape[-2:]
    if source.rgb or len(source.shape) not in (2, 3) or np.dtype(source.dtype).kind not in "biuf":
        return None
    from napari import current_viewer

    viewer = current_viewer() if len(source.shape) == 3 and source.slices <= 1 else None
    in_3d = viewer is not None and int(np.prod(source.shape)) * 4 > COARSEST_BYTES
    factors = plan_frame_levels(frame_shape)  # for 2D: none unless the frames are huge
    if in_3d and stack_3d_factor(source.shape) > (factors[-1] if factors else 1):
        factors.append(stack_3d_factor(source.shape))  # smaller than the canvas: 2D shows it only zoomed out
    if not factors:
        return None
    if source.cache is not None:  # decoded frames: binned from the viewer's if it has them
        # A URL's full frames are kept as they are binned: fetched once, whatever level.
        remote = source.remote is not None
        frames = FrameLevels(source.cache.take if remote else source.cache.read_through, source.cache.n,
                             frame_shape, keep=source.cache.get, factors=factors, wait_for_prefetch=remote)
    else:  # mapped frames: whole ones read from the file (the map's pages would stay resident), boxes mapped
        sections = source_sections(source)
        keep = source.data.__getitem__ if len(source.shape) == 3 else (lambda i: source.data)
        frames = FrameLevels(sections.__getitem__, len(sections), frame_shape, keep=keep, factors=factors)
        if len(source.shape) == 2:
            return [LazyPlane(stack) for stack in frames.stacks()]
    stacks: list[Any] = frames.stacks()
    if in_3d and (fill := _fill(source, viewer, factor=factors[-1])) is not None:
        stacks[-1] = FillingStack(stacks[-1], fill.levels[0], fill)  # without: 3D bins frame by frame
        register(fill, stacks[-1])
    return stacks


def _volume_levels(source: ImageSource, full: Any) -> list[Any] | None:
    """A large volume's levels: the lazy full-size one, then the binned ones, filling from now on.

    ``None`` outside a napari window (a script reading through npe2): nothing
    would fill the coarse levels there, so the layer stays single-scale.
    """
    from napari import current_viewer

    viewer = current_viewer()
    fill = _fill(source, viewer) if viewer is not None else None
    if fill is None:
        return None
    register(fill, fill.levels[0])
    fill.start()
    return [full, *fill.levels]
