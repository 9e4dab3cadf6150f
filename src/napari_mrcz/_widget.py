"""The MRCZ dock widget: what a layer's file is, its microscope metadata, how it will be saved.

It follows the selected image layer and shows it in sections, each a small
class of its own:

- :class:`FileFacts`: the layer, and what it was read from (format,
  compressor, the file's shape and type, size in memory and on disk, ratio;
  for a URL, the URL and how much of the file has been fetched), never edited;
- :class:`PixelSizes`: the pixel size of each spatial axis, named after the
  layer's axis labels (a stack's frame axis has none), and the length unit
  they are shown and typed in;
- :class:`Microscope`: voltage (kV), C3 (mm) and gain, "not set" where the
  file has no such field;
- :class:`FileEdit`: "Apply to file" writes those pixel sizes and values
  into the header of the layer's MRC or MRCZ file, in place (a worker
  thread, through the codec's journal), the data untouched;
- :class:`SaveSettings`: the compressor, clevel and precision (lossless, or
  lossy: float mantissas rounded) a save to MRCZ will use, and an estimate of
  the file's size and ratio from one section (:class:`SizeEstimate`, in a
  worker thread);
- :class:`Actions`: "Save as MRCZ…", "Load into memory", "Show as labels"
  (a labels layer sharing an integer image's data, or a 0/1 float mask's)
  and the **header inspector** (every header field, labels, extended header,
  JSON, DM tags), whose per-section line follows napari's slider;
- :class:`OpenURL`: a file on a web server or in an object store
  (``https://``, ``s3://``) opened as a layer, as napari's *File > Open*
  opens local files only. Remote layers are read-only: "Apply to file" is
  disabled for them, and "Save as MRCZ…" proposes a local file.

Labels layers (segmentations) are followed too: they save as labels, and one
read from its file as it is shown (MRCZ) cannot be painted before "Load into
memory" (the widget says so when a painting tool is chosen).

Every edit goes at once to the layer: a pixel size to ``layer.scale`` (of
every layer read from the same file: amplitude and phase, channels), the rest
to ``metadata['mrcz']``, the one place the reader fills and the writer reads.
The length unit is how sizes are shown and typed: lengths stay in the layer's
own unit (Å, as the reader gives them), so layers keep overlaying. Layers
whose axes have no length unit (pixels) get one when a unit is chosen.
"Save as MRCZ…" and "Load into memory" run in worker threads with napari's
progress bar; the load can be cancelled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from qtpy.QtCore import QTimer
from superqt.utils import ensure_main_thread

from ._inspector import HeaderInspector
from ._writer import DEFAULT_MAX_ERROR, angstrom, layer_saved, save_layer
from .codec.estimate import estimate_section
from .codec.export import stored_dtype
from .codec.lazy import LazyCast
from .codec.narrowing import value_range
from .codec.precision import MANTISSA_BITS, PRECISION_KEY, describe
from .codec.remote import RemoteFile, is_url, shown
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, LENGTH_UNITS

if TYPE_CHECKING:
    import napari
    from magicgui.widgets.bases import Widget

    from .codec.header_edit import HeaderEdit

COMPRESSORS = ["none", "lz4", "lz4hc", "zstd", "zlib", "blosclz"]
#: *Precision* choices: lossless, or lossy (rounded float mantissas), automatic or a number of bits.
LOSSLESS, AUTO, BITS = "lossless", "auto", "bits"
PRECISIONS = [("lossless", LOSSLESS), ("lossy: auto (max error × noise)", AUTO),
              ("lossy: N mantissa bits", BITS)]
#: The mantissa bits *Mantissa bits* starts at.
DEFAULT_KEEPBITS = 8
UNITS = list(LENGTH_UNITS)
#: The "unit" of axes that have no length unit.
PIXELS = "px"
#: How the widget writes napari's unit names.
SYMBOLS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "picometer": "pm"}
NOT_SET = "not set"
#: Decimals shown for a pixel size in each unit (0.01 pm at least); other units (px, eV ...) get 6.
DECIMALS = {"Å": 4, "nm": 5, "µm": 8, "pm": 2}
OTHER_DECIMALS = 6
#: The names of a layer's last three axes where its axis labels are napari's defaults ("-3", "-2", "-1").
AXIS_NAMES = {-3: "z", -2: "y", -1: "x"}
NO_LAYER = "(select an image layer)"
#: Why "Apply to file" is disabled for a layer read from a URL.
REMOTE_READ_ONLY = "remote files are read-only here: save a local copy"
#: The modes of a labels layer that write to its data.
PAINTING = ("paint", "fill", "erase", "polygon")


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""


def _optional(label: str, lo: float, hi: float, step: float, suffix: str) -> FloatSpinBox:
    """A spin box whose lowest value reads "not set" (for fields a file may not have)."""
    box = FloatSpinBox(label=label, min=lo - step, max=hi, step=step, value=lo - step)
    box.native.setSpecialValueText(NOT_SET)
    box.native.setSuffix(suffix)
    return box


def _optional_value(box: FloatSpinBox) -> float | None:
    return None if box.value <= box.min else float(box.value)


def _set_optional(box: FloatSpinBox, value: float | None) -> None:
    box.value = box.min if value is None else float(value)


def unit_symbol(unit: Any) -> str:
    """How a napari unit is written in the widget (Å, nm, µm, pm, px, eV, 1/nm ...).

    Parameters
    ----------
    unit
        A pint unit, its name, or ``None`` (no unit: pixels).

    Returns
    -------
    str
        The short form shown after a number.
    """
    if unit is None or str(unit) == "pixel":
        return PIXELS
    try:
        return format(unit, "~P")  # pint's own short form
    except (TypeError, ValueError):
        return SYMBOLS.get(str(unit), str(unit))


def full_size(layer: Any) -> Any:
    """A layer's data at full size (level 0 of a multiscale layer).

    Parameters
    ----------
    layer
        A napari image layer.

    Returns
    -------
    array-like
        ``layer.data``, or its first level for a multiscale layer.
    """
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def in_memory(layer: Any) -> bool:
    """Whether a layer holds one plain, writable numpy array (nothing left to load).

    Parameters
    ----------
    layer
        A napari image layer.

    Returns
    -------
    bool
        ``False`` for multiscale layers, lazy stacks and memory-mapped files.
    """
    data = layer.data
    return (not layer.multiscale and isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
            and data.flags.writeable)


def writable(data: Any) -> bool:
    """Whether a layer's data can be painted: a writable numpy array (in memory, or mapped copy-on-write).

    Parameters
    ----------
    data
        A layer's data (its full-size level).

    Returns
    -------
    bool
        ``False`` for lazy stacks, whose frames are decoded from the file as they are shown.
    """
    return isinstance(data, np.ndarray) and bool(data.flags.writeable)


def labels_source(layer: Any) -> bool:
    """Whether "Show as labels" can make a labels layer of a layer: an integer, bool or float image.

    A float image must hold only 0 and 1 (a mask): that is checked when the button is pressed.

    Parameters
    ----------
    layer
        A napari layer, or ``None``.

    Returns
    -------
    bool
        ``True`` for single-channel image layers of those types.
    """
    from napari.layers import Image

    return isinstance(layer, Image) and not layer.rgb and np.dtype(full_size(layer).dtype).kind in "biuf"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def proposed_save_path(name: str, source: str | None) -> str:
    """The file "Save as MRCZ…" proposes for a layer: ``<name>.mrcz`` beside its source, never the source.

    Parameters
    ----------
    name
        The layer's name (``emd_3197`` for ``emd_3197.map.gz``; ``movie (amplitude)``).
    source
        The file the layer was read from, or ``None`` (the proposal is then
        in the current folder). A URL's layer gets a local file, in the
        user's home folder.

    Returns
    -------
    str
        ``<folder of source>/<name>.mrcz``, or ``<name>_copy.mrcz`` where that
        is the source itself.
    """
    stem = name.replace(os.sep, "_").replace("/", "_") or "image"
    remote = is_url(source)
    if remote:
        folder = os.path.expanduser("~")
    else:
        folder = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    path = os.path.join(folder, f"{stem}.mrcz")
    if source and not remote and _same_file(path, source):
        path = os.path.join(folder, f"{stem}_copy.mrcz")
    return path


def file_summary(layer: Any, frames: bool) -> str:
    """The File section's text: format, compressor, shape and type, sizes and ratio, precision.

    The file's own type (complex64 for an amplitude layer shown as float32)
    and the file's own size give the ratio.

    Parameters
    ----------
    layer
        A napari image layer.
    frames
        Whether its first of three axes is frames (the count is added).

    Returns
    -------
    str
        Three lines: what the file is, its sizes, and "lossless" or "lossy: N
        mantissa bits" (:func:`file_precision`); two for layers not from a file.
    """
    data, meta = full_size(layer), layer.metadata.get("mrcz") or {}
    shown = np.dtype(data.dtype)
    nbytes = int(np.prod(data.shape)) * shown.itemsize
    shape = " × ".join(map(str, data.shape))
    if not meta.get("format"):
        return f"not from a file: {shape} {shown.name}\n{_human(nbytes)} in memory"
    stored = np.dtype(meta.get("dtype") or shown)
    what = meta["format"] + (f", {meta['compressor']}" if meta.get("compressor") else "")
    text = f"{what}: {shape} {stored.name}"
    if stored.name != shown.name:
        text += f", shown as {shown.name}"
    if frames:
        text += f" ({data.shape[-3]} frames)"
    text += f"\n{_human(nbytes)} in memory"
    on_disk = meta.get("size_on_disk")
    if meta.get("compressor") and on_disk:
        raw = int(np.prod(meta.get("shape") or data.shape)) * stored.itemsize
        if raw != nbytes:
            text += f"; file {_human(raw)} uncompressed"
        where = "on the server" if is_url(meta.get("source")) else "on disk"
        text += f", {_human(on_disk)} {where}, ratio {raw / on_disk:.2f}"
    return f"{text}\n{file_precision(meta)}"


def wrapped(*labels: Label) -> None:
    """Text rows that start at the left of the value column and wrap, as the File text does."""
    from qtpy.QtWidgets import QSizePolicy

    for label in labels:
        label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        label.native.setWordWrap(True)


def say(label: Label, text: str, display: str | None = None) -> None:
    """Show ``text`` in a result line (``display``: how to show it, if not as is); ``""`` hides the line."""
    with contextlib.suppress(RuntimeError):  # the widget was closed meanwhile
        label.value = text if display is None else display
        label.tooltip = text
        label.visible = bool(text)


def _breakable(text: str) -> str:
    """``text`` with a zero-width space after each ``/``, ``?`` and ``&``: a long URL wraps in a label."""
    for mark in "/?&":
        text = text.replace(mark, mark + "\u200b")
    return text


def remote_summary(mrcz: dict) -> str:
    """The File section's *Source* row: where a layer read from a URL came from, and how much was fetched.

    Parameters
    ----------
    mrcz
        The layer's ``metadata['mrcz']`` (its ``remote`` is the
        :class:`~napari_mrcz.codec.remote.RemoteFile` it reads through).

    Returns
    -------
    str
        The URL, its password and signature blanked (:func:`~napari_mrcz.codec.remote.shown`;
        zero-width spaces after its ``/`` let it wrap), and "fetched N MB of M MB";
        ``""`` for a layer not read from a URL.
    """
    source = mrcz.get("source")
    if not is_url(source):
        return ""
    text = _breakable(shown(source))
    remote = mrcz.get("remote")
    if remote is not None:
        text += f"\nfetched {_human(remote.fetched_bytes)} of {_human(remote.size)}"
    return text


def file_precision(mrcz: dict) -> str:
    """"lossy: N mantissa bits" for a file written with rounded mantissas, else "lossless".

    From the record in its JSON metadata (``napari_mrcz_precision``), else
    from a label of ours ("lossy: float mantissas rounded to ...").

    Parameters
    ----------
    mrcz
        The layer's ``metadata['mrcz']``.

    Returns
    -------
    str
        What the File section says of the file's precision.
    """
    said = describe((mrcz.get("meta") or {}).get(PRECISION_KEY))
    if said:
        return said
    labels = (mrcz.get("header") or {}).get("labels") or []
    return next((str(t) for t in labels if str(t).startswith("lossy:")), "lossless")


class Selection:
    """The image layer the widget shows, and the layers read from the same file.

    Parameters
    ----------
    viewer
        The napari viewer.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.layer: Any = None
        #: True while the widget itself changes the layer or its fields (their events are its own).
        self.syncing = False

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Change fields or layers without taking the changes for the user's edits."""
        before, self.syncing = self.syncing, True
        try:
            yield
        finally:
            self.syncing = before

    def mrcz(self) -> dict:
        """The layer's ``metadata['mrcz']`` (created empty for layers not read from a file)."""
        return self.layer.metadata.setdefault("mrcz", {})

    def family(self) -> list[Any]:
        """The layer and every image or labels layer sharing its ``metadata['mrcz']`` (amplitude, phase)."""
        from napari.layers import Image, Labels

        meta = self.layer.metadata.get("mrcz")
        others = [other for other in self.viewer.layers if isinstance(other, (Image, Labels))
                  and other != self.layer
                  and meta and other.metadata.get("mrcz") is meta and other.ndim == self.layer.ndim]
        return [self.layer, *others]

    def frame_axis(self) -> bool:
        """Whether the layer's first of three axes is frames (a stack), not z."""
        labels = list(getattr(self.layer, "axis_labels", []) or [])
        return self.layer.ndim >= 3 and (bool(self.mrcz().get("stack")) or labels[-3:-2] == ["frame"])


