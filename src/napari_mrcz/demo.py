"""``make demo``: a sample MRCZ movie in napari with the MRCZ dock widget, and a tomogram in 3D.

Writes a synthetic counting-mode movie as MRCZ, reads it back and prints its
header, compression ratio and read/write speed, then opens it in napari with
the dock widget. Then writes a 0.5 GB synthetic tomogram and opens it in 3D:
a multiscale layer whose coarse level fills in the background. With
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


def codec_tour(folder: Path) -> Path:
    """Write, read back and describe the sample movie; returns its path."""
    movie = samples.movie(nframes=24, size=2048)
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


def show_tomogram_3d(path: Path, screenshot: Path | None) -> Any:
    """Open the tomogram in napari in 3D: the coarse level appears, then fills; returns the viewer."""
    import napari

    from ._pyramid import fill_of

    viewer = napari.Viewer(title="napari-mrcz demo: a tomogram in 3D")
    t0 = time.perf_counter()
    (layer,) = viewer.open(str(path), plugin="napari-mrcz")
    viewer.dims.ndisplay = 3
    fill = fill_of(layer)
    print(f"Opened {path.name} {layer.data.shape} in 3D in {(time.perf_counter() - t0) * 1e3:.0f} ms "
          f"(levels {[tuple(d.shape) for d in layer.data][1:]}, filling in the background)")
    layer.rendering = "minip"  # dense matter is dark: the darkest voxel along each ray
    if screenshot is None:
        return viewer
    while fill is not None and not fill.complete:
        _settle(0.2)
    coarse = np.asarray(layer.data[-1])
    layer.contrast_limits = [float(v) for v in np.percentile(coarse, [0.5, 60])]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 moved it
    camera.angles = (0, 30, 60)
    viewer.window._qt_window.resize(1200, 900)
    _settle(1.0)
    print(f"Binned levels complete after {time.perf_counter() - t0:.1f} s (cached for the next opening)")
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
        viewer_3d = show_tomogram_3d(tomogram, None)
        show(path, None)  # runs napari's event loop: both windows
        del viewer_3d
        return 0
    show(path, args.screenshot)
    show_tomogram_3d(tomogram, args.screenshot.with_name(args.screenshot.stem + "-tomogram-3d.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
