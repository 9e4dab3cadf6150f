"""napari: time to the first frame and event-loop gaps while stepping frames; tomograms in 3D.

For 0.5, 1 and 2 GB movies (int8, 4096 x 4096 frames), as zstd MRCZ and as
plain MRC opened by napari-mrcz, and the plain MRC opened by
napari-mrcfile-reader where it is installed. Run under a display (make bench
uses Xvfb). "First frame" is viewer.open() plus the event-loop turn that draws
it, after napari's one-time start-up (a small file is opened first). The gap
is the longest interval between ticks of a 5 ms QTimer while frames are
shown every 40 ms, stepping +1 (arrow keys, playback) and jumping 7 frames
(a slider drag).

Tomograms in 3D (``--tomograms``, default 1, 2 and 4 GB float32, the sample
tomogram of :mod:`napari_mrcz.samples` at 2048 x 2048 per plane), as MRCZ and
plain MRC: the time from switching to 3D to the first non-blank 3D view, the
longest event-loop gap from the switch until the coarse level is complete,
and peak RSS; beside napari showing the same data from memory (read first,
not timed) and napari-mrcfile-reader (plain MRC). Every run has its own
process, so that peak memory is its own.

Huge frames (``--huge``, on by default): a K3 super-resolution movie (8
frames of 11520 x 8184 int8) and a 20000 x 20000 int16 montage, as MRCZ and
plain MRC: first frame, longest gaps stepping and jumping, peak RSS, each run
in its own process, beside napari with the data in memory and
napari-mrcfile-reader.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, publish  # noqa: E402


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


def open_timed(viewer, path: Path, how: str) -> tuple:
    """Open ``path`` with plugin ``how`` (or "in memory": read first, untimed, then added) and draw it.

    Returns the layer and the seconds from opening to the event-loop turn that draws it.
    """
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    if how == "in memory":
        from napari_mrcz import codec

        with codec.MRCStack(path) as stack:
            data = stack.read()
        t0 = time.perf_counter()  # reading the file is not napari's part
        layer = viewer.add_image(data[0] if len(data) == 1 else data, name="in memory")
    else:
        layer = viewer.open(str(path), plugin=how)[0]
    QApplication.instance().processEvents()
    return layer, time.perf_counter() - t0


def measure(path: Path, plugin: str, steps: int = 30) -> dict:
    import napari
    import psutil
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    me = psutil.Process()
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    layer, first = open_timed(viewer, path, plugin)
    n = layer.data.shape[0] if layer.ndim == 3 else 1
    out = {"first_frame_s": first}
    remote = (layer.metadata.get("mrcz") or {}).get("remote")  # a URL's: what showing it fetched
    if remote is not None:
        out["first_bytes"], out["first_requests"] = remote.fetched_bytes, remote.requests
    peak = [me.memory_info().rss]
    for name, frames in (("jump", [(k * 7) % n for k in range(1, steps + 1)]),
                         ("step", [k % n for k in range(1, steps + 1)])):
        ticks: list[float] = []

        def tick(ticks: list[float] = ticks) -> None:
            ticks.append(time.perf_counter())
            peak[0] = max(peak[0], me.memory_info().rss)

        timer = QTimer()
        timer.timeout.connect(tick)
        timer.start(5)
        for frame in frames:
            if n > 1:
                viewer.dims.set_point(0, frame)
            end = time.perf_counter() + 0.04
            while time.perf_counter() < end:
                app.processEvents()
                time.sleep(0.001)
        timer.stop()
        gaps = np.diff(ticks) if len(ticks) > 1 else np.array([np.nan])
        out[f"{name}_max_gap_s"] = float(np.max(gaps))
        out[f"{name}_p95_gap_s"] = float(np.percentile(gaps, 95))
    out["peak_rss_bytes"] = peak[0]
    viewer.close()
    return out


def make_huge(folder: Path) -> dict[str, tuple[Path, Path]]:
    """A K3 super-resolution movie (8 frames, 11520 x 8184 int8) and a 20000 x 20000 int16 montage,
    each as MRCZ and plain MRC."""
    from napari_mrcz import codec, samples

    frames = list(samples.movie(nframes=2, shape=(8184, 11520)))
    movie = [frames[k % 2] for k in range(8)]
    montage = np.tile(frames[0], (3, 2))[:20000, :20000].astype(np.int16) * 100  # camera frames side by side
    files = {}
    for name, data, suffix, pixel in (("K3 movie", movie, ".mrcs", [1.0, 0.415, 0.415]),
                                      ("montage", montage, ".mrc", 20.0)):
        stem = name.replace(" ", "_")
        packed, plain = folder / f"{stem}.mrcz", folder / f"{stem}{suffix}"
        codec.writeMRC(data, packed, compressor="zstd", pixelsize=pixel)
        codec.writeMRC(data, plain, pixelsize=pixel)
        files[name] = (packed, plain)
    os.sync()
    return files


def make_tomograms(folder: Path, gb: float) -> dict[str, Path]:
    from napari_mrcz import codec, samples

    depth = max(2, round(gb * 1e9 / (2048 * 2048 * 4)))
    tomo = samples.Tomogram(depth, 2048)
    plain = folder / f"tomogram_{gb:g}.rec"
    codec.writeMRC(tomo, plain, pixelsize=[10.0, 10.0, 10.0])
    with codec.MRCStack(plain) as stack:
        class Planes:
            shape, dtype, ndim = stack.shape, stack.dtype, 3

            def __getitem__(self, i):
                return stack.read(i, i + 1)[0]

        packed = folder / f"tomogram_{gb:g}.mrcz"  # written from a 3D array: a volume
        codec.writeMRC(Planes(), packed, compressor="zstd", pixelsize=[10.0, 10.0, 10.0])
    os.sync()
    return {"MRCZ (zstd)": packed, "MRC": plain}


def measure_3d(path: Path, how: str, timeout_s: float = 600.0) -> dict:
    """One run in this process: open, switch to 3D, wait for the coarse level (or napari's own 3D)."""
    import napari
    import psutil
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    me = psutil.Process()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    app = QApplication.instance()
    layer, opened = open_timed(viewer, path, how)
    rss0 = me.memory_info().rss
    ticks: list[float] = []
    peak = [rss0]

    def tick() -> None:
        ticks.append(time.perf_counter())
        peak[0] = max(peak[0], me.memory_info().rss)

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(5)
    t0 = time.perf_counter()
    ticks.append(t0)  # a switch that blocks counts from here
    viewer.dims.ndisplay = 3
    first = None
    from napari_mrcz._pyramid import fill_of

    fill = fill_of(layer) if how == "napari-mrcz" else None
    seen: float | None = None  # the fill's last refresh looked at
    while time.perf_counter() - t0 < timeout_s:
        app.processEvents()
        # A screenshot draws the canvas again (a 3D volume in software: seconds, on every core): taken
        # once a new refresh of a filling layer has been drawn, not every turn, or it slows the fill.
        fresh = fill is None or fill._last_refresh != seen
        if first is None and fresh:
            seen = fill._last_refresh if fill is not None else None
            if viewer.screenshot(canvas_only=True)[..., :3].std() > 5:
                first = time.perf_counter() - t0
        if first is not None and (fill is None or fill.complete):
            break
        time.sleep(0.05)
    complete = time.perf_counter() - t0
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:  # a tick after the last block
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([np.nan])
    viewer.close()
    return {"open_s": opened, "first_3d_s": first, "complete_s": complete, "max_gap_s": float(np.max(gaps)),
            "peak_rss_bytes": peak[0], "rss_before_bytes": rss0}


def run_alone(kind: str, path: Path, how: str, cache: Path) -> dict:
    """:func:`measure_3d` (``kind`` "3d") or :func:`measure` ("frames") in a fresh process: its own
    peak memory, an empty pyramid cache."""
    import subprocess

    env = {**os.environ, "NAPARI_MRCZ_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, __file__, "--measure", kind, str(path), how], capture_output=True,
                         text=True, env=env, timeout=1800)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout)[-500:]}
    return json.loads(line[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="*", default=[0.5, 1.0, 2.0])
    ap.add_argument("--tomograms", type=float, nargs="*", default=[1.0, 2.0, 4.0])
    ap.add_argument("--huge", action=argparse.BooleanOptionalAction, default=True,
                    help="huge frames: a K3 super-resolution movie and a 20000 x 20000 montage")
    ap.add_argument("--measure", nargs=3, metavar=("KIND", "PATH", "HOW"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    if args.measure:  # one run, in its own process (see run_alone)
        kind, path, how = args.measure
        if kind == "frames":
            warm_up(Path(path).parent, how == "napari-mrcfile-reader")
        result = measure_3d(Path(path), how) if kind == "3d" else measure(Path(path), how, steps=12)
        print("RESULT" + json.dumps(result))
        return
    has_mrcfile_reader = importlib.util.find_spec("napari_mrcfile_reader") is not None
    results: dict = {}
    results_3d: dict = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for gb in args.tomograms:
            files = make_tomograms(Path(tmp), gb)
            runs = {f"napari-mrcz, {kind}": (path, "napari-mrcz") for kind, path in files.items()}
            runs["napari, in memory"] = (files["MRC"], "in memory")
            if has_mrcfile_reader:
                runs["napari-mrcfile-reader, MRC"] = (files["MRC"], "napari-mrcfile-reader")
            row = {name: run_alone("3d", path, how, Path(tmp) / f"cache-{name}")
                   for name, (path, how) in runs.items()}
            results_3d[f"{gb:g} GB"] = row
            print(gb, json.dumps(row), flush=True)
            for path in files.values():
                path.unlink()
        if results_3d:
            write_3d(results_3d, args.out)
        if args.huge:
            results_huge: dict = {}
            for name, (packed, plain) in make_huge(Path(tmp)).items():
                runs = {"napari-mrcz, MRCZ (zstd)": (packed, "napari-mrcz"),
                        "napari-mrcz, MRC": (plain, "napari-mrcz"), "napari, in memory": (plain, "in memory")}
                if has_mrcfile_reader:
                    runs["napari-mrcfile-reader, MRC"] = (plain, "napari-mrcfile-reader")
                results_huge[name] = {how: run_alone("frames", path, plugin, Path(tmp) / "cache")
                                      for how, (path, plugin) in runs.items()}
                print(name, json.dumps(results_huge[name]), flush=True)
                packed.unlink()
                plain.unlink()
            write_huge(results_huge, args.out)
        if not args.sizes:
            return
        warm_up(Path(tmp), has_mrcfile_reader)
        for gb in args.sizes:
            files = make_files(Path(tmp), gb)
            row = {f"napari-mrcz, {kind}": measure(path, "napari-mrcz") for kind, path in files.items()}
            if has_mrcfile_reader:
                row["napari-mrcfile-reader, MRC"] = measure(files["MRC"], "napari-mrcfile-reader")
            results[f"{gb:g} GB"] = row
            for path in files.values():
                path.unlink()
    write_2d(results, args.out)


def table(results: dict, header: list[str], cells: Callable[[dict], list[str]]) -> str:
    """A markdown table: one row per (size or file, reader) with ``cells(result)``; failed runs say why."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size, row in results.items():
        for how, r in row.items():
            if "error" in r:
                error = r["error"]
                why = "OpenGL out of memory" if "out of mem" in error else error.splitlines()[-1][:80]
                lines.append(f"| {size} | {how} | failed: {why} |" + " |" * (len(header) - 3))
            else:
                lines.append("| " + " | ".join([size, how, *cells(r)]) + " |")
    return "\n".join(lines)


def ms(v: float | None) -> str:
    """A duration for a table: ms below 10 s."""
    return "-" if v is None else (f"{v:.1f} s" if v >= 10 else f"{v * 1e3:.0f} ms")


def write_2d(results: dict, out: Path) -> None:
    """The stepping table and plot into docs/benchmarks.md and docs/benchmarks/napari.*."""
    header = ["stack", "reader", "first frame", "stepping +1: longest gap / 95th pct",
              "jumping 7 frames: longest gap / 95th pct"]
    text = table(results, header, lambda r: [
        ms(r["first_frame_s"]), f"{r['step_max_gap_s'] * 1e3:.0f} / {r['step_p95_gap_s'] * 1e3:.0f} ms",
        f"{r['jump_max_gap_s'] * 1e3:.0f} / {r['jump_p95_gap_s'] * 1e3:.0f} ms"])
    publish(out, "napari", "napari", results, text)
    plot(results, out / "napari.png")


def write_huge(results: dict, out: Path) -> None:
    """The huge-frames table and plot into docs/benchmarks.md and docs/benchmarks/napari_huge.*."""
    header = ["file", "reader", "first frame", "stepping +1: longest gap", "jumping: longest gap", "peak RSS"]
    text = table(results, header, lambda r: [ms(r["first_frame_s"]), ms(r["step_max_gap_s"]),
                                             ms(r["jump_max_gap_s"]), f"{r['peak_rss_bytes'] / 1e9:.2f} GB"])
    publish(out, "napari_huge", "napari-huge", results, text)
    bars(results, out / "napari_huge.png", [("first_frame_s", "time to first frame", 1, "s", None),
                                            ("jump_max_gap_s", "longest gap, jumping frames", 1, "s", None),
                                            ("peak_rss_bytes", "peak resident memory", 1e-9, "GB", None)])


def write_3d(results: dict, out: Path) -> None:
    """The 3D table and plot into docs/benchmarks.md and docs/benchmarks/napari_3d.*."""
    header = ["tomogram", "how", "open", "switch to 3D: first view", "coarse level complete",
              "longest event-loop gap", "peak RSS (before 3D)"]
    text = table(results, header, lambda r: [
        ms(r["open_s"]), ms(r["first_3d_s"]), ms(r["complete_s"]), ms(r["max_gap_s"]),
        f"{r['peak_rss_bytes'] / 1e9:.2f} GB ({r['rss_before_bytes'] / 1e9:.2f})"])
    publish(out, "napari_3d", "napari-3d", results, text)
    plot_3d(results, out / "napari_3d.png")


def plot_3d(results: dict, target: Path) -> None:
    bars(results, target, [("first_3d_s", "switch to 3D: first view", 1, "s", None),
                           ("max_gap_s", "longest event-loop gap", 1, "s", None),
                           ("peak_rss_bytes", "peak resident memory", 1e-9, "GB", None)])


def plot(results: dict, target: Path) -> None:
    bars(results, target, [("first_frame_s", "time to first frame", 1e3, "ms", None),
                           ("step_max_gap_s", "longest event-loop gap, stepping +1", 1e3, "ms", 100)])


def bars(results: dict, target: Path, panels: list[tuple]) -> None:
    """One panel per (key, title, scale, unit, reference line): bars per size, one per reader."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results)
    readers = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels) + 1.4, 3.8))
    x = np.arange(len(sizes))
    width = 0.8 / len(readers)
    for ax, (key, title, scale, unit, line) in zip(axes, panels, strict=True):
        for k, reader in enumerate(readers):
            values = [(results[s][reader].get(key) or 0) * scale for s in sizes]  # a failed run: 0
            ax.bar(x + k * width, values, width, label=reader)
        ax.set_xticks(x + 0.4 - width / 2, sizes)
        ax.set_ylabel(unit)
        ax.set_title(title)
        if line is not None:
            ax.axhline(line, color="k", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