class Section:
    """A group of rows of the dock widget, shown and enabled together."""

    rows: list[Widget]

    def set_active(self, active: bool) -> None:
        """Show and enable the rows (``False``: hide and disable them, for layers this widget cannot show).

        Parameters
        ----------
        active
            Whether an image layer is selected.
        """
        for row in self.rows:
            row.enabled = active
            row.visible = active


class FileFacts(Section):
    """The layer's name and what its file is (for a URL: where, and how much was fetched); never edited."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.layer_name = Label(label="Layer", value=NO_LAYER)
        self.summary = Label(label="File", value="")
        self.origin = Label(label="Source", value="")
        self.rows = [self.layer_name, self.summary, self.origin]
        wrapped(*self.rows)  # text from the left of the value column, wrapped, as the fields below

    def show(self) -> None:
        """Show the selected layer's facts."""
        layer = self.selection.layer
        self.layer_name.value = layer.name
        self.summary.value = file_summary(layer, self.selection.frame_axis())
        source = self.selection.mrcz().get("source")
        self.origin.tooltip = shown(source) if is_url(source) else ""
        self.refresh()

    def refresh(self) -> None:
        """Show again how much of a remote layer's file has been fetched (cheap: on every frame step)."""
        layer = self.selection.layer
        text = remote_summary(layer.metadata.get("mrcz") or {}) if layer is not None else ""
        self.origin.value = text
        self.origin.visible = bool(text)

    def clear(self, layer: Any) -> None:
        """Say why nothing is shown: no layer, or one that is not an image.

        Parameters
        ----------
        layer
            The selected layer (``None``: none is).
        """
        self.layer_name.value = NO_LAYER if layer is None else \
            f"{layer.name}: a {layer.__class__.__name__.lower()} layer, not an image {NO_LAYER}"
        self.summary.value = ""
        self.origin.value = ""
        self.origin.visible = False


