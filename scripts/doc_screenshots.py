"""Render the screenshots in docs/img: the demo, the dock widget, the header inspector, a tomogram in 3D.

The demo's window is drawn from the demo's own movie (``napari_mrcz.demo``:
24 x 2048 x 2048), and the tomogram as the demo shows it in 3D, only larger.
Run under a display or Xvfb with the test extras installed (mrcfile writes the
FEI2 tilt series the inspector shows)::

    xvfb-run -a .venv/bin/python scripts/doc_screenshots.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mrcfile
import napari
import numpy as np
from mrcfile.dtypes import get_ext_header_dtype
from qtpy.QtWidgets import QApplication

from napari_mrcz import samples
from napari_mrcz.demo import MOVIE_FRAMES, MOVIE_SIZE, show_tomogram_3d, write_tomogram

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def tilt_series(path: Path, n: int = 41) -> None:
    """A Thermo Fisher-style FEI2 tilt series: -60..60 degrees, defocus and dose per image."""
    tomo = samples.tomogram()
    tilts = np.linspace(-60, 60, n)
    images = np.stack([tomo.sum(axis=0) * np.cos(np.radians(t)) for t in tilts]).astype(np.float32)
    images += np.random.default_rng(0).normal(scale=images.std(), size=images.shape).astype(np.float32)
    dtype = get_ext_header_dtype(b"FEI2", "<")
    records = np.zeros(n, dtype)
    records["Metadata size"], records["Metadata version"] = dtype.itemsize, 2
    records["Alpha tilt"] = tilts
    records["Defocus"] = -3e-6
    records["Dose"] = 3.0e20
    records["HT"] = 300e3
    records["Magnification"] = 64000
    records["Microscope type"] = b"Krios G4"
    records["Pixel size X"] = records["Pixel size Y"] = 1.7e-10
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.set_extended_header(records)
        mrc.header.exttyp = b"FEI2"
        mrc.voxel_size = 1.7


def settle(seconds: float = 0.5) -> None:
    """Let Qt draw for ``seconds``."""
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    """Write docs/img/demo.png, widget.png, inspector.png and tomogram-3d.png."""
    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        movie = Path(tmp) / "sample_movie.mrcz"  # the demo's movie, as demo.codec_tour writes it
        samples.write_sample_movie(movie, nframes=MOVIE_FRAMES, size=MOVIE_SIZE)
        viewer = napari.Viewer(title="napari-mrcz")  # as demo.show opens it
        viewer.window._qt_window.resize(1500, 950)
        viewer.open(str(movie), plugin="napari-mrcz")
        _, widget = viewer.window.add_plugin_dock_widget("napari-mrcz", "MRCZ metadata")
        viewer.dims.set_point(0, 12)
        settle()
        viewer.screenshot(str(IMG / "demo.png"), canvas_only=False)
        widget.native.grab().save(str(IMG / "widget.png"))
        viewer.close()
        path = Path(tmp) / "tilt_series.mrcs"
        tilt_series(path)
        viewer = napari.Viewer(title="napari-mrcz: header inspector")
        viewer.window._qt_window.resize(1500, 1150)
        viewer.open(str(path), plugin="napari-mrcz")
        _, widget = viewer.window.add_plugin_dock_widget("napari-mrcz", "MRCZ metadata")
        viewer.dims.set_point(0, 30)
        widget.show_inspector(True)
        widget.inspector.filter.setText("tilt")
        settle()
        viewer.screenshot(str(IMG / "inspector.png"), canvas_only=False)
        viewer.close()
        tomogram = write_tomogram(Path(tmp), depth=256, size=2048)  # 4.3 GB
        show_tomogram_3d(tomogram, IMG / "tomogram-3d.png")
    print(f"wrote {IMG / 'demo.png'}, {IMG / 'widget.png'}, {IMG / 'inspector.png'} and "
          f"{IMG / 'tomogram-3d.png'}")


if __name__ == "__main__":
    main()
