"""Durable MRCZ writes at the disk's speed, and what precision-aware rounding buys, in one run.

Each write of ours is durable: the file is fsync'ed before its rename and the
folder after. Beside it, interleaved so that load hits all alike:

- ours with the write-back started every 32 MB on its own thread (the default);
- ours without it (all of the file left to the final fsync);
- python-mrcz 0.6.0 followed by an fsync of its file and its folder (the same work);
- python-mrcz alone, not durable;
- ours with ``keepbits=8`` and ``keepbits='auto'`` (float data only), whose ratio
  and largest relative error are reported too.

The disk's own bound is reported as well: the rate at which it takes a file of
the same size as our compressed output, written and fdatasync'ed. Rates are in
MB/s of decoded data, best of ``--repeat``.

Usage::

    python benchmarks/bench_durable.py              # 24x4096x4096 int8 and 64x1024x1024 float32
    python benchmarks/bench_durable.py --scale 0.25
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import mrcz
import numpy as np

from napari_mrcz import codec, samples
from napari_mrcz.codec import atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, best, interleaved, publish  # noqa: E402


def make_data(name: str, scale: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name.startswith("movie"):
        return rng.poisson(1.0, size=(max(2, int(24 * scale)), 4096, 4096)).astype(np.int8)
    return samples.tomogram(max(2, int(64 * scale)), 1024)


def durable(fn, path: str) -> None:
    """``fn()`` and then an fsync of ``path`` and of its folder: what a durable write must do."""
    fn()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    atomic.fsync_folder(os.path.dirname(path))


def no_writeback(fn) -> None:
    saved, atomic.WRITEBACK_BYTES = atomic.WRITEBACK_BYTES, 1 << 62
    try:
        fn()
    finally:
        atomic.WRITEBACK_BYTES = saved


def disk_rate(nbytes: int, folder: str, repeat: int) -> float:
    """Seconds for the disk to take ``nbytes`` written and fdatasync'ed (the bound of any durable write)."""
    blob = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    path = os.path.join(folder, "disk.bin")

    def once() -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(blob)
            getattr(os, "fdatasync", os.fsync)(f.fileno())
        os.unlink(path)

    return best(once, repeat)


def bench(name: str, data: np.ndarray, tmp: str, repeat: int) -> dict:
    ours, theirs = os.path.join(tmp, "ours.mrcz"), os.path.join(tmp, "theirs.mrcz")
    kw = dict(pixelsize=[1.0, 1.0, 1.0], compressor="zstd", clevel=1)
    runs = {"ours": lambda: codec.writeMRC(data, ours, **kw),
            "ours, no write-back": lambda: no_writeback(lambda: codec.writeMRC(data, ours, **kw)),
            "python-mrcz + fsync": lambda: durable(lambda: mrcz.writeMRC(data, theirs, **kw), theirs),
            "python-mrcz": lambda: mrcz.writeMRC(data, theirs, **kw)}
    lossy = data.dtype.kind == "f"
    if lossy:
        runs["ours, keepbits 8"] = lambda: codec.writeMRC(data, os.path.join(tmp, "k8.mrcz"), keepbits=8,
                                                           **kw)
        runs["ours, keepbits auto"] = lambda: codec.writeMRC(data, os.path.join(tmp, "ka.mrcz"),
                                                              keepbits="auto", **kw)
    times = interleaved(runs, repeat)
    size = os.path.getsize(ours)
    disk = disk_rate(size, tmp, repeat)
    mb = data.nbytes / 1e6
    out = {"data": name, "MB": mb, "ratio": data.nbytes / size,
           "MBps": {k: mb / v for k, v in times.items()}, "disk_MBps_of_output": size / 1e6 / disk,
           "disk_bound_MBps": mb / disk}
    out["vs_python_mrcz_fsync"] = times["python-mrcz + fsync"] / times["ours"]
    out["vs_python_mrcz"] = times["python-mrcz"] / times["ours"]
    out["writeback_gain"] = times["ours, no write-back"] / times["ours"]
    if lossy:
        for label, path in (("keepbits 8", "k8.mrcz"), ("keepbits auto", "ka.mrcz")):
            back, _ = codec.readMRC(os.path.join(tmp, path))
            nonzero = data != 0
            error = float(np.max(np.abs(back[nonzero] - data[nonzero]) / np.abs(data[nonzero])))
            out[label] = {"ratio": data.nbytes / os.path.getsize(os.path.join(tmp, path)),
                          "largest_relative_error": error,
                          "vs_lossless_speed": times["ours"] / times[f"ours, {label}"]}
    return out


def table(results: list[dict], repeat: int) -> str:
    lines = [f"{os.cpu_count()} cores, best of {repeat} interleaved runs, zstd clevel 1, MB/s of decoded "
             "data. Every write of ours is durable (fsync of the file before its rename, of the folder "
             "after). 'disk bound' is the rate at which this disk takes our compressed output, "
             "written and fdatasync'ed, in MB/s of decoded data: no durable write can beat it.",
             "",
             "| data | ratio | ours | ours, no write-back | python-mrcz + fsync | python-mrcz (not durable) "
             "| **x python-mrcz + fsync** | **x python-mrcz** | disk bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["MBps"]
        lines.append(f"| {r['data']} | {r['ratio']:.2f} | {m['ours']:.0f} | {m['ours, no write-back']:.0f} | "
                     f"{m['python-mrcz + fsync']:.0f} | {m['python-mrcz']:.0f} | "
                     f"**{r['vs_python_mrcz_fsync']:.2f}** | **{r['vs_python_mrcz']:.2f}** | "
                     f"{r['disk_bound_MBps']:.0f} |")
    lossy = [r for r in results if "keepbits 8" in r]
    if lossy:
        lines += ["", "| data | precision | ratio | largest relative error | write speed x lossless |",
                  "|---|---|---|---|---|"]
        for r in lossy:
            lines.append(f"| {r['data']} | lossless | {r['ratio']:.2f} | 0 | 1.00 |")
            for label in ("keepbits 8", "keepbits auto"):
                k = r[label]
                lines.append(f"| {r['data']} | {label} | {k['ratio']:.2f} | "
                             f"{k['largest_relative_error']:.1e} | {k['vs_lossless_speed']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--tmp", default=None, help="folder for the files (default: a temp dir on this disk)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp or ROOT) as tmp:
        for name in ("movie int8 24x4096x4096", "tomogram float32 64x1024x1024"):
            data = make_data(name, args.scale)
            results.append(bench(name, data, tmp, args.repeat))
            del data
    publish(args.out, "durable", "durable", {"scale": args.scale, "repeat": args.repeat, "results": results},
            table(results, args.repeat))


if __name__ == "__main__":
    main()