@dataclass
class Axis:
    """One spatial axis the widget shows a pixel size for."""

    index: int  #: -3, -2 or -1
    name: str  #: from the layer's axis labels (z, y, x where they are napari's defaults)
    unit: Any  #: the layer's unit of the axis
    per_unit: float | None  #: Å per unit, for lengths

    @property
    def kind(self) -> str:
        """``'length'``, ``'pixel'`` (no unit) or ``'other'`` (eV, 1/nm ...)."""
        if self.per_unit is not None:
            return "length"
        return "pixel" if unit_symbol(self.unit) == PIXELS else "other"


class PixelSizes(Section):
    """The pixel size of each spatial axis, shown and typed in one length unit.

    The unit is the widget's, not the layer's: lengths stay in the layer's
    own unit (Å, as the reader gives them), so layers overlay as they were.
    Axes without a length unit (pixels) show "px"; choosing a length unit
    then gives them that unit (stored in Å) with the sizes typed.
    """

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.fields = {axis: FloatSpinBox(label=f"Pixel size {name}", min=10.0 ** -DECIMALS["Å"], max=1e12,
                                          step=0.0001, value=1.0) for axis, name in AXIS_NAMES.items()}
        # Choices from a callable: magicgui resets a combo box's choices to its first ones when docked.
        self._choices = list(UNITS)
        self.unit = ComboBox(label="Length unit", choices=lambda *_: self._choices, value="Å")
        #: The unit lengths are shown and typed in.
        self.display = "Å"
        self.axes: dict[int, Axis] = {}
        self.rows = [*self.fields.values(), self.unit]
        for axis, field in self.fields.items():
            field.changed.connect(lambda *_, axis=axis: self._edited(axis))
        self.unit.changed.connect(self._unit_chosen)

    def set_active(self, active: bool) -> None:
        """Enable the rows; hide them all when inactive (:meth:`show` decides which rows a layer has).

        Parameters
        ----------
        active
            Whether an image layer is selected.
        """
        for row in self.rows:
            row.enabled = active
            if not active:
                row.visible = False

    def _axes(self) -> dict[int, Axis]:
        sel = self.selection
        layer = sel.layer
        labels, units = list(layer.axis_labels), list(layer.units)
        axes = {}
        for axis in AXIS_NAMES:
            if -axis > layer.ndim or (axis == -3 and sel.frame_axis()) or labels[axis] == "row":
                continue  # frames have no size; a spectrum's "row" is one the reader added
            name = AXIS_NAMES[axis] if labels[axis] == str(axis) else str(labels[axis])
            axes[axis] = Axis(axis, name, units[axis], angstrom(units[axis]))
        return axes

    def show(self) -> None:
        """Show the selected layer's pixel sizes in the widget's unit."""
        layer = self.selection.layer
        self.axes = self._axes()
        scale = [float(s) for s in layer.scale]
        with self.selection.quiet():
            for axis, field in self.fields.items():
                shown = self.axes.get(axis)
                field.visible = shown is not None
                if shown is None:
                    continue
                if shown.kind == "length":
                    symbol = self.display
                    value = scale[axis] * shown.per_unit / LENGTH_UNITS[self.display]
                else:
                    symbol, value = unit_symbol(shown.unit), scale[axis]
                decimals = DECIMALS.get(symbol, OTHER_DECIMALS)
                field.label = f"Pixel size {shown.name}"
                field.native.setDecimals(decimals)
                field.native.setMinimum(10.0 ** -decimals)  # a size of 0 makes napari's transforms singular
                field.native.setSuffix(f" {symbol}")
                field.native.setValue(value)
            kinds = {a.kind for a in self.axes.values()}
            self.unit.visible = bool(kinds & {"length", "pixel"})
            self._choices = [PIXELS, *UNITS] if "pixel" in kinds else list(UNITS)
            self.unit.reset_choices()
            self.unit.value = PIXELS if "pixel" in kinds else self.display

    def _edited(self, axis: int) -> None:
        sel = self.selection
        if sel.syncing or sel.layer is None or axis not in self.axes:
            return
        shown, value = self.axes[axis], float(self.fields[axis].value)
        if not value > 0:  # the field's minimum refuses it; a script may still try
            self.show()
            return
        size = value * LENGTH_UNITS[self.display] if shown.kind == "length" else None  # Å
        with sel.quiet():
            for member in sel.family():
                scale = [float(s) for s in member.scale]
                per_unit = angstrom(member.units[axis])
                scale[axis] = size / per_unit if size is not None and per_unit else value
                member.scale = scale

    def _unit_chosen(self, *_: Any) -> None:
        sel = self.selection
        if sel.syncing or sel.layer is None or self.unit.value == PIXELS:
            return
        chosen = self.unit.value
        pixels = [axis for axis, a in self.axes.items() if a.kind == "pixel"]
        if pixels:  # give the pixel axes this unit, with the sizes typed (stored in Å, as the reader's)
            typed = {axis: float(self.fields[axis].value) * LENGTH_UNITS[chosen] for axis in pixels}
            with sel.quiet():
                for member in sel.family():
                    scale, units = [float(s) for s in member.scale], list(member.units)
                    for axis, size in typed.items():
                        scale[axis], units[axis] = size, "angstrom"
                    member.units = units
                    member.scale = scale
        self.display = chosen
        self.show()


class Microscope(Section):
    """Voltage, C3 and gain, "not set" where the file has none; edits go to ``metadata['mrcz']``."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.voltage = _optional("Voltage", 0.0, 1e4, 0.1, " kV")
        self.c3 = _optional("C3", -1e4, 1e4, 0.01, " mm")
        self.gain = _optional("Gain", 0.0, 1e6, 0.001, " counts/e⁻")
        self.rows = [self.voltage, self.c3, self.gain]
        for field in self.rows:
            field.changed.connect(self._store)

    def show(self) -> None:
        """Show the selected layer's values."""
        meta = self.selection.mrcz()
        with self.selection.quiet():
            _set_optional(self.voltage, meta.get("voltage"))
            _set_optional(self.c3, meta.get("C3"))
            _set_optional(self.gain, meta.get("gain"))

    def _store(self, *_: Any) -> None:
        if self.selection.syncing or self.selection.layer is None:
            return
        meta = self.selection.mrcz()
        meta["voltage"], meta["C3"], meta["gain"] = (_optional_value(self.voltage),
                                                     _optional_value(self.c3), _optional_value(self.gain))


#: The microscope values "Apply to file" writes, and their units.
MICROSCOPE_UNITS = {"voltage": "kV", "C3": "mm", "gain": ""}
#: Units of the other values an edit reports.
EDIT_UNITS = {"pixelsize": "Å", **MICROSCOPE_UNITS}


def apply_refusal(mrcz: dict) -> str | None:
    """Why "Apply to file" cannot write a layer's header, or ``None`` where it can.

    Parameters
    ----------
    mrcz
        The layer's ``metadata['mrcz']`` (``{}`` for layers not read by this plugin).

    Returns
    -------
    str or None
        The button's tooltip where it is disabled: a URL, a DM file, a gzip
        or bzip2 file, or a layer not read from an MRC or MRCZ file.
    """
    source, kind = mrcz.get("source"), str(mrcz.get("format") or "")
    if not source or not kind:
        return "not read from a file: save it as MRC or MRCZ first"
    if is_url(source):
        return REMOTE_READ_ONLY
    if kind.startswith("DM"):
        return "DM files are read-only: save as MRC or MRCZ, then edit"
    if str(source).lower().endswith((".gz", ".bz2")):
        return "gzip/bzip2 files cannot be edited in place: decompress the file, open it and edit that"
    if kind not in ("MRC", "MRCZ"):
        return f"{kind} files cannot be edited in place"
    return None


