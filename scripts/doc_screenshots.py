"""Render the screenshots of docs/index.md (run under a display: xvfb-run)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Write docs/img/demo.png and docs/img/widget.png; returns an exit code."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mrcz._sample import sample_movie_path

    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-mrcz")
    viewer.open(str(sample_movie_path()), plugin="napari-mrcz")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mrcz", "MRCZ metadata")
    viewer.dims.set_point(0, 12)
    viewer.window._qt_window.resize(1500, 950)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.screenshot(str(img / "demo.png"), canvas_only=False)
    widget.units.value = "nm"
    for _ in range(5):
        app.processEvents()
    widget.native.grab().save(str(img / "widget.png"))
    viewer.close()
    print(img / "demo.png", img / "widget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
