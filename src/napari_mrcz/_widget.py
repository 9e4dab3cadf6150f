"""The MRCZ dock widget: view and edit what an image layer will be saved with.

It follows the selected image layer. Every edit goes at once to the layer's
``metadata['mrcz']`` (the one place the reader fills and the writer reads) and,
for the pixel size, to ``layer.scale`` and ``layer.units``. "Save as MRCZ…"
and "Load into memory" run in worker threads with napari's progress bar; the
load can be cancelled.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

from ._reader import NAPARI_UNITS
from ._writer import DEFAULT_CLEVEL, DEFAULT_COMPRESSOR, save_layer
from .codec.source import LENGTH_UNITS, convert_length, length_unit

if TYPE_CHECKING:
    import napari

COMPRESSORS = ["none", "lz4", "lz4hc", "zstd", "zlib", "blosclz"]
UNITS = list(LENGTH_UNITS)


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""


class MRCZWidget(Container):
    """Compressor, clevel, pixel size and units, voltage, C3 and gain of the selected image layer.

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
        self.compressor = ComboBox(label="Compressor", choices=COMPRESSORS, value=DEFAULT_COMPRESSOR)
        self.clevel = SpinBox(label="clevel", min=1, max=9, value=DEFAULT_CLEVEL)
        self.pixel_z = FloatSpinBox(label="Pixel size z", min=0.0, max=1e9, step=0.0001, value=1.0)
        self.pixel_y = FloatSpinBox(label="Pixel size y", min=0.0, max=1e9, step=0.0001, value=1.0)
        self.pixel_x = FloatSpinBox(label="Pixel size x", min=0.0, max=1e9, step=0.0001, value=1.0)
        self.units = ComboBox(label="Units", choices=UNITS, value="Å")
        self.voltage = FloatSpinBox(label="Voltage (keV)", min=0.0, max=1e4, step=0.1, value=0.0)
        self.c3 = FloatSpinBox(label="C3 (mm)", min=-1e4, max=1e4, step=0.01, value=0.0)
        self.gain = FloatSpinBox(label="Gain (counts/e⁻)", min=0.0, max=1e6, step=0.001, value=1.0)
        self.summary = Label(label="Data", value="")
        self.save_button = PushButton(text="Save as MRCZ…")
        self.load_button = PushButton(text="Load into memory")
        self.cancel_button = PushButton(text="Cancel loading", visible=False)
        self.extend([self.layer_name, self.compressor, self.clevel, self.pixel_z, self.pixel_y,
                     self.pixel_x, self.units, self.voltage, self.c3, self.gain, self.summary,
                     self.save_button, self.load_button, self.cancel_button])
        for field in (self.compressor, self.clevel, self.voltage, self.c3, self.gain):
            field.changed.connect(self._store_fields)
        for field in (self.pixel_z, self.pixel_y, self.pixel_x):
            field.changed.connect(self._store_pixel_size)
        self.units.changed.connect(self._change_units)
        self.save_button.changed.connect(self._ask_save)
        self.load_button.changed.connect(lambda *_: self.load_into_memory())
        self.cancel_button.changed.connect(lambda *_: self.cancel_loading())
        viewer.layers.selection.events.active.connect(self._follow)
        viewer.layers.events.removed.connect(self._layer_removed)
        self._follow()

    # -- following the selected layer -----------------------------------------
    def _follow(self, *_: Any) -> None:
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if self.layer is not None:
            self.layer.events.scale.disconnect(self._show)
        self.layer = layer if isinstance(layer, Image) else None
        if self.layer is not None:
            self.layer.events.scale.connect(self._show)
        self._show()

    def mrcz(self) -> dict:
        """The selected layer's ``metadata['mrcz']``, created from its scale if missing."""
        meta = self.layer.metadata.setdefault("mrcz", {})
        if "pixelsize" not in meta:
            meta["pixelsize"] = self._spatial_scale()
            meta.setdefault("pixelunits", "Å")
        return meta

    def _spatial_scale(self) -> list[float]:
        scale = [float(s) for s in self.layer.scale]
        return scale[-3:] if len(scale) >= 3 else [scale[-2], *scale[-2:]]

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
        meta["pixelsize"] = self._spatial_scale()
        self._syncing = True
        try:
            self.layer_name.value = self.layer.name
            self.compressor.value = meta.get("compressor") or DEFAULT_COMPRESSOR
            self.clevel.value = int(meta.get("clevel") or DEFAULT_CLEVEL)
            self.pixel_z.value, self.pixel_y.value, self.pixel_x.value = meta["pixelsize"]
            self.units.value = length_unit(str(meta.get("pixelunits") or "Å")) or "Å"
            self.voltage.value = float(meta.get("voltage") or 0.0)
            self.c3.value = float(meta.get("C3") or 0.0)
            self.gain.value = float(meta.get("gain") or 1.0)
        finally:
            self._syncing = False
        self._summarise()

    def _summarise(self) -> None:
        data, meta = self.layer.data, self.mrcz()
        nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
        text = f"{' x '.join(map(str, data.shape))} {np.dtype(data.dtype).name}, {_human(nbytes)}"
        on_disk = meta.get("size_on_disk")
        if on_disk:
            text += f"\n{_human(on_disk)} on disk, ratio {nbytes / on_disk:.2f}"
            text += f" ({meta.get('compressor') or 'uncompressed'})"
        self.summary.value = text

    # -- edits -> metadata and scale ------------------------------------------
    def _store_fields(self, *_: Any) -> None:
        if self._syncing or self.layer is None:
            return
        meta = self.mrcz()
        meta["compressor"] = None if self.compressor.value == "none" else self.compressor.value
        meta["clevel"] = int(self.clevel.value)
        meta["voltage"], meta["C3"], meta["gain"] = (float(self.voltage.value), float(self.c3.value),
                                                     float(self.gain.value))

    def _store_pixel_size(self, *_: Any) -> None:
        if self._syncing or self.layer is None:
            return
        size = [float(self.pixel_z.value), float(self.pixel_y.value), float(self.pixel_x.value)]
        self._apply_pixel_size(size, self.units.value)

    def _apply_pixel_size(self, size: list[float], unit: str) -> None:
        meta = self.mrcz()
        meta["pixelsize"], meta["pixelunits"] = size, unit
        scale = [float(s) for s in self.layer.scale]
        spatial = size[-min(3, len(scale)):] if len(scale) >= 3 else size[-2:]
        scale[-len(spatial):] = spatial
        units = list(self.layer.units)
        units[-len(spatial):] = [NAPARI_UNITS[unit]] * len(spatial)
        self._syncing = True
        try:
            self.layer.units = units
            self.layer.scale = scale
        finally:
            self._syncing = False

    def _change_units(self, *_: Any) -> None:
        if self._syncing or self.layer is None:
            return
        meta = self.mrcz()
        old = length_unit(str(meta.get("pixelunits") or "Å")) or "Å"
        new = self.units.value
        size = [convert_length(v, old, new) for v in meta["pixelsize"]]
        self._apply_pixel_size(size, new)
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
        attributes = {"scale": list(layer.scale), "metadata": layer.metadata, "rgb": layer.rgb}
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
        if layer is None or (isinstance(layer.data, np.ndarray) and not isinstance(layer.data, np.memmap)):
            return None
        data = layer.data
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
                layer.data = array
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
