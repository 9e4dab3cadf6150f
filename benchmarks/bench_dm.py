"""DM4 movies: time to open, time to the first frame, and full-read rate vs np.fromfile.

A synthetic K3-like DM4 movie (int16, default 4 GB) is written with the test
suite's DM writer; RosettaSciIO and ncempy are measured beside us where they
are installed. Best of ``--repeat`` runs on a warm page cache.

Usage::

    python benchmarks/bench_dm.py              # 4 GB, writes docs/benchmarks/dm.*
    python benchmarks/bench_dm.py --gb 0.5
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import best, publish  # noqa: E402

from napari_mrcz.codec.dm import DMFile  # noqa: E402
from tests.dm_writer import Hole, Writer, image_entry  # noqa: E402


def write_movie(path: Path, gb: float, ny: int = 4096, nx: int = 4096) -> tuple[int, int, int]:
    """Write a (frames, ny, nx) int16 DM4 movie of about ``gb`` GB, one frame at a time."""
    frames = max(1, round(gb * 1e9 / (ny * nx * 2)))
    shape = (frames, ny, nx)
    template = np.broadcast_to(np.zeros((), np.int16), shape)
    entry = image_entry(template, stored=Hole(frames * ny * nx, "int16"), scales=[1.0, 0.83, 0.83],
                        units=["", "Å", "Å"])
    root = {"ImageList": [entry], "Thumbnails": []}
    frame = (np.arange(ny * nx, dtype=np.int64) % 4093).astype(np.int16).reshape(ny, nx)
    with open(path, "wb") as f:
        for piece in Writer(4, "<").pieces(root):
            if isinstance(piece, Hole):
                for k in range(frames):
                    (frame + k).tofile(f)
            else:
                f.write(piece)
    return shape


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "movie.dm4"
        shape = write_movie(path, args.gb)
        nbytes = int(np.prod(shape)) * 2
        with DMFile(path) as dm:
            offset = dm.main_image.data.offset

        def open_only():
            DMFile(path).close()

        def first_frame():
            with DMFile(path) as dm:
                dm.read(None, 0, 1)

        def full():
            with DMFile(path) as dm:
                return dm.read()

        def fromfile():
            with open(path, "rb") as f:
                f.seek(offset)
                return np.fromfile(f, dtype="<i2", count=int(np.prod(shape)))

        results = {"shape": shape, "GB": nbytes / 1e9, "repeat": args.repeat, "readers": {}}
        results["readers"]["napari-mrcz"] = {
            "open_s": best(open_only, args.repeat), "first_frame_s": best(first_frame, args.repeat),
            "full_read_s": best(full, args.repeat)}
        results["np.fromfile_s"] = best(fromfile, args.repeat)
        if importlib.util.find_spec("rsciio"):
            from rsciio.digitalmicrograph import file_reader

            results["readers"]["RosettaSciIO (lazy)"] = {
                "open_s": best(lambda: file_reader(str(path), lazy=True), args.repeat),
                "first_frame_s": best(lambda: np.asarray(file_reader(str(path), lazy=True)[0]["data"][0]),
                                      args.repeat)}
        if importlib.util.find_spec("ncempy"):
            import ncempy.io.dm as ncem

            def ncem_first():
                with ncem.fileDM(str(path)) as f:
                    f.getSlice(0, 0)

            results["readers"]["ncempy"] = {"first_frame_s": best(ncem_first, args.repeat)}
    lines = [f"Synthetic DM4 movie {shape[0]} x {shape[1]} x {shape[2]} int16 ({nbytes / 1e9:.1f} GB), "
             f"warm page cache, best of {args.repeat}.", "",
             "| reader | open | first frame | full read | full read vs np.fromfile |",
             "|---|---|---|---|---|"]
    for name, r in results["readers"].items():
        full_s = r.get("full_read_s")
        cells = [name, ms(r.get("open_s")), ms(r.get("first_frame_s"))]
        cells += ([f"{nbytes / full_s / 1e6:.0f} MB/s", f"**{results['np.fromfile_s'] / full_s:.2f}**"]
                  if full_s else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| np.fromfile | - | - | {nbytes / results['np.fromfile_s'] / 1e6:.0f} MB/s | 1.00 |")
    publish(args.out, "dm", "dm", results, "\n".join(lines))


if __name__ == "__main__":
    main()
