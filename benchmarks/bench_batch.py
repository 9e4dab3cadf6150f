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
from napari_mrcz.codec import blosc_chunks


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
    """Peak resident memory of this process's children (and of this process), sampled in a thread.

    With ``cap``, a child (with its own children) above it is killed, and
    ``killed`` is what it held then: tools that would exhaust a shared machine.
    """

    def __init__(self, include_self: bool, cap: float | None = None) -> None:
        self.include_self, self.peak, self.peak_self = include_self, 0, 0
        self.cap, self.killed = cap, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)
                if self.cap is not None and rss > self.cap and not self.killed:
                    self.killed = rss
                    for proc in [*child.children(recursive=True), child]:
                        try:
                            proc.kill()
                        except psutil.Error:
                            pass
            self.peak_self = max(self.peak_self, me.memory_info().rss)
            self._stop.wait(0.05)

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


def per_core_rates(path: Path, frames: int = 4, repeat: int = 3) -> tuple[float, float]:
    """One core's zstd clevel 1 compression and decode rates (GB/s of input) on a movie's first frames.

    The chunks are made and decoded as a batch worker does (our Compressor, one blosc thread; the check's
    decode_into), so the two rates bound what a verified batch can do: every byte is compressed once and
    decoded once.
    """
    image, _ = mrcz.readMRC(str(path))
    stack = np.stack(image) if isinstance(image, list) else image
    sections = [np.ascontiguousarray(f) for f in stack[:frames]]
    nbytes = sections[0].nbytes
    compressor = blosc_chunks.Compressor("zstd", 1, 1, nbytes, "blosc1", 1)
    out = np.empty(nbytes, np.uint8)
    best_c = best_d = float("inf")
    for _ in range(repeat):
        with compressor.session():
            t0 = time.perf_counter()
            chunks = [compressor(s) for s in sections]
            best_c = min(best_c, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for chunk in chunks:
                blosc_chunks.decompress_into(chunk, out, chunk[0], 1)
            best_d = min(best_d, time.perf_counter() - t0)
    gb = nbytes * len(sections) / 1e9
    return gb / best_c, gb / best_d


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy so far (user, system, interrupts: the kernel's writeback too)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def arithmetic(c: float, d: float, loop: float, cost: dict[str, float], workers: int = 2) -> str:
    """What the rates allow at most, against the python-mrcz loop's ``loop`` GB/s; ``cost``: core-s per GB."""
    verified = workers / (1 / c + 1 / d)
    goal = workers / (1.1 * loop)
    return (f"The arithmetic, from one core's rates on this data measured in the same run (zstd clevel 1: "
            f"compress {c:.2f} GB/s, decode {d:.2f} GB/s): a verified batch compresses every byte once and "
            f"decodes it once, {1 / c + 1 / d:.2f} core-s per GB of input, so {workers} workers reach at "
            f"most {verified:.2f} GB/s before any reading, writing, checking or starting, "
            f"{verified / loop:.2f}x the python-mrcz loop ({loop:.2f} GB/s); 1.1x the loop allows "
            f"{goal:.2f} core-s per GB in all. "
            f"Measured, all cores' busy time (the kernel's included) per GB of input: python-mrcz loop "
            f"{cost['loop']:.2f}, our verified batch {cost['verified']:.2f}, --no-verify "
            f"{cost['unverified']:.2f}: what is left beyond compressing and decoding "
            f"({cost['verified'] - 1 / c - 1 / d:.2f} core-s per GB: reading the source, writing and syncing "
            f"the output, comparing, CRCs, starting the workers) is "
            f"{'more' if cost['verified'] > goal else 'less'} than the goal leaves for it "
            f"({goal - 1 / c - 1 / d:.2f}).")


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
        c_rate, d_rate = per_core_rates(paths[0])
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
            os.sync()  # the previous run's writeback (python-mrcz's, which does not sync) is not charged here
            with PeakRSS(include_self=in_process) as rss:
                busy, t0 = busy_seconds(), time.perf_counter()
                run(out)
                seconds = time.perf_counter() - t0
                busy = busy_seconds() - busy
            ratio = gb / sum(p.stat().st_size for p in out.glob("*.mrcz")) * 1e9
            peak = rss.peak_self if in_process else rss.peak
            results[name] = (seconds, peak, ratio, busy / gb)
            print(f"{name:<46} {gb / seconds:6.2f} GB/s  peak {peak / 1e6:6.0f} MB per process  "
                  f"ratio {ratio:.2f}  {busy / gb:.2f} core-s/GB", flush=True)
            shutil.rmtree(out)
        base = results["python-mrcz loop (readMRC + writeMRC)"][0]
        rows = ["| run | GB/s (input) | vs python-mrcz loop | CPU core-s per GB | peak RSS per process | "
                "vs one file |", "|---|---|---|---|---|---|"]
        for name, (seconds, peak, _, cost) in results.items():
            rows.append(f"| {name} | {gb / seconds:.2f} | {base / seconds:.2f}x | {cost:.2f} | "
                        f"{peak / 1e6:.0f} MB | {peak / one_file:.2f}x |")
        costs = {"loop": results["python-mrcz loop (readMRC + writeMRC)"][3],
                 "verified": results["napari-mrcz compress, 2 workers"][3],
                 "unverified": results["napari-mrcz compress, 2 workers, --no-verify"][3]}
        note = (f"\n{args.files} movies of {args.frames} x {args.size} x {args.size} int8 ({gb:.1f} GB, "
                f"{one_file / 1e6:.0f} MB each), zstd clevel 1, {os.cpu_count()} cores; peak RSS of the "
                "python-mrcz loop is its one process, of napari-mrcz the largest worker process.\n\n"
                + arithmetic(c_rate, d_rate, gb / base, costs))
        table = "\n".join(rows) + "\n" + note
        print("\n" + table)
        update_docs(DOCS / "scaling.md", "bench-batch", table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