def _differs(wanted: float | None, stored: float | None) -> bool:
    """Whether a value differs from the file's, as the header's float32 holds it (``None``: not set)."""
    if wanted is None or stored is None:
        return (wanted is None) != (stored is None)
    return bool(np.float32(wanted) != np.float32(stored))


def _file_facts(path: str) -> tuple[list[float], dict]:
    """The file's (z, y, x) pixel size in Å and its facts as the reader gives them (``metadata['mrcz']``)."""
    from .codec.source import open_image

    source = open_image(path)  # headers and indexes only
    try:
        return [float(v) for v in source.handle.header.pixelsize], source.mrcz
    finally:
        source.handle.close()


def apply_to_file(path: str, sizes: dict[int, float],
                  microscope: dict[str, float | None]) -> tuple[HeaderEdit, dict]:
    """Write pixel sizes and microscope values into an MRC or MRCZ file's header, in place (a worker's job).

    Only values that differ from the file's are given to
    :func:`~napari_mrcz.codec.header_edit.edit_header`, so a field the user
    left alone keeps its bytes.

    Parameters
    ----------
    path
        The file.
    sizes
        Å by (z, y, x) index: the header's axes to change (the others keep the file's sizes).
    microscope
        ``voltage`` (kV), ``C3`` (mm), ``gain``; ``None`` is "not set" (0 in the file).

    Returns
    -------
    tuple
        The :class:`~napari_mrcz.codec.header_edit.HeaderEdit`, and the
        file's facts read again after it (the new ``metadata['mrcz']`` values).

    Raises
    ------
    MRCFileError
        A file that cannot be edited, or a value it refuses.
    OSError
        The file cannot be read or written.
    """
    from .codec.header_edit import edit_header

    pixelsize, before = _file_facts(path)
    changes: dict[str, Any] = {}
    wanted = list(pixelsize)
    for k, size in sizes.items():
        wanted[k] = float(size)
    if any(_differs(a, b) for a, b in zip(wanted, pixelsize, strict=True)):
        changes["pixelsize"] = wanted
    for name, value in microscope.items():
        if _differs(value, before.get(name)):
            changes[name] = 0.0 if value is None else float(value)  # MRC's 0 is "not set"
    done = edit_header(path, **changes)
    return done, _file_facts(path)[1]


def _edit_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        values = [f"{v:g}" if isinstance(v, float) else str(v) for v in value]
        return values[0] if values and len(set(values)) == 1 else ", ".join(values)
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_edit(done: HeaderEdit) -> str:
    """The result line of "Apply to file": ``applied in place: pixelsize 1 → 13.48 Å; voltage 0 → 300 kV``.

    Parameters
    ----------
    done
        What :func:`~napari_mrcz.codec.header_edit.edit_header` did.

    Returns
    -------
    str
        One line.
    """
    if done.how == "unchanged":
        return "nothing to apply: the file says this already"
    parts = []
    for name, after in done.after.items():
        unit = EDIT_UNITS.get(name, "")
        parts.append(f"{name} {_edit_value(done.before[name])} → {_edit_value(after)}"
                     + (f" {unit}" if unit else ""))
    return f"applied {done.how}: " + "; ".join(parts)


