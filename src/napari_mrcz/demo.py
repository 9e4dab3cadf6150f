"""``make demo``: a sample MRCZ movie, in napari with the MRCZ dock widget.

Writes a synthetic counting-mode movie as MRCZ, reads it back and prints its
header, compression ratio and read/write speed, then opens it in napari with
the dock widget. With ``--screenshot PATH`` (what ``make demo`` passes when
there is no display) it renders the window to PATH instead and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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


def show(path: Path, screenshot: Path | None) -> None:
    """Open ``path`` in napari with the dock widget; render to ``screenshot`` if given."""
    import napari
    from qtpy.QtWidgets import QApplication

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
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
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
    if not args.no_gui:
        show(path, args.screenshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
