"""``make demo``: a sample MRCZ movie in napari with the MRCZ dock widget, and a tomogram in 3D.

Writes a synthetic counting-mode movie as MRCZ, reads it back and prints its
header, compression ratio and read/write speed, then opens it in napari with
the dock widget. Then writes a 0.5 GB synthetic tomogram and opens it in 3D:
a multiscale layer whose coarse level fills in the background, then shown as
cryo-ET users look at a tomogram, that level low-passed and averaged across
two 10 nm slabs (an xy and an xz section; the layers' names say so). With
``--screenshot PATH`` (what ``make demo`` passes when there is no display) it
renders the windows to PATH and ``PATH-tomogram-3d.png`` instead, and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import samples
from .codec import MRCStack, readMRC, writeMRC

#: The sample movie of the demo (and of docs/img/demo.png): frames, and pixels on a side.
MOVIE_FRAMES, MOVIE_SIZE = 24, 2048


def codec_tour(folder: Path) -> Path:
    """Write, read back and describe the sample movie; returns its path."""
    movie = samples.movie(nframes=MOVIE_FRAMES, size=MOVIE_SIZE)
    path = folder / "sample_movie.mrcz"
    mb = movie.nbytes / 1e6
    t0 = time.perf_counter()
    writeMRC(list(movie), path, **samples.SAMPLE_MOVIE_HEADER)  # frames: napari shows a frame axis
    t_write = time.perf_counter() - t0
    readMRC(path, idx=0)  # loads the decompression library once, outside the timing
    t0 = time.perf_counter()
    image, meta = readMRC(path)
    t_read = time.perf_counter() - t0
    assert np.array_equal(np.stack(image), movie), "round trip failed"
    size = path.stat().st_size
    with MRCStack(path) as stack:
        t0 = time.perf_counter()
        frame = stack.read(12, 13)
        t_frame = time.perf_counter() - t0
    print(f"Wrote {path} ({size / 1e6:.1f} MB; {mb:.1f} MB uncompressed)\n")
    print("Header")
    for key in ("dimensions", "dtype", "compressor", "bloscFormat"):
        print(f"  {key:<15} {meta[key]}")
    print(f"  {'pixel size':<15} {', '.join(f'{v:g}' for v in meta['pixelsize'][1:])} Å (y, x)")
    print(f"  {'voltage':<15} {meta['voltage']:g} kV\n  {'C3':<15} {meta['C3']:g} mm")
    for key in ("gain", "packedBytes", "detector", "dose_per_frame"):
        print(f"  {key:<15} {meta[key]}")
    print()
    print(f"Compression ratio   {movie.nbytes / size:.2f} x (zstd, clevel 1, bit-shuffle)")
    print(f"Write               {mb / t_write:8.0f} MB/s  ({t_write * 1e3:.0f} ms for {mb:.0f} MB)")
    print(f"Read                {mb / t_read:8.0f} MB/s  ({t_read * 1e3:.0f} ms)")
    print(f"One frame (12)      {t_frame * 1e3:8.1f} ms  mean count {frame.mean():.2f} e/px")
    return path


def write_tomogram(folder: Path, depth: int = 128, size: int = 1024) -> Path:
    """Write the sample tomogram, ``depth x size x size`` (0.5 GB: it opens multiscale); returns its path."""
    path = folder / "sample_tomogram.rec"
    if not path.exists():
        t0 = time.perf_counter()
        writeMRC(samples.Tomogram(depth, size), path, pixelsize=[10.0, 10.0, 10.0], voltage=300.0, C3=2.7)
        print(f"\nWrote {path} ({path.stat().st_size / 1e9:.2f} GB, a cell's edge at 10 Å per voxel) "
              f"in {time.perf_counter() - t0:.0f} s")
    return path


#: The 3D view's low-pass: a Gaussian of this sigma, in voxels of the full-size tomogram (35 Å at 10 Å/voxel).
LOW_PASS_SIGMA = 3.5
#: Thickness of the two slabs the 3D view averages, in voxels of the full-size tomogram (10 nm).
SLAB_VOXELS = 10
#: Contrast limits of the view: these percentiles of the low-passed data (dense matter dark).
VIEW_PERCENTILES = (0.5, 99.5)
#: The camera of the 3D view (z, y, x): 25° above the front face, 20° from the side, in perspective.
VIEW_DIRECTION, UP_DIRECTION, PERSPECTIVE = (-0.423, 0.852, 0.310), (1, 0, 0), 30.0


def low_pass(coarse: Any, factor: int) -> tuple[np.ndarray, list[float]]:
    """A coarse level low-passed, and contrast limits: the tomogram as the 3D view shows it.

    ``coarse`` is the volume binned ``factor`` in z, y and x (block mean); the
    Gaussian's sigma is :data:`LOW_PASS_SIGMA` voxels of the full-size volume
    (binning has already averaged within a block). Dense matter is dark: the
    limits are the :data:`VIEW_PERCENTILES` of the result.
    """
    from scipy.ndimage import gaussian_filter  # a napari dependency, as is this view

    data = gaussian_filter(np.asarray(coarse, dtype=np.float32), LOW_PASS_SIGMA / factor)
    lo, hi = np.percentile(data, VIEW_PERCENTILES)
    return data, [float(lo), float(hi)]


def slab_planes(shape: tuple[int, ...], factor: int) -> dict[str, dict[str, Any]]:
    """The two slabs of the view, in voxels of a level binned ``factor``: xy at mid-depth, xz at the front.

    Each is :data:`SLAB_VOXELS` voxels of the full-size volume thick; napari
    averages the data across it (``rendering="average"``).
    """
    depth, ny, nx = shape
    thickness = max(1.0, SLAB_VOXELS / factor)
    return {"xy": {"position": (depth / 2, ny / 2, nx / 2), "normal": (1, 0, 0), "thickness": thickness},
            "xz": {"position": (depth / 2, thickness / 2, nx / 2), "normal": (0, 1, 0),
                   "thickness": thickness}}


class TomogramView:
    """A tomogram opened in 3D, then shown as cryo-ET users look at one: binned, low-passed, in slabs.

    The file opens as it would by drag and drop (a multiscale layer whose
    coarse level fills in the background, drawn with ``minip``). Once the
    coarse level is complete, it is low-passed off the event loop
    (:func:`low_pass`) and added as two layers sharing that array, named for
    what they are (``... xy slab, binned 2x, low-pass sigma 35 Å``), each
    drawn as a 10 nm slab averaged across (:func:`slab_planes`; select a
    slab's layer and shift-drag to move it); the file's own layer is then
    hidden (it stays in the layer list). ``slabs`` holds the two layers once
    added; ``done`` says the view has come, or will not (a cancelled fill, an
    error).
    """

    def __init__(self, viewer: Any, path: Path) -> None:
        from qtpy.QtCore import QTimer

        from ._pyramid import fill_of

        self.viewer, self.slabs, self.done = viewer, [], False
        t0 = time.perf_counter()
        (self.layer,) = viewer.open(str(path), plugin="napari-mrcz")
        viewer.dims.ndisplay = 3
        self.layer.rendering = "minip"  # dense matter is dark: the darkest voxel along each ray
        self.fill = fill_of(self.layer)
        self.factor = 2 ** (len(self.layer.data) - 1) if self.layer.multiscale else 1
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
        camera.set_view_direction(VIEW_DIRECTION, UP_DIRECTION)
        camera.perspective = PERSPECTIVE
        if hasattr(viewer, "fit_to_view"):  # napari 0.7+: zoom to the volume as seen from there
            viewer.fit_to_view()
            camera.zoom *= 0.8  # fit_to_view ignores perspective, which brings the front closer
        shape = tuple(self.layer.data[0].shape if self.layer.multiscale else self.layer.data.shape)
        levels = [tuple(d.shape) for d in self.layer.data][1:] if self.layer.multiscale else []
        print(f"Opened {path.name} {shape} in 3D in {(time.perf_counter() - t0) * 1e3:.0f} ms "
              f"(levels {levels}, filling in the background)")
        self._t0 = t0
        self._timer = QTimer(viewer.window._qt_window)  # goes with the window
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self) -> None:
        if self.fill is not None and not self.fill.ended:
            return
        self._timer.stop()
        if self.fill is not None and not self.fill.complete:  # cancelled: the coarse level is partial
            self.done = True
            return
        from napari.qt.threading import create_worker

        print(f"Binned levels complete after {time.perf_counter() - self._t0:.1f} s "
              "(cached for the next opening)")
        coarse = self.layer.data[-1] if self.layer.multiscale else self.layer.data
        worker = create_worker(low_pass, coarse, self.factor)
        worker.returned.connect(self._add)
        worker.errored.connect(self._failed)
        worker.start()

    def _failed(self, exc: BaseException) -> None:
        print(f"No low-pass view: {exc!r}")
        self.done = True

    def _add(self, result: tuple[np.ndarray, list[float]]) -> None:
        data, limits = result
        raw, f = self.layer, self.factor
        scale = np.asarray(raw.scale) * f
        translate = np.asarray(raw.translate) + (f - 1) / 2 * np.asarray(raw.scale)  # a block mean's place
        sigma = f"{LOW_PASS_SIGMA * raw.scale[0]:g} {raw.units[0]:~}"
        for which, plane in slab_planes(data.shape, f).items():
            self.slabs.append(self.viewer.add_image(
                data, name=f"{raw.name}: {which} slab, binned {f}×, low-pass σ {sigma}", scale=scale,
                translate=translate, units=raw.units, axis_labels=raw.axis_labels, contrast_limits=limits,
                colormap="gray", depiction="plane", rendering="average", blending="opaque", plane=plane))
        raw.visible = False
        self.done = True
        print(f"Shown binned {f}×, low-pass (Gaussian σ {sigma}), as two {SLAB_VOXELS}-voxel slabs averaged "
              f"across, contrast {limits[0]:.2f}..{limits[1]:.2f} (percentiles {VIEW_PERCENTILES}); "
              f"{raw.name} as read is hidden (to move a slab: select its layer, shift-drag)")


def show_tomogram_3d(path: Path, screenshot: Path | None) -> TomogramView | None:
    """Open the tomogram in napari in 3D (:class:`TomogramView`); returns the view, or renders to a PNG."""
    import napari

    viewer = napari.Viewer(title="napari-mrcz demo: a tomogram in 3D")
    if screenshot is not None:
        viewer.window._qt_window.resize(1500, 850)
        _settle(0.2)
    view = TomogramView(viewer, path)
    if screenshot is None:
        return view
    while not view.done:
        _settle(0.2)
    _settle(1.0)
    viewer.screenshot(str(screenshot), canvas_only=True)
    viewer.close()
    print(f"Screenshot of the tomogram in 3D: {screenshot.resolve()}")
    return None


def _settle(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def show(path: Path, screenshot: Path | None) -> None:
    """Open ``path`` in napari with the dock widget; render to ``screenshot`` if given."""
    import napari

    viewer = napari.Viewer(title="napari-mrcz demo")
    t0 = time.perf_counter()
    viewer.open(str(path), plugin="napari-mrcz")
    print(f"\nOpened in napari in {(time.perf_counter() - t0) * 1e3:.0f} ms (lazy: frames decode on demand)")
    viewer.window.add_plugin_dock_widget("napari-mrcz", "MRCZ metadata")
    viewer.dims.set_point(0, 12)
    if screenshot is None:
        napari.run()
        return
    viewer.window._qt_window.resize(1500, 950)
    _settle(0.4)
    viewer.screenshot(str(screenshot), canvas_only=False)
    viewer.close()
    print(f"Screenshot of the napari window: {screenshot.resolve()}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the files")
    ap.add_argument("--screenshot", type=Path, default=None, help="render the window to this PNG")
    ap.add_argument("--no-gui", action="store_true", help="only the codec part")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = codec_tour(args.out)
    if args.no_gui:
        return 0
    tomogram = write_tomogram(args.out)
    if args.screenshot is None:
        view_3d = show_tomogram_3d(tomogram, None)
        show(path, None)  # runs napari's event loop: both windows
        del view_3d
        return 0
    show(path, args.screenshot)
    show_tomogram_3d(tomogram, args.screenshot.with_name(args.screenshot.stem + "-tomogram-3d.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
