"""Positioned reads without POSIX: which fallback, and what the portable path costs.

Windows' Python has no ``os.pread``/``os.preadv`` and no ``madvise``. The codec
then reads through a handle per thread (:mod:`napari_mrcz.codec.positioned`).
This measures, on this machine and in one run:

- raw positioned reads of a file in the page cache, 16 MiB pieces (frames)
  and 64 KiB pieces (tags, chunk headers), from 1 and 2 threads: ``os.preadv``
  (POSIX), our fallback (a handle per thread: seek + ``readinto``), and the
  two other candidates: one handle behind a lock, and copies out of a
  read-only memory map;
- whole reads through :class:`MRCStack` of a plain MRC and an MRCZ (zstd)
  file, on the POSIX path and on the portable path (``HAVE_PREAD`` off).

Usage::

    python benchmarks/bench_portable.py            # 1 GB, writes docs/benchmarks/portable.*
    python benchmarks/bench_portable.py --gb 0.25
"""

from __future__ import annotations

import argparse
import io
import mmap
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import interleaved, publish  # noqa: E402

from napari_mrcz import codec  # noqa: E402
from napari_mrcz.codec import positioned  # noqa: E402
from napari_mrcz.codec.stack import MRCStack  # noqa: E402


class _Locked:
    """One handle; a lock around seek + readinto."""

    def __init__(self, path: str) -> None:
        self.f, self.lock = io.FileIO(path, "r"), threading.Lock()

    def readinto(self, offset: int, buf: memoryview) -> int:
        with self.lock:
            self.f.seek(offset)
            return self.f.readinto(buf)


class _Mapped:
    """Copies out of one read-only memory map of the whole file."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.view = memoryview(self.map)

    def readinto(self, offset: int, buf: memoryview) -> int:
        part = self.view[offset:offset + len(buf)]
        buf[:len(part)] = part
        return len(part)


def _portable(on: bool) -> None:
    positioned.HAVE_PREAD = not on and hasattr(os, "preadv")


def sweep(reader, size: int, piece: int, threads: int, portable: bool = False):
    """A function reading the whole file in ``piece``-byte reads spread over ``threads`` threads."""
    offsets = list(range(0, size - piece + 1, piece))

    def work(part: list[int]) -> None:
        buf = memoryview(bytearray(piece))
        for off in part:
            reader.readinto(off, buf)

    def run() -> None:
        _portable(portable)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, [offsets[k::threads] for k in range(threads)]))
        finally:
            _portable(False)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    results: dict = {"GB": args.gb, "repeat": args.repeat, "raw": {}, "stack": {}}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        frames = max(2, round(args.gb * 1e9 / (4096 * 4096)))
        data = np.random.default_rng(0).poisson(1.0, size=(frames, 4096, 4096)).astype(np.int8)
        plain, packed = Path(tmp) / "movie.mrc", Path(tmp) / "movie.mrcz"
        codec.writeMRC(data, plain)
        codec.writeMRC(data, packed, compressor="zstd", clevel=1)
        size = plain.stat().st_size
        path = str(plain)
        readers = {"os.preadv (POSIX)": positioned.PositionedFile(path),
                   "a handle per thread (ours)": positioned.PositionedFile(path),
                   "one handle + lock": _Locked(path), "memory map copies": _Mapped(path)}
        for piece in (16 << 20, 64 << 10):
            for threads in (1, 2):
                fns = {name: sweep(r, size, piece, threads, portable=name.endswith("(ours)"))
                       for name, r in readers.items()}
                rates = {k: size / t / 1e6 for k, t in interleaved(fns, args.repeat).items()}
                results["raw"][f"{piece >> 10} KiB x {threads}"] = rates

        def whole(p: Path, portable: bool):
            def run() -> None:
                _portable(portable)
                try:
                    with MRCStack(p) as stack:
                        stack.read()
                finally:
                    _portable(False)
            return run
        for p in (plain, packed):
            times = interleaved({"POSIX": whole(p, False), "portable": whole(p, True)}, args.repeat)
            results["stack"][p.suffix] = {k: data.nbytes / t / 1e6 for k, t in times.items()}
    names = list(readers)
    lines = [f"{args.gb:.2f} GB int8 movie in the page cache, best of {args.repeat} interleaved runs; "
             "MB/s, and each fallback against `os.preadv`.", "",
             "| reads x threads | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row, rates in results["raw"].items():
        base = rates[names[0]]
        cells = [f"{rates[names[0]]:.0f}"] + [f"{rates[n]:.0f} ({rates[n] / base:.2f})" for n in names[1:]]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "| whole read through MRCStack | POSIX path | portable path | portable / POSIX |",
              "|---|---|---|---|"]
    for suffix, rates in results["stack"].items():
        lines.append(f"| {suffix} | {rates['POSIX']:.0f} MB/s | {rates['portable']:.0f} MB/s | "
                     f"**{rates['portable'] / rates['POSIX']:.2f}** |")
    publish(args.out, "portable", "portable", results, "\n".join(lines))


if __name__ == "__main__":
    main()