class FileEdit(Section):
    """*Apply to file*: the pixel sizes, voltage, C3 and gain written into the header of the layer's file.

    The header is written in place through the codec's journal (safe against
    a crash), off the event loop (an fsync may take long on a network disk);
    the data bytes are not touched, so a lazily read layer keeps reading its
    frames where they were. Then ``metadata['mrcz']``, shared by every layer
    read from the file, is updated from the file read again, and ``edited``
    is called with it. Only for MRC and MRCZ files (:func:`apply_refusal`).

    Parameters
    ----------
    selection
        The widget's selected layer.
    pixels
        The pixel size section, whose axes say which are lengths.
    edited
        Called (in the main thread) with the ``metadata['mrcz']`` updated after an edit.
    """

    def __init__(self, selection: Selection, pixels: PixelSizes, edited: Callable[[dict], None]) -> None:
        self.selection = selection
        self.pixels = pixels
        self.edited = edited
        self.button = PushButton(text="Apply to file")
        self.result = Label(label="", value="")
        self.rows = [self.button, self.result]
        self._worker: Any = None
        self._result_for: dict | None = None  # the metadata['mrcz'] the result line is of
        self.button.changed.connect(lambda *_: self.apply())
        wrapped(self.result)
        self.result.visible = False

    @property
    def busy(self) -> bool:
        """Whether an edit is running (its end not yet handled)."""
        return self._worker is not None

    def set_active(self, active: bool) -> None:
        """Keep the button in place (disabled when inactive, as the other buttons); hide the result line.

        :meth:`show` shows it again for a layer of the file it is about.

        Parameters
        ----------
        active
            Whether a layer is selected.
        """
        self.button.enabled = active and self._worker is None
        if not active:
            self.result.visible = False

    def show(self) -> None:
        """Enable the button for layers read from an MRC or MRCZ file; its tooltip says why not, or which."""
        mrcz = self.selection.layer.metadata.get("mrcz") or {}
        why = apply_refusal(mrcz)
        self.button.enabled = why is None and self._worker is None
        self.button.tooltip = why or (f"Write the pixel sizes, voltage, C3 and gain into the header of "
                                      f"{mrcz['source']}, in place (the data is not touched)")
        if mrcz is not self._result_for:
            self._say("", None)
        else:
            self.result.visible = bool(self.result.value)

    def _say(self, text: str, mrcz: dict | None) -> None:
        self._result_for = mrcz if text else None
        say(self.result, text)

    def header_sizes(self) -> dict[int, float]:
        """The pixel sizes the header gets from the layer, in Å, by (z, y, x) index.

        Only spatial length axes: a stack's frame axis has no pixel size (the
        file keeps its z), nor has a 2D image a z axis; axes with no length
        unit (px, eV) are left as the file has them.
        """
        layer = self.selection.layer
        scale = [float(s) for s in layer.scale]
        return {3 + axis: scale[axis] * a.per_unit for axis, a in self.pixels.axes.items()
                if a.kind == "length"}

    def apply(self) -> Any:
        """Write the layer's pixel sizes, voltage, C3 and gain into its file's header, in a worker thread.

        The result line says what changed ("applied in place: pixelsize 1 →
        13.48 Å") or why nothing was (errors also go to napari's notifications).

        Returns
        -------
        FunctionWorker or None
            The started worker; ``None`` where the layer's file cannot be
            edited (the result line says why) or an edit runs already.
        """
        from napari.qt.threading import create_worker

        layer = self.selection.layer
        if layer is None or self._worker is not None:
            return None
        mrcz = layer.metadata.get("mrcz") or {}
        why = apply_refusal(mrcz)
        if why is not None:
            self._say(why, mrcz)
            return None
        microscope = {name: mrcz.get(name) for name in MICROSCOPE_UNITS}
        worker = create_worker(apply_to_file, str(mrcz["source"]), self.header_sizes(), microscope,
                               _start_thread=False,
                               _connect={"returned": lambda result: self._applied(mrcz, result),
                                         "errored": lambda exc: self._failed(mrcz, exc),
                                         "finished": lambda: self._ended(worker)})
        self._worker = worker
        self.button.enabled = False
        self._say("applying…", mrcz)
        worker.start()
        return worker

    def _applied(self, mrcz: dict, result: tuple[HeaderEdit, dict]) -> None:
        done, facts = result
        mrcz.update({key: value for key, value in facts.items() if key != "save"})  # the save settings stay
        self._say(describe_edit(done), mrcz)
        self.edited(mrcz)

    def _failed(self, mrcz: dict, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self._say(f"not applied: {exc}", mrcz)
        show_error(f"Apply to file: {exc}")

    def _ended(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None
        with contextlib.suppress(RuntimeError):
            if self.selection.layer is not None:
                self.show()


class SaveSettings(Section):
    """How a save to MRCZ stores the layer (``metadata['mrcz']['save']``), and what that would weigh.

    Compressor, clevel and *Precision*: lossless (the default), ``auto``
    (each section's mantissas rounded to the fewest bits whose RMS error is
    at most *Max error* x its noise) or a number of mantissa bits. Stored as
    ``compressor``, ``clevel`` and, for lossy choices, ``keepbits``
    (``'auto'`` or the bits) and ``max_error`` (for ``'auto'``). Integer layers have nothing to round: the
    control is disabled and says so. The *Estimate* row (:class:`SizeEstimate`)
    follows every change.
    """

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.heading = Label(label="", value="Save as MRCZ… will use:")
        self.compressor = ComboBox(label="Compressor", choices=COMPRESSORS, value=DEFAULT_SAVE_COMPRESSOR)
        self.clevel = SpinBox(label="clevel", min=1, max=9, value=DEFAULT_SAVE_CLEVEL)
        self.precision = ComboBox(label="Precision", choices=PRECISIONS, value=LOSSLESS)
        self.keepbits = SpinBox(label="Mantissa bits", min=0, max=MANTISSA_BITS["float32"],
                                value=DEFAULT_KEEPBITS)
        self.max_error = FloatSpinBox(label="Max error", min=0.0001, max=1.0, step=0.005,
                                      value=DEFAULT_MAX_ERROR)
        self.max_error.native.setDecimals(4)
        self.max_error.native.setSuffix(" × noise")
        self.precision_note = Label(label="", value="")
        self.estimate = SizeEstimate(selection)
        self.rows = [self.heading, self.compressor, self.clevel, self.precision, self.keepbits,
                     self.max_error, self.precision_note, self.estimate.label]
        for field in (self.compressor, self.clevel, self.precision, self.keepbits, self.max_error):
            field.changed.connect(self._store)
        wrapped(self.precision_note, self.estimate.label)

    def set_active(self, active: bool) -> None:
        """Enable the rows; hide them all when inactive (:meth:`show` decides which a layer has).

        Parameters
        ----------
        active
            Whether an image layer is selected.
        """
        super().set_active(active)
        if not active:
            self.estimate.clear()

    def show(self) -> None:
        """Show the selected layer's save settings, and estimate what they give."""
        save = self.selection.mrcz().get("save")
        compressor = DEFAULT_SAVE_COMPRESSOR if save is None else save.get("compressor") or "none"
        save = save or {}  # none: a layer not from a file, saved as zstd at level 1
        bits = self.mantissa_bits()
        keepbits = save.get("keepbits") if bits is not None else None
        max_error = save.get("max_error")
        with self.selection.quiet():
            self.compressor.value = compressor
            self.clevel.value = int(save.get("clevel") or DEFAULT_SAVE_CLEVEL)
            self.keepbits.max = bits if bits is not None else MANTISSA_BITS["float32"]
            if keepbits is None:
                self.precision.value = LOSSLESS
            elif keepbits == AUTO:
                self.precision.value = AUTO
            else:
                self.precision.value = BITS
                self.keepbits.value = min(max(int(keepbits), 0), self.keepbits.max)
            self.max_error.value = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
        self._follow_choice()

    def mantissa_bits(self) -> int | None:
        """The mantissa bits of the type the layer is saved as (23 for float32, float64); None: integers."""
        try:
            stored = stored_dtype(full_size(self.selection.layer).dtype)
        except TypeError:  # a type MRC cannot store: the save says so
            return None
        return MANTISSA_BITS.get(stored.name)

    def chosen(self) -> tuple[int | str | None, float]:
        """The ``keepbits`` (``None``: lossless) and ``max_error`` the fields say."""
        choice = self.precision.value if self.mantissa_bits() is not None else LOSSLESS
        keepbits = {LOSSLESS: None, AUTO: AUTO}.get(choice, int(self.keepbits.value))
        return keepbits, float(self.max_error.value)

    def _follow_choice(self) -> None:
        """The rows the choice needs (bits or max error), its lossy label, and a new estimate."""
        layer = self.selection.layer
        bits = self.mantissa_bits()
        choice = self.precision.value
        rgb = getattr(layer, "rgb", False)  # labels layers have none
        self.precision.enabled = bits is not None and not rgb
        self.keepbits.visible = bits is not None and choice == BITS
        self.max_error.visible = bits is not None and choice == AUTO
        if bits is None:
            kind = np.dtype(full_size(layer).dtype).name
            self.precision_note.value = f"lossless: {kind} values are integers, stored exactly already"
        elif choice == AUTO:
            self.precision_note.value = (f"lossy: fewest mantissa bits (of {bits}) per section with RMS "
                                         f"error ≤ {self.max_error.value:g} × noise")
        elif choice == BITS:
            self.precision_note.value = f"lossy: {int(self.keepbits.value)} mantissa bits (of {bits})"
        else:
            self.precision_note.value = "lossless: every value saved exactly"
        self.precision.native.setToolTip(self.precision_note.value)
        if not rgb:
            keepbits, max_error = self.chosen()
            compressor = None if self.compressor.value == "none" else self.compressor.value
            self.estimate.request(compressor or DEFAULT_SAVE_COMPRESSOR, int(self.clevel.value), keepbits,
                                  max_error)
        else:
            self.estimate.clear()

    def _store(self, *_: Any) -> None:
        if self.selection.syncing or self.selection.layer is None:
            return
        keepbits, max_error = self.chosen()
        save: dict[str, Any] = {
            "compressor": None if self.compressor.value == "none" else self.compressor.value,
            "clevel": int(self.clevel.value)}
        if keepbits is not None:  # lossless: no key at all, as files open
            save["keepbits"] = keepbits
        if keepbits == AUTO:
            save["max_error"] = max_error
        self.selection.mrcz()["save"] = save
        self._follow_choice()


class SizeEstimate:
    """The *Estimate* row: size on disk and ratio of a save, from one section compressed off the event loop.

    The middle section of the layer (at full size) is stored and compressed
    as the writer would (:func:`~napari_mrcz.codec.estimate.estimate_section`;
    bands of rows of a section over 8 MB) in a worker thread, one at a time:
    requests that come while it runs (the user is still turning a spin box)
    are merged into one run after it. The section read is kept for the next
    request on the same layer, so a new clevel or precision compresses again
    without reading again.

    Parameters
    ----------
    selection
        The widget's selected layer.
    """

    #: Milliseconds a request waits for the next (the arrows of a spin box held down).
    DELAY_MS = 120

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.label = Label(label="Estimate", value="")
        self._wanted: tuple | None = None  # (key, data, index, n, settings) of the last request
        self._shown: tuple[tuple, str] | None = None  # the key whose result the label shows, and its text
        self._worker: Any = None
        self._cached: tuple[tuple, np.ndarray] | None = None  # (data id, index) -> the section read
        self._timer = QTimer(self.label.native)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._start)

    @property
    def busy(self) -> bool:
        """Whether an estimate is waiting or being computed."""
        return self._worker is not None or self._timer.isActive()

    def clear(self) -> None:
        """Show nothing (no layer, or one that cannot be saved); a running estimate is then ignored."""
        self._wanted = self._shown = self._cached = None
        self._timer.stop()
        self.label.value = ""

    def request(self, compressor: str, clevel: int, keepbits: int | str | None, max_error: float) -> None:
        """Estimate the selected layer saved with these settings (soon, in a worker thread).

        Parameters
        ----------
        compressor, clevel
            The blosc codec and its level.
        keepbits, max_error
            The precision (``None``: lossless), as :func:`~napari_mrcz.codec.mrc.writeMRC` takes them.
        """
        data = full_size(self.selection.layer)
        data = getattr(data, "__wrapped__", data)  # napari's proxy of plugin objects
        shape = tuple(int(s) for s in data.shape)
        index = tuple(s // 2 for s in shape[:-2])  # the middle section (of the middle volume)
        n = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
        settings = (compressor, int(clevel), keepbits, float(max_error))
        key = (id(data), shape, np.dtype(data.dtype).str, settings)
        if self._wanted is not None and self._wanted[1] is not data:
            self._shown = None  # another layer (its id may be a freed one's)
        self._wanted = (key, data, index, n, settings)
        if self._shown is not None and key == self._shown[0]:
            self._timer.stop()
            self.label.value = self._shown[1]
            return
        self.label.value = "estimating…"
        self._timer.start(self.DELAY_MS)

    def _section(self, data: Any, index: tuple) -> np.ndarray:
        """The section read (in the worker thread; one read per layer)."""
        ident = (id(data), index)
        cached = self._cached
        if cached is None or cached[0] != ident:
            self._cached = cached = None  # never two sections in memory at once
            cached = (ident, np.atleast_2d(np.asarray(data[index] if index else data)))
            self._cached = cached
        return cached[1]

    def _start(self) -> None:
        from napari.qt.threading import create_worker

        if self._worker is not None or self._wanted is None:
            return  # the end of the running one starts the next
        key, data, index, n, settings = self._wanted

        def measure() -> tuple:
            return key, n, estimate_section(self._section(data, index), *settings)

        worker = create_worker(measure, _start_thread=False)
        worker.returned.connect(self._returned)
        worker.errored.connect(lambda exc: self._failed(key, exc))
        worker.finished.connect(lambda: self._ended(worker))
        self._worker = worker
        worker.start()

    def _returned(self, result: tuple) -> None:
        key, n, measured = result
        if self._wanted is None or key != self._wanted[0]:
            return  # the settings or the layer changed meanwhile: the next run tells
        part = "" if measured.fraction >= 1 else f"{measured.fraction:.0%} of "
        bits = f": {measured.keepbits} mantissa bits" if key[-1][2] == AUTO else ""
        self._show(key, f"≈ {_human(measured.file_size(n))} on disk, ratio {measured.ratio(n):.1f} "
                        f"(from {part}1 section{bits})")

    def _failed(self, key: tuple, exc: Exception) -> None:
        if self._wanted is not None and key == self._wanted[0]:
            self._show(key, f"no estimate: {exc}")

    def _show(self, key: tuple, text: str) -> None:
        self._shown = (key, text)
        with contextlib.suppress(RuntimeError):  # the widget was closed meanwhile
            self.label.value = text

    def _ended(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None
        if self._wanted is not None and (self._shown is None or self._wanted[0] != self._shown[0]):
            with contextlib.suppress(RuntimeError):
                self._start()  # asked for again while it ran


class Actions(Section):
    """The buttons: save, load (and cancel it), show as labels, and the header inspector."""

    def __init__(self) -> None:
        self.save_button = PushButton(text="Save as MRCZ…")
        self.load_button = PushButton(text="Load into memory")
        self.cancel_button = PushButton(text="Cancel loading", visible=False)
        self.labels_button = PushButton(text="Show as labels")
        self.labels_button.tooltip = ("A labels layer on the same data (no copy): for integer images, "
                                      "and float images of only 0 and 1")
        self.inspector_button = PushButton(text="Header inspector ▸")
        self.rows = [self.save_button, self.load_button, self.cancel_button, self.labels_button,
                     self.inspector_button]

    def set_active(self, active: bool) -> None:
        """Enable the buttons (they stay in place, disabled, for layers this widget cannot show).

        "Cancel loading" stays enabled while it is shown, whatever layer is selected.

        Parameters
        ----------
        active
            Whether an image layer is selected.
        """
        for row in self.rows:
            if row is not self.cancel_button:
                row.enabled = active


def _named(exc: BaseException, url: str) -> str:
    """An error's message naming ``url`` once, its password, signature or token blanked."""
    message, name = str(exc), shown(url)
    if url != name:
        message = message.replace(url, name)
    return message if name in message else f"{name}: {message}"


def _reach(url: str) -> str | None:
    """Ask the server for the file's first block, and let it go (a worker's job: the tries may take long).

    Parameters
    ----------
    url
        The file's URL.

    Returns
    -------
    str or None
        ``None`` where the server gave it; else why not (an unreachable or
        refusing server, no such file, what reading URLs needs not
        installed), naming the URL with its secrets blanked.
    """
    try:
        RemoteFile(url).close()
    except (OSError, ValueError, ImportError) as exc:  # RemoteFileError, MRCFileError, the extra missing
        return _named(exc, url)
    return None


class OpenURL(Section):
    """*Open URL…*: a file on a web server or in an object store opened as a layer, as a local one opens.

    napari's *File > Open* takes local files only. The server is asked for
    the file first in a worker thread, so that an unreachable server or a
    missing file (found out after the codec's tries, up to many seconds)
    never freezes the viewer; then ``viewer.open(url, plugin="napari-mrcz")``
    opens it in the main thread, reading its header and the frame shown, as
    for a local file. Errors go to napari's notifications and to the
    section's line, naming the URL with its password and signature blanked.
    The section needs no layer: it stays enabled.

    Parameters
    ----------
    viewer
        The napari viewer to open layers in.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.url = LineEdit(label="URL", value="")
        self.url.native.setPlaceholderText("https://… or s3://…")
        self.url.tooltip = ("A file on a web server or in an object store (https://, s3://): read by Range "
                            "requests as it is shown, never downloaded whole")
        self.button = PushButton(text="Open URL…")
        self.result = Label(label="", value="")
        self.rows = [self.url, self.button, self.result]
        #: The layers the last open added.
        self.opened: list[Any] = []
        self._worker: Any = None
        self.button.changed.connect(lambda *_: self.open())
        self.url.native.returnPressed.connect(self.open)
        wrapped(self.result)
        self.result.visible = False

    @property
    def busy(self) -> bool:
        """Whether an open is under way (the server being asked)."""
        return self._worker is not None

    def set_active(self, active: bool) -> None:
        """Nothing to do: opening a URL needs no selected layer.

        Parameters
        ----------
        active
            Whether an image layer is selected (ignored).
        """

    def _say(self, text: str) -> None:
        say(self.result, text, _breakable(text))

    def open(self, url: str | None = None) -> Any:
        """Open ``url`` (default: the field's) in the viewer: the server is asked in a worker thread first.

        Parameters
        ----------
        url
            An ``https://``, ``http://`` or ``s3://`` URL of an MRC, MRCZ or DM file.

        Returns
        -------
        FunctionWorker or None
            The started worker (the layers are added when it has returned:
            :attr:`opened`); ``None`` for text that is no URL (the section's
            line says so). While an open runs, the running worker.
        """
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return self._worker
        url = (self.url.value if url is None else url).strip()
        if not url:
            self._say("type the URL of a file: https://… or s3://…")
            return None
        if not is_url(url):
            self._say(f"{shown(url)}: not a URL (https://, s3://); open local files with File > Open")
            return None
        worker = create_worker(_reach, url, _start_thread=False,
                               _connect={"returned": lambda problem: self._add(url, problem),
                                         "finished": lambda: self._ended(worker)})
        self._worker = worker
        self.button.enabled = False
        self._say(f"opening {shown(url)}…")
        worker.start()
        return worker

    def _add(self, url: str, problem: str | None) -> None:
        """The server gave the file (``problem`` is ``None``): open it in the main thread; else say why."""
        if problem is None:
            try:
                self.opened = self.viewer.open(url, plugin="napari-mrcz")
            except Exception as exc:  # noqa: BLE001 - whatever the reader or napari raise is told, not raised
                problem = _named(exc, url)
        if problem is None:
            self._say(f"opened {shown(url)}")
            return
        from napari.utils.notifications import show_error

        self._say(f"not opened: {problem}")
        show_error(f"Open URL: {problem}")

    def _ended(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None
        with contextlib.suppress(RuntimeError):
            self.button.enabled = True


def replace_with_array(viewer: napari.viewer.Viewer, layer: Any, array: np.ndarray) -> Any:
    """Put a single-scale layer holding ``array`` in the place of ``layer`` (napari cannot make one so).

    Name, scale, units, axis labels, translation, contrast, colormap and the
    rest of the layer's state are kept, and ``metadata`` is the same dict.

    Parameters
    ----------
    viewer
        The viewer holding ``layer``.
    layer
        A multiscale image layer.
    array
        Its full-size data.

    Returns
    -------
    napari.layers.Image or napari.layers.Labels
        The new layer (of the old one's kind), at the old one's place in the layer list and selected.
    """
    from napari.layers import Image, Labels

    _, state, _ = layer.as_layer_data_tuple()
    state = {key: value for key, value in dict(state).items()
             if key not in ("data", "multiscale", "locked_data_level")}
    state["metadata"] = layer.metadata
    new = (Labels if isinstance(layer, Labels) else Image)(array, multiscale=False, **state)
    layers = viewer.layers
    index, step, name = list(layers).index(layer), viewer.dims.current_step, layer.name
    layers.insert(index, new)  # before the old one goes: the view never sees an empty viewer
    layers.remove(layer)
    new.name = name
    viewer.dims.current_step = step
    layers.selection.active = new
    return new


class MRCZWidget(Container):
    """File facts, pixel sizes, voltage, C3, gain, save settings, actions and header of the selected layer.

    Parameters
    ----------
    viewer
        The napari viewer whose selected image layer the widget follows.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.selection = Selection(viewer)
        self._load: Any = None  # the running "Load into memory" worker, and its layer
        self._load_layer: Any = None
        self._load_cancelled = False
        self._saves: set[Any] = set()  # running "Save as MRCZ…" workers
        self.file = FileFacts(self.selection)
        self.pixels = PixelSizes(self.selection)
        self.microscope = Microscope(self.selection)
        self.file_edit = FileEdit(self.selection, self.pixels, self._file_edited)
        self.save_settings = SaveSettings(self.selection)
        self.actions = Actions()
        self.open_url = OpenURL(viewer)
        self.sections: list[Section] = [self.file, self.pixels, self.microscope, self.file_edit,
                                        self.save_settings, self.actions, self.open_url]
        # The rows by name, as scripts and tests know them.
        self.layer_name, self.summary = self.file.layer_name, self.file.summary
        self.pixel_z, self.pixel_y, self.pixel_x = (self.pixels.fields[a] for a in (-3, -2, -1))
        self.units = self.pixels.unit
        self.voltage, self.c3, self.gain = self.microscope.voltage, self.microscope.c3, self.microscope.gain
        self.apply_button, self.apply_result = self.file_edit.button, self.file_edit.result
        s = self.save_settings
        self.save_heading, self.compressor, self.clevel = s.heading, s.compressor, s.clevel
        self.precision, self.keepbits, self.max_error = s.precision, s.keepbits, s.max_error
        self.precision_note, self.estimate = s.precision_note, s.estimate.label
        a = self.actions
        self.save_button, self.load_button = a.save_button, a.load_button
        self.cancel_button, self.inspector_button = a.cancel_button, a.inspector_button
        self.labels_button = a.labels_button
        self._guarded: Any = None  # the labels layer whose painting tools are watched
        self.extend([row for section in self.sections for row in section.rows])
        self.inspector = HeaderInspector()
        self.inspector.setVisible(False)
        self.native.layout().addWidget(self.inspector)
        self.save_button.changed.connect(self._ask_save)
        self.load_button.changed.connect(lambda *_: self.load_into_memory())
        self.cancel_button.changed.connect(lambda *_: self.cancel_loading())
        self.labels_button.changed.connect(lambda *_: self.show_as_labels())
        self.inspector_button.changed.connect(lambda *_: self.show_inspector(not self.inspector.isVisible()))
        viewer.layers.selection.events.active.connect(self._follow)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.dims.events.current_step.connect(self._step)
        layer_saved.connect(self._file_saved)
        self._follow()

    @property
    def layer(self) -> Any:
        """The image or labels layer shown (``None`` when the selected layer is neither)."""
        return self.selection.layer

    # -- following the selected layer -----------------------------------------
    def _follow(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        active = self.viewer.layers.selection.active
        old = self.selection.layer
        if old is not None:
            for event in (old.events.scale, old.events.units, old.events.name):
                event.disconnect(self._show)
        if self._guarded is not None:
            self._guarded.events.mode.disconnect(self._paint_guard)
            self._guarded = None
        self.selection.layer = active if isinstance(active, (Image, Labels)) else None
        if isinstance(active, Labels):
            self._guarded = active
            active.events.mode.connect(self._paint_guard)
        if self.layer is not None:
            for event in (self.layer.events.scale, self.layer.events.units, self.layer.events.name):
                event.connect(self._show)
        self._show()
        self.inspector.show_metadata(self.layer.metadata.get("mrcz") if self.layer is not None else None)
        self._step()

    def mrcz(self) -> dict:
        """The selected layer's ``metadata['mrcz']`` (created empty for layers not read from a file)."""
        return self.selection.mrcz()

    def _show(self, *_: Any) -> None:
        if self.selection.syncing:
            return
        shown = self.layer is not None
        for section in self.sections:
            section.set_active(shown)
        self.file.layer_name.enabled = True
        self.file.layer_name.visible = True
        if not shown:
            self.file.clear(self.viewer.layers.selection.active)
            return
        for section in (self.file, self.pixels, self.microscope, self.file_edit, self.save_settings):
            section.show()
        self.load_button.enabled = self._load is None and not in_memory(self.layer)
        self.labels_button.enabled = labels_source(self.layer)
        self._align_labels()
        QTimer.singleShot(0, self._align_labels)  # again once napari's style applies (first show)

    def _align_labels(self) -> None:
        """Give every row's label the width of the widest, measured in the font napari's style gives it.

        magicgui measures labels in the application's default font; napari's
        stylesheet draws them larger, so rows would start at different places.
        """
        labels = [row._label_widget.native for row in (w._labeled_widget() for w in self) if row is not None]
        for label in labels:
            label.ensurePolished()
        width = max((label.fontMetrics().horizontalAdvance(label.text()) for label in labels), default=0)
        for label in labels:
            label.setFixedWidth(width + 8)

    def _summarise(self) -> None:
        if self.layer is not None:
            self.file.show()

    @ensure_main_thread
    def _file_saved(self, path: str, mrcz: dict) -> None:
        """A save (here or by *File > Save*) may have replaced the shown file: show what it is now."""
        if self.layer is not None and self.layer.metadata.get("mrcz") is mrcz:
            self._summarise()

    def _file_edited(self, mrcz: dict) -> None:
        """"Apply to file" wrote the header, and ``mrcz`` holds what it says now: show that."""
        if self.layer is not None and self.layer.metadata.get("mrcz") is mrcz:
            self._show()
            self.inspector.show_metadata(mrcz)
            self._step()

    def _step(self, *_: Any) -> None:
        """Show the per-section record of the section on the slider (and what a URL's layer has fetched)."""
        self.file.refresh()
        if self.layer is None or self.layer.ndim < 3:
            self.inspector.show_section(0)
            return
        try:
            k = int(round(float(self.layer.world_to_data(self.viewer.dims.point)[-3])))
        except (IndexError, ValueError):
            k = 0
        self.inspector.show_section(min(max(k, 0), full_size(self.layer).shape[-3] - 1))

    def show_inspector(self, visible: bool = True) -> None:
        """Open (or close) the header inspector.

        Parameters
        ----------
        visible
            ``True`` opens it, ``False`` closes it.
        """
        self.inspector.setVisible(visible)
        self.inspector_button.text = "Header inspector ▾" if visible else "Header inspector ▸"

    # -- actions ----------------------------------------------------------------
    def save_dialog(self) -> Any:
        """The "Save as MRCZ" file dialog: ``<layer name>.mrcz`` beside the source proposed, never the source.

        Returns
        -------
        QFileDialog
            Not yet shown.
        """
        from qtpy.QtWidgets import QFileDialog

        start = proposed_save_path(self.layer.name, self.mrcz().get("source"))
        title = "Save as MRCZ"
        if np.dtype(getattr(self.layer.data, "dtype", np.float32)) == np.float16:
            title += " (float16: python-mrcz 0.6.0 cannot read it; mrcfile, IMOD and napari-mrcz can)"
        dialog = QFileDialog(self.native, title, os.path.dirname(start), "MRCZ (*.mrcz)")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setDefaultSuffix("mrcz")
        dialog.selectFile(os.path.basename(start))
        return dialog

    def _ask_save(self, *_: Any) -> None:
        if self.layer is None:
            return
        dialog = self.save_dialog()
        if dialog.exec() and dialog.selectedFiles():
            self.save_as(dialog.selectedFiles()[0])

    @property
    def busy(self) -> bool:
        """Whether a load, save, "Apply to file" or "Open URL…" started here runs (end not yet handled)."""
        return self._load is not None or bool(self._saves) or self.file_edit.busy or self.open_url.busy

    def save_as(self, path: str) -> Any:
        """Save the selected layer as MRCZ in a worker thread; returns the started worker.

        :attr:`busy` stays true until the worker's end has been handled here;
        the File section then shows what the file is, if it was the layer's own.

        Parameters
        ----------
        path
            The file to write.

        Returns
        -------
        FunctionWorker
            The started worker.
        """
        from napari.qt.threading import create_worker

        layer = self.layer
        from napari.layers import Labels

        attributes = {"name": layer.name, "scale": list(layer.scale), "units": list(layer.units),
                      "multiscale": layer.multiscale, "axis_labels": list(layer.axis_labels),
                      "metadata": layer.metadata, "rgb": getattr(layer, "rgb", False)}
        kind = "labels" if isinstance(layer, Labels) else "image"
        worker = create_worker(save_layer, path, layer.data, attributes, True, kind, _start_thread=False)
        self._saves.add(worker)
        worker.finished.connect(lambda: self._saves.discard(worker))
        worker.start()
        return worker

    def load_into_memory(self) -> Any:
        """Decode the whole stack in a worker thread (with a progress bar); returns the worker.

        The layer then holds one writable numpy array: its data is replaced
        in the main thread once the worker has returned, and a multiscale
        layer is replaced by a single-scale one (napari cannot change a
        layer's kind) with the same name, place, scale, units, contrast and
        metadata. Not if :meth:`cancel_loading` was called before: a cancel
        is never lost, however late in the load it comes. While a load runs,
        calling this again returns the running worker.

        Returns
        -------
        GeneratorWorker or None
            ``None`` where there is nothing to load (no image layer, or one
            in memory already).
        """
        from napari.qt.threading import create_worker

        layer = self.layer
        if self._load is not None:
            return self._load
        if layer is None or in_memory(layer):
            return None
        data = full_size(layer)
        n = int(data.shape[0])

        def decode():
            out = np.empty(data.shape, dtype=np.dtype(data.dtype).newbyteorder("="))
            for i in range(n):
                out[i] = data[i]
                yield i + 1
            return out

        worker = create_worker(decode, _progress={"total": n, "desc": f"Loading {layer.name}"},
                               _start_thread=False)

        def loaded(array: np.ndarray) -> None:
            if self._load is not worker or self._load_cancelled:
                return
            if layer.multiscale:
                self._load_layer = None  # its removal is no cancel
                replace_with_array(self.viewer, layer, array)
            else:
                layer.data = array
                if layer == self.layer:  # napari hands plugins proxies: compare, not `is`
                    self._summarise()

        def ended() -> None:
            if self._load is worker:
                self._load = self._load_layer = None
                self.cancel_button.visible = False
                if self.layer is not None:
                    self.load_button.enabled = not in_memory(self.layer)

        worker.returned.connect(loaded)
        worker.finished.connect(ended)
        self._load, self._load_layer, self._load_cancelled = worker, layer, False
        self.cancel_button.visible = True
        self.load_button.enabled = False
        worker.start()
        return worker

    def cancel_loading(self) -> None:
        """Stop a running "Load into memory"; the layer stays lazy."""
        if self._load is not None:
            self._load_cancelled = True
            self._load.quit()

    def show_as_labels(self) -> Any:
        """Add a labels layer on the selected image's data: the same array, no copy.

        Integer (and bool) images give their very data object (``labels.data
        is image.data``; a multiscale image its full-size level: its coarse
        levels are block means, which are no labels). A float image must hold
        only 0 and 1 (one pass over it): napari's labels are integers, so it
        gives a uint8 view of the same data (:class:`~napari_mrcz.codec.lazy.LazyCast`),
        or a uint8 copy of an array in memory. Same scale, units, axis labels,
        position and metadata; named ``<name> labels``. Data read from its
        file as it is shown cannot be painted before "Load into memory": a
        notification says so.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (selected); ``None`` for a layer that is no such
            image, or a float image with other values (a warning says so).
        """
        from napari.utils.notifications import show_info, show_warning

        layer = self.layer
        if not labels_source(layer):
            return None
        data = full_size(layer)
        if np.dtype(data.dtype).kind == "f":
            lo, hi, whole = value_range(data.shape[0] if data.ndim >= 3 else 1,
                                        lambda i: data[i] if data.ndim >= 3 else data)
            if not (whole and lo >= 0 and hi <= 1):
                show_warning(f"{layer.name} has values other than 0 and 1 (from {lo:g} to {hi:g}): "
                             "only integer images and 0/1 masks show as labels")
                return None
            copy = isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
            data = data.astype(np.uint8) if copy else LazyCast(data, np.uint8)
        new = self.viewer.add_labels(data, name=f"{layer.name} labels", scale=list(layer.scale),
                                     units=list(layer.units), axis_labels=list(layer.axis_labels),
                                     translate=list(layer.translate), metadata=layer.metadata)
        if not writable(full_size(new)):
            show_info(f"{new.name} shares {layer.name}'s data, read from its file as it is shown: "
                      "to paint it, \"Load into memory\" first")
        return new

    def _paint_guard(self, *_: Any) -> None:
        """A painting tool chosen for a labels layer read as it is shown: say to load it, and take it back."""
        from napari.utils.notifications import show_warning

        layer = self._guarded
        if layer is None or str(layer.mode) not in PAINTING or layer.multiscale or writable(layer.data):
            return
        layer.mode = "pan_zoom"
        show_warning(f"{layer.name} is read from its file as it is shown and cannot be painted: "
                     "\"Load into memory\" (MRCZ widget) first")

    def _layer_removed(self, event: Any) -> None:
        """Removing the layer being loaded cancels its load: nothing would show the result."""
        if self._load is not None and event.value == self._load_layer:
            self.cancel_loading()
