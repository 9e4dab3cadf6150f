"""The MRCZ dock widget: what a layer's file is, its microscope metadata, how it will be saved.

It follows the selected image layer and shows, apart from each other:

- **File**: what the layer was read from (format, compressor, size and ratio
  on disk), never edited;
- **Pixel size** of each spatial axis in its own unit (a stack's frame axis
  has none), with one length unit for all of them;
- **Microscope**: voltage (kV), C3 (mm) and gain, "not set" where the file
  has no such field;
- **Save as MRCZ…**: the compressor and clevel a save will use;
- the **header inspector** (every header field, labels, extended header,
  JSON, DM tags), whose per-section line follows napari's slider.

Every edit goes at once to the layer: the pixel size to ``layer.scale`` and
``layer.units``, the rest to ``metadata['mrcz']``, the one place the reader
fills and the writer reads. "Save as MRCZ…" and "Load into memory" run in
worker threads with napari's progress bar; the load can be cancelled.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer

from ._inspector import HeaderInspector
from ._reader import NAPARI_UNITS
from ._writer import angstrom, save_layer
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, LENGTH_UNITS

if TYPE_CHECKING:
    import napari

COMPRESSORS = ["none", "lz4", "lz4hc", "zstd", "zlib", "blosclz"]
UNITS = list(LENGTH_UNITS)
#: How the widget writes napari's unit names.
SYMBOLS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "picometer": "pm"}
NOT_SET = "not set"
#: Decimals shown for a pixel size in each unit (0.1 pm at least).
DECIMALS = {"Å": 4, "nm": 5, "µm": 8, "pm": 2}


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
    """How a napari unit is written in the widget (Å, nm, µm, pm, px, eV, 1/nm ...)."""
    if unit is None or str(unit) == "pixel":
        return "px"
    try:
        return format(unit, "~P")  # pint's own short form
    except (TypeError, ValueError):
        return SYMBOLS.get(str(unit), str(unit))


def full_size(layer: Any) -> Any:
    """A layer's data at full size (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


