"""Fixing a header: ``napari-mrcz edit`` in place against rewriting the file, in one run.

Data: a plain MRC tomogram (float32, 2 GB at ``--gb 2``) and an MRCZ movie
(int8 counts, zstd). Each contender sets the pixel size (a new value each
time) and the voltage:

- napari-mrcz ``edit_header`` (journaled: old header to a journal, fsync,
  new header, fsync, journal removed);
- mrcfile ``open(mode='r+')`` (header overwritten in place, no journal, no
  fsync; plain MRC only: mrcfile does not read MRCZ);
- python-mrcz ``readMRC`` + ``writeMRC`` (what its users do: the whole file
  read and written again);
- napari-mrcz ``readMRC`` + ``writeMRC`` (the same, durable).

Best of ``--repeat`` runs on a warm page cache. Writes the table into
docs/benchmarks.md::

    python benchmarks/bench_edit.py            # 2 GB tomogram
    python benchmarks/bench_edit.py --gb 0.5   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import mrcfile
import mrcz
import numpy as np

from napari_mrcz import codec
from napari_mrcz.codec.header_edit import edit_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, best, publish  # noqa: E402


def make_files(tmp: str, gb: float) -> dict[str, str]:
    rng = np.random.default_rng(3)
    size = 2048
    nz = max(2, round(gb * 1e9 / (size * size * 4)))
    tomogram = os.path.join(tmp, "tomogram.mrc")
    slab = rng.normal(size=(8, size, size)).astype(np.float32)
    codec.writeMRC(np.concatenate([slab] * (nz // 8 + 1))[:nz], tomogram, pixelsize=[1.0, 1.0, 1.0])
    movie = os.path.join(tmp, "movie.mrcz")
    frames = max(2, round(gb * 1e9 / (4096 * 4096) / 2))
    counts = rng.poisson(1.0, size=(4, 4096, 4096)).astype(np.int8)
    codec.writeMRC(np.concatenate([counts] * (frames // 4 + 1))[:frames], movie, pixelsize=[1.0, 1.0, 1.0],
                   compressor="zstd", clevel=1)
    return {f"tomogram float32 {nz}x{size}x{size} (MRC)": tomogram,
            f"movie int8 {frames}x4096x4096 (MRCZ zstd)": movie}


class Value:
    """A new pixel size on every call, so that every edit really changes the header."""

    def __init__(self) -> None:
        self.v = 1.0

    def __call__(self) -> float:
        self.v += 0.01
        return self.v


def contenders(path: str, new: Value) -> dict:
    """The ways to set one file's pixel size and voltage."""
    compressed = path.endswith(".mrcz")
    kw = {"compressor": "zstd", "clevel": 1} if compressed else {}
    out = os.path.join(os.path.dirname(path), "rewritten" + (".mrcz" if compressed else ".mrc"))

    def rewrite_python_mrcz() -> None:
        image, _ = mrcz.readMRC(path)  # a plain volume comes back as a list of sections
        image = np.concatenate(image) if isinstance(image, list) else image
        mrcz.writeMRC(image.reshape(-1, *image.shape[-2:]), out, pixelsize=[new()] * 3, voltage=300.0, **kw)

    def rewrite_ours() -> None:
        image, _ = codec.readMRC(path)
        codec.writeMRC(image, out, pixelsize=[new()] * 3, voltage=300.0, **kw)

    def with_mrcfile() -> None:
        with mrcfile.open(path, mode="r+", permissive=True) as m:
            m.voxel_size = new()

    ways = {"napari-mrcz edit (journaled, fsync)": lambda: edit_header(path, pixelsize=new(), voltage=300.0)}
    if not compressed:
        ways["mrcfile r+ (no journal, no fsync)"] = with_mrcfile
    ways["python-mrcz readMRC + writeMRC"] = rewrite_python_mrcz
    ways["napari-mrcz readMRC + writeMRC"] = rewrite_ours
    return ways


def run(files: dict[str, str], repeat: int) -> dict:
    new = Value()
    results: dict = {}
    for name, path in files.items():
        times = {how: best(fn, repeat if "edit" in how or "r+" in how else max(1, repeat // 2))
                 for how, fn in contenders(path, new).items()}
        results[name] = {"bytes": os.path.getsize(path), "seconds": times}
        print(name, {k: f"{v * 1e3:.1f} ms" for k, v in times.items()}, flush=True)
    return results


def table(results: dict, repeat: int) -> str:
    lines = [f"{os.cpu_count()} cores, best of {repeat} runs (rewrites: {max(1, repeat // 2)}), warm page "
             "cache. Each run sets a new pixel size and the voltage.", "",
             "| file | size | how | time | **x napari-mrcz edit** |", "|---|---|---|---|---|"]
    for name, res in results.items():
        ours = res["seconds"]["napari-mrcz edit (journaled, fsync)"]
        for how, seconds in res["seconds"].items():
            shown = f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"
            lines.append(f"| {name} | {res['bytes'] / 1e9:.2f} GB | {how} | {shown} | "
                         f"**{seconds / ours:,.0f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0, help="size of the tomogram, GB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tmp", default=None, help="folder for the files (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        results = run(make_files(tmp, args.gb), args.repeat)
    publish(ROOT / "docs" / "benchmarks", "edit", "edit", results, table(results, args.repeat))


if __name__ == "__main__":
    main()
