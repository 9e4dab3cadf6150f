"""napari: time to the first frame and the longest event-loop gap while stepping frames.

For 0.5, 1 and 2 GB movies (int8, 4096 x 4096 frames), as zstd MRCZ and as
plain MRC opened by napari-mrcz, and the plain MRC opened by
napari-mrcfile-reader where it is installed. Run under a display (make bench
uses Xvfb). "First frame" is viewer.open() plus the event-loop turn that draws
it, after napari's one-time start-up (a small file is opened first). The gap
is the longest interval between ticks of a 5 ms QTimer while frames are
shown every 40 ms, stepping +1 (arrow keys, playback) and jumping 7 frames
(a slider drag).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, update_docs  # noqa: E402


def make_files(folder: Path, gb: float) -> dict[str, Path]:
    from napari_mrcz import codec, samples

    frame_bytes = 4096 * 4096
    n = max(2, round(gb * 1e9 / frame_bytes))
    pool = samples.movie(nframes=8, size=4096)

    class Cycled:
        shape, dtype, ndim = (n, 4096, 4096), np.dtype(np.int8), 3

        def __getitem__(self, i):
            return pool[i % len(pool)]

    files = {"MRCZ (zstd)": folder / f"movie_{gb}.mrcz", "MRC": folder / f"movie_{gb}.mrc"}
    codec.writeMRC(Cycled(), files["MRCZ (zstd)"], compressor="zstd", pixelsize=[1.0, 0.83, 0.83])
    codec.writeMRC(Cycled(), files["MRC"], pixelsize=[1.0, 0.83, 0.83])
    os.sync()  # no write-back of the new files may run during the measurements
    return files


def warm_up(folder: Path, has_mrcfile_reader: bool) -> None:
    """Open a small file once with each reader: napari's own one-time start-up (its layer
    modules, pint's unit registry: about 0.7 s) is not a property of the file."""
    from napari_mrcz import codec

    small = folder / "warm.mrcz"
    codec.writeMRC(np.zeros((2, 64, 64), np.int8), small, compressor="zstd", pixelsize=1.0)
    codec.writeMRC(np.zeros((2, 64, 64), np.int8), small.with_suffix(".mrc"), pixelsize=1.0)
    measure(small, "napari-mrcz", steps=2)
    if has_mrcfile_reader:
        measure(small.with_suffix(".mrc"), "napari-mrcfile-reader", steps=2)


def measure(path: Path, plugin: str, steps: int = 30) -> dict:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    t0 = time.perf_counter()
    layers = viewer.open(str(path), plugin=plugin)
    app.processEvents()
    first = time.perf_counter() - t0
    n = layers[0].data.shape[0]
    out = {"first_frame_s": first}
    for name, frames in (("jump", [(k * 7) % n for k in range(1, steps + 1)]),
                         ("step", [k % n for k in range(1, steps + 1)])):
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda ticks=ticks: ticks.append(time.perf_counter()))
        timer.start(5)
        for frame in frames:
            viewer.dims.set_point(0, frame)
            end = time.perf_counter() + 0.04
            while time.perf_counter() < end:
                app.processEvents()
                time.sleep(0.001)
        timer.stop()
        gaps = np.diff(ticks) if len(ticks) > 1 else np.array([np.nan])
        out[f"{name}_max_gap_s"] = float(np.max(gaps))
        out[f"{name}_p95_gap_s"] = float(np.percentile(gaps, 95))
    viewer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    has_mrcfile_reader = importlib.util.find_spec("napari_mrcfile_reader") is not None
    results: dict = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        warm_up(Path(tmp), has_mrcfile_reader)
        for gb in args.sizes:
            files = make_files(Path(tmp), gb)
            row = {f"napari-mrcz, {kind}": measure(path, "napari-mrcz") for kind, path in files.items()}
            if has_mrcfile_reader:
                row["napari-mrcfile-reader, MRC"] = measure(files["MRC"], "napari-mrcfile-reader")
            results[f"{gb:g} GB"] = row
            for path in files.values():
                path.unlink()
    lines = ["| stack | reader | first frame | stepping +1: longest gap / 95th pct | "
             "jumping 7 frames: longest gap / 95th pct |", "|---|---|---|---|---|"]
    for size, row in results.items():
        for reader, r in row.items():
            lines.append(f"| {size} | {reader} | {r['first_frame_s'] * 1e3:.0f} ms | "
                         f"{r['step_max_gap_s'] * 1e3:.0f} / {r['step_p95_gap_s'] * 1e3:.0f} ms | "
                         f"{r['jump_max_gap_s'] * 1e3:.0f} / {r['jump_p95_gap_s'] * 1e3:.0f} ms |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "napari.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "napari.png")
    update_docs(args.out.parent / "benchmarks.md", "napari", table)
    print(table)


def plot(results: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results)
    readers = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(sizes))
    width = 0.8 / len(readers)
    for ax, key, title in ((axes[0], "first_frame_s", "time to first frame"),
                           (axes[1], "step_max_gap_s", "longest event-loop gap, stepping +1")):
        for k, reader in enumerate(readers):
            ax.bar(x + k * width, [results[s][reader][key] * 1e3 for s in sizes], width, label=reader)
        ax.set_xticks(x + 0.4 - width / 2, sizes)
        ax.set_ylabel("ms")
        ax.set_title(title)
        if key == "step_max_gap_s":
            ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