class MRCZWidget(Container):
    """File facts, pixel sizes and units, voltage, C3, gain, save settings and header of the selected layer.

    Parameters
    ----------
    viewer
        The napari viewer whose selected image layer the widget follows.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.layer: Any = None
        self._syncing = False
        self._load: Any = None  # the running "Load into memory" worker, and its layer
        self._load_layer: Any = None
        self._load_cancelled = False
        self._saves: set[Any] = set()  # running "Save as MRCZ…" workers
        self.layer_name = Label(label="Layer", value="(select an image layer)")
        self.summary = Label(label="File", value="")
        self.pixel_z = FloatSpinBox(label="Pixel size z", min=0.0, max=1e12, step=0.0001, value=1.0)
        self.pixel_y = FloatSpinBox(label="Pixel size y", min=0.0, max=1e12, step=0.0001, value=1.0)
        self.pixel_x = FloatSpinBox(label="Pixel size x", min=0.0, max=1e12, step=0.0001, value=1.0)
        self.units = ComboBox(label="Length unit", choices=UNITS, value="Å")
        self.voltage = _optional("Voltage", 0.0, 1e4, 0.1, " kV")
        self.c3 = _optional("C3", -1e4, 1e4, 0.01, " mm")
        self.gain = _optional("Gain", 0.0, 1e6, 0.001, " counts/e⁻")
        self.save_heading = Label(label="", value="Save as MRCZ… will use:")
        self.compressor = ComboBox(label="Compressor", choices=COMPRESSORS, value=DEFAULT_SAVE_COMPRESSOR)
        self.clevel = SpinBox(label="clevel", min=1, max=9, value=DEFAULT_SAVE_CLEVEL)
        self.save_button = PushButton(text="Save as MRCZ…")
        self.load_button = PushButton(text="Load into memory")
        self.cancel_button = PushButton(text="Cancel loading", visible=False)
        self.inspector_button = PushButton(text="Header inspector ▸")
        self.extend([self.layer_name, self.summary, self.pixel_z, self.pixel_y, self.pixel_x, self.units,
                     self.voltage, self.c3, self.gain, self.save_heading, self.compressor, self.clevel,
                     self.save_button, self.load_button, self.cancel_button, self.inspector_button])
        self.inspector = HeaderInspector()
        self.inspector.setVisible(False)
        self.native.layout().addWidget(self.inspector)
        for field in (self.compressor, self.clevel, self.voltage, self.c3, self.gain):
            field.changed.connect(self._store_fields)
        for axis, field in ((-3, self.pixel_z), (-2, self.pixel_y), (-1, self.pixel_x)):
            field.changed.connect(lambda *_, axis=axis, field=field: self._store_pixel_size(axis, field))
        self.units.changed.connect(self._change_units)
        self.save_button.changed.connect(self._ask_save)
        self.load_button.changed.connect(lambda *_: self.load_into_memory())
        self.cancel_button.changed.connect(lambda *_: self.cancel_loading())
        self.inspector_button.changed.connect(lambda *_: self.show_inspector(not self.inspector.isVisible()))
        viewer.layers.selection.events.active.connect(self._follow)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.dims.events.current_step.connect(self._step)
        self._follow()

    # -- following the selected layer -----------------------------------------
    def _follow(self, *_: Any) -> None:
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if self.layer is not None:
            self.layer.events.scale.disconnect(self._show)
            self.layer.events.units.disconnect(self._show)
        self.layer = layer if isinstance(layer, Image) else None
        if self.layer is not None:
            self.layer.events.scale.connect(self._show)
            self.layer.events.units.connect(self._show)
        self._show()
        self.inspector.show_metadata(self.layer.metadata.get("mrcz") if self.layer is not None else None)
        self._step()

    def mrcz(self) -> dict:
        """The selected layer's ``metadata['mrcz']`` (created empty for layers not read from a file)."""
        return self.layer.metadata.setdefault("mrcz", {})

    def _frame_axis(self) -> bool:
        """Whether the layer's first of three axes is frames (a stack), not z."""
        labels = list(getattr(self.layer, "axis_labels", []) or [])
        return self.layer.ndim >= 3 and (bool(self.mrcz().get("stack")) or labels[-3:-2] == ["frame"])

    def _show(self, *_: Any) -> None:
        enabled = self.layer is not None
        for widget in self:
            if widget is not self.layer_name:
                widget.enabled = enabled
        if not enabled:
            self.layer_name.value = "(select an image layer)"
            self.summary.value = ""
            return
        meta = self.mrcz()
        save = meta.get("save") or {}
        scale, units, labels = list(self.layer.scale), list(self.layer.units), list(self.layer.axis_labels)
        self._syncing = True
        try:
            self.layer_name.value = self.layer.name
            for axis, spin in ((-3, self.pixel_z), (-2, self.pixel_y), (-1, self.pixel_x)):
                shown = -axis <= self.layer.ndim and not (axis == -3 and self._frame_axis())
                spin.visible = shown
                if shown:
                    symbol = unit_symbol(units[axis])
                    spin.label = f"Pixel size {labels[axis]}"
                    spin.native.setDecimals(DECIMALS.get(symbol, 6))
                    spin.native.setSuffix(f" {symbol}")
                    spin.value = float(scale[axis])
            lengths = [unit_symbol(u) for u in units if angstrom(u) is not None]
            if lengths and lengths[-1] in UNITS:
                self.units.value = lengths[-1]
            _set_optional(self.voltage, meta.get("voltage"))
            _set_optional(self.c3, meta.get("C3"))
            _set_optional(self.gain, meta.get("gain"))
            self.compressor.value = save.get("compressor") or "none"
            self.clevel.value = int(save.get("clevel") or DEFAULT_SAVE_CLEVEL)
        finally:
            self._syncing = False
        self._summarise()
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
        data, meta = full_size(self.layer), self.mrcz()
        nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
        shape = " × ".join(map(str, data.shape))
        if meta.get("format"):
            what = meta["format"] + (f", {meta['compressor']}" if meta.get("compressor") else "")
            text = f"{what}: {shape} {np.dtype(data.dtype).name}"
            if self._frame_axis():
                text += f" ({data.shape[-3]} frames)"
            text += f"\n{_human(nbytes)}"
            on_disk = meta.get("size_on_disk")
            if meta.get("compressor") and on_disk:
                text += f", {_human(on_disk)} on disk, ratio {nbytes / on_disk:.2f}"
        else:
            text = f"not from a file: {shape} {np.dtype(data.dtype).name}\n{_human(nbytes)}"
        self.summary.value = text

    def _step(self, *_: Any) -> None:
        """Show the per-section record of the section on the slider."""
        if self.layer is None or self.layer.ndim < 3:
            self.inspector.show_section(0)
            return
        try:
            k = int(round(float(self.layer.world_to_data(self.viewer.dims.point)[-3])))
        except (IndexError, ValueError):
            k = 0
        self.inspector.show_section(min(max(k, 0), full_size(self.layer).shape[-3] - 1))

    def show_inspector(self, visible: bool = True) -> None:
        """Open (or close) the header inspector."""
        self.inspector.setVisible(visible)
        self.inspector_button.text = "Header inspector ▾" if visible else "Header inspector ▸"

    # -- edits -> metadata and scale ------------------------------------------
    def _store_fields(self, *_: Any) -> None:
        if self._syncing or self.layer is None:
            return
        meta = self.mrcz()
        meta["save"] = {"compressor": None if self.compressor.value == "none" else self.compressor.value,
                        "clevel": int(self.clevel.value)}
        meta["voltage"], meta["C3"], meta["gain"] = (_optional_value(self.voltage),
                                                     _optional_value(self.c3), _optional_value(self.gain))

    def _store_pixel_size(self, axis: int, spin: FloatSpinBox) -> None:
        if self._syncing or self.layer is None or -axis > self.layer.ndim:
            return
        scale = [float(s) for s in self.layer.scale]
        scale[axis] = float(spin.value)
        self._syncing = True
        try:
            self.layer.scale = scale
        finally:
            self._syncing = False

    def _change_units(self, *_: Any) -> None:
        """Express every length axis in the chosen unit (the physical size does not change)."""
        if self._syncing or self.layer is None:
            return
        new = self.units.value
        target = angstrom(NAPARI_UNITS[new])
        scale, units = [float(s) for s in self.layer.scale], list(self.layer.units)
        for k, unit in enumerate(units):
            size = angstrom(unit)
            if size is not None:
                scale[k] *= size / target
                units[k] = NAPARI_UNITS[new]
        self._syncing = True
        try:
            self.layer.units = units
            self.layer.scale = scale
        finally:
            self._syncing = False
        self._show()

    # -- actions ----------------------------------------------------------------
    def _ask_save(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        if self.layer is None:
            return
        start = os.path.splitext(str(self.mrcz().get("source") or self.layer.name))[0] + ".mrcz"
        path, _ = QFileDialog.getSaveFileName(self.native, "Save as MRCZ", start, "MRCZ (*.mrcz)")
        if path:
            self.save_as(path)

    @property
    def busy(self) -> bool:
        """Whether a load or save started here is still running (its end not yet handled)."""
        return self._load is not None or bool(self._saves)

    def save_as(self, path: str) -> Any:
        """Save the selected layer as MRCZ in a worker thread; returns the started worker.

        :attr:`busy` stays true until the worker's end has been handled here.
        """
        from napari.qt.threading import create_worker

        layer = self.layer
        attributes = {"scale": list(layer.scale), "units": list(layer.units), "multiscale": layer.multiscale,
                      "axis_labels": list(layer.axis_labels), "metadata": layer.metadata, "rgb": layer.rgb}
        worker = create_worker(save_layer, path, layer.data, attributes, True, _start_thread=False)
        self._saves.add(worker)
        worker.finished.connect(lambda: self._saves.discard(worker))
        worker.start()
        return worker

    def load_into_memory(self) -> Any:
        """Decode the whole stack in a worker thread (with a progress bar); returns the worker.

        The layer's data is replaced in the main thread once the worker has
        returned, unless :meth:`cancel_loading` was called before: a cancel is
        never lost, however late in the load it comes. While a load runs,
        calling this again returns the running worker.
        """
        from napari.qt.threading import create_worker

        layer = self.layer
        if self._load is not None:
            return self._load
        if layer is None:
            return None
        data = full_size(layer)
        if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
            return None
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
            if self._load is worker and not self._load_cancelled:
                layer.data = [array, *list(layer.data)[1:]] if layer.multiscale else array
                if layer == self.layer:  # napari hands plugins proxies: compare, not `is`
                    self._summarise()

        def ended() -> None:
            if self._load is worker:
                self._load = self._load_layer = None
                self.cancel_button.visible = False

        worker.returned.connect(loaded)
        worker.finished.connect(ended)
        self._load, self._load_layer, self._load_cancelled = worker, layer, False
        self.cancel_button.visible = True
        worker.start()
        return worker

    def cancel_loading(self) -> None:
        """Stop a running "Load into memory"; the layer stays lazy."""
        if self._load is not None:
            self._load_cancelled = True
            self._load.quit()

    def _layer_removed(self, event: Any) -> None:
        """Removing the layer being loaded cancels its load: nothing would show the result."""
        if self._load is not None and event.value == self._load_layer:
            self.cancel_loading()
