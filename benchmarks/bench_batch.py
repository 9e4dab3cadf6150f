"""Batch compression: ``napari-mrcz compress`` on 1 and 2 dask workers against a python-mrcz loop.

Data: a folder of movies (default 16 of 24 x 4096 x 4096 int8 counting-mode
noise, 6.4 GB). Runs, in one go:

- python-mrcz 0.6.0, ``readMRC`` + ``writeMRC`` per file (zstd, clevel 1), one
  process: the baseline; and the same loop reading each output back and
  comparing it with the source, the check we make;
- ``napari-mrcz compress`` (zstd, clevel 1, verified) on a LocalCluster of 1
  and of 2 worker processes, and on 2 without verification.

Reports input GB/s, the ratio to the baseline, and peak resident memory per
process (sampled every 50 ms with psutil) beside one file's size. Writes the
table into docs/scaling.md::

    python benchmarks/bench_batch.py            # 16 movies
    python benchmarks/bench_batch.py --files 4  # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import mrcz
import numpy as np
import psutil
from _common import DOCS, update_docs

from napari_mrcz import batch


def make_movies(folder: Path, n: int, frames: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.poisson(1.0, size=(frames + n, size, size)).astype(np.int8)
    paths = []
    for k in range(n):
        path = folder / f"movie_{k:03d}.mrc"
        # written by python-mrcz, so that its readMRC returns one array (no copy in the baseline)
        mrcz.writeMRC(np.ascontiguousarray(base[k:k + frames]), str(path), pixelsize=[1.0, 0.83, 0.83])
        paths.append(path)
    return paths


class PeakRSS:
    """Peak resident memory of this process's children (and of this process), sampled in a thread."""

    def __init__(self, include_self: bool) -> None:
        self.include_self, self.peak, self.peak_self = include_self, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                for child in me.children(recursive=True):
                    self.peak = max(self.peak, child.memory_info().rss)
            except psutil.Error:
                pass
            self.peak_self = max(self.peak_self, me.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def python_mrcz_loop(paths: list[Path], out: Path, verify: bool = False) -> None:
    for path in paths:
        image, meta = mrcz.readMRC(str(path))
        image = np.stack(image) if isinstance(image, list) else image
        target = str(out / (path.stem + ".mrcz"))
        mrcz.writeMRC(image, target, pixelsize=meta["pixelsize"], compressor="zstd", clevel=1)
        if verify:  # the same promise as ours: the file decodes to the source
            written, _ = mrcz.readMRC(target)
            assert np.array_equal(np.stack(written) if isinstance(written, list) else written, image)


def ours(src: Path, out: Path, workers: int, verify: bool) -> None:
    jobs = batch.plan([src], out, compressed=True)
    outcomes = batch.run(jobs, compressed=True, compressor="zstd", clevel=1, backend=None, verify=verify,
                         overwrite=False, workers=workers, scheduler=None, quiet=True)
    assert all(o.status == "done" for o in outcomes), [o.reason for o in outcomes if o.status != "done"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mrcz-batch-", dir=os.environ.get("TMPDIR")))
    try:
        src = tmp / "src"
        src.mkdir()
        paths = make_movies(src, args.files, args.frames, args.size)
        gb = sum(p.stat().st_size for p in paths) / 1e9
        one_file = paths[0].stat().st_size
        print(f"{args.files} movies of {args.frames} x {args.size} x {args.size} int8: {gb:.2f} GB, "
              f"one file {one_file / 1e6:.0f} MB, {os.cpu_count()} cores")
        runs = {
            "python-mrcz loop (readMRC + writeMRC)": lambda out: python_mrcz_loop(paths, out),
            "python-mrcz loop, verified (+ readMRC of the output, compared)":
                lambda out: python_mrcz_loop(paths, out, verify=True),
            "napari-mrcz compress, 1 worker": lambda out: ours(src, out, 1, True),
            "napari-mrcz compress, 2 workers": lambda out: ours(src, out, 2, True),
            "napari-mrcz compress, 2 workers, --no-verify": lambda out: ours(src, out, 2, False),
        }
        results = {}
        for name, run in runs.items():
            out = tmp / "out"
            out.mkdir()
            in_process = name.startswith("python-mrcz")
            with PeakRSS(include_self=in_process) as rss:
                t0 = time.perf_counter()
                run(out)
                seconds = time.perf_counter() - t0
            ratio = gb / sum(p.stat().st_size for p in out.glob("*.mrcz")) * 1e9
            peak = rss.peak_self if in_process else rss.peak
            results[name] = (seconds, peak, ratio)
            print(f"{name:<46} {gb / seconds:6.2f} GB/s  peak {peak / 1e6:6.0f} MB per process  "
                  f"ratio {ratio:.2f}", flush=True)
            shutil.rmtree(out)
        base = results["python-mrcz loop (readMRC + writeMRC)"][0]
        rows = ["| run | GB/s (input) | vs python-mrcz loop | peak RSS per process | vs one file |",
                "|---|---|---|---|---|"]
        for name, (seconds, peak, _) in results.items():
            rows.append(f"| {name} | {gb / seconds:.2f} | {base / seconds:.2f}x | {peak / 1e6:.0f} MB | "
                        f"{peak / one_file:.2f}x |")
        note = (f"\n{args.files} movies of {args.frames} x {args.size} x {args.size} int8 ({gb:.1f} GB, "
                f"{one_file / 1e6:.0f} MB each), zstd clevel 1, {os.cpu_count()} cores; peak RSS of the "
                "python-mrcz loop is its one process, of napari-mrcz the largest worker process.")
        table = "\n".join(rows) + "\n" + note
        print("\n" + table)
        update_docs(DOCS / "scaling.md", "bench-batch", table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
