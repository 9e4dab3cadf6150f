"""Which blosc codec OME-Zarr chunks get: ratio and speed on the three kinds of data we write.

Data: a tomogram (float32, smooth structure and noise, ``samples.tomogram``)
in 128³ chunks, an int8 counting movie (``samples.movie``) in one-frame
512 x 512 chunks, and a segmentation (uint8, two labels) in 128³ chunks.
Each chunk is compressed by python-blosc on one thread, as our OME-Zarr writer
does (one chunk per thread), and decompressed again; best of ``--repeat``.
Candidates: copick's zstd 3 with byte shuffle, the portal's lz4 5, and zstd at
levels 1, 3 and 5 with byte shuffle, bit shuffle or none. Writes the table
into docs/benchmarks.md::

    python benchmarks/bench_zarr_codecs.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import blosc
import numpy as np

from napari_mrcz import samples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, publish  # noqa: E402

CANDIDATES = [("lz4", 5, "shuffle"), ("zstd", 1, "shuffle"), ("zstd", 1, "bitshuffle"),
              ("zstd", 3, "noshuffle"), ("zstd", 3, "shuffle"), ("zstd", 3, "bitshuffle"),
              ("zstd", 5, "shuffle"), ("zstd", 5, "bitshuffle")]
SHUFFLE = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}


def chunks(a: np.ndarray, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """``a`` cut in chunks of ``shape`` (C-contiguous copies)."""
    return [np.ascontiguousarray(a[z:z + shape[0], y:y + shape[1], x:x + shape[2]])
            for z in range(0, a.shape[0], shape[0]) for y in range(0, a.shape[1], shape[1])
            for x in range(0, a.shape[2], shape[2])]


def measure(blocks: list[np.ndarray], cname: str, clevel: int, shuffle: str, repeat: int) -> dict:
    nbytes = sum(b.nbytes for b in blocks)
    best_c = best_d = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoded = [blosc.compress_ptr(b.ctypes.data, b.size, b.itemsize, clevel=clevel,
                                      shuffle=SHUFFLE[shuffle], cname=cname) for b in blocks]
        best_c = min(best_c, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for e in encoded:
            blosc.decompress(e)
        best_d = min(best_d, time.perf_counter() - t0)
    return {"ratio": nbytes / sum(len(e) for e in encoded), "compress_mb_s": nbytes / best_c / 1e6,
            "decompress_mb_s": nbytes / best_d / 1e6}


def table(results: dict) -> str:
    lines = ["| data | codec | ratio | compress MB/s (1 thread) | decompress MB/s |", "|---|---|---|---|---|"]
    for data, rows in results["data"].items():
        for name, r in rows.items():
            lines.append(f"| {data} | {name} | {r['ratio']:.2f} | {r['compress_mb_s']:.0f} | "
                         f"{r['decompress_mb_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    blosc.set_nthreads(1)
    tomogram = samples.tomogram(depth=128, size=512)
    movie = samples.movie(nframes=8, size=1024)
    labels = ((tomogram > np.percentile(tomogram, 90)).astype(np.uint8)
              + (tomogram < np.percentile(tomogram, 2)).astype(np.uint8) * 2)
    kinds = {f"tomogram {tomogram.dtype}, 128³": chunks(tomogram, (128, 128, 128)),
             f"movie {movie.dtype}, 1 x 512²": chunks(movie, (1, 512, 512)),
             "labels uint8, 128³": chunks(labels, (128, 128, 128))}
    results = {"data": {kind: {f"{c}{lv} {sh}": measure(blocks, c, lv, sh, args.repeat)
                               for c, lv, sh in CANDIDATES} for kind, blocks in kinds.items()},
               "repeat": args.repeat}
    publish(ROOT / "docs" / "benchmarks", "zarr_codecs", "zarr_codecs", results, table(results))


if __name__ == "__main__":
    main()
