"""``make demo``: write a sample MRCZ movie, read it back, and show what it holds.

Prints the header, the compression ratio and the write/read speed, next to
the same file written without compression.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from . import samples
from .codec import MRCStack, readMRC, writeMRC


def main(out: str = "demo-output") -> int:
    """Run the demo; returns a process exit code."""
    folder = Path(out)
    folder.mkdir(exist_ok=True)
    movie = samples.movie(nframes=24, size=2048)
    path = folder / "sample_movie.mrcz"
    mb = movie.nbytes / 1e6

    t0 = time.perf_counter()
    writeMRC(movie, path, **samples.SAMPLE_MOVIE_HEADER)
    t_write = time.perf_counter() - t0
    readMRC(path, idx=0)  # loads the decompression library once, outside the timing
    t0 = time.perf_counter()
    image, meta = readMRC(path)
    t_read = time.perf_counter() - t0
    assert np.array_equal(image, movie), "round trip failed"

    plain = folder / "sample_movie.mrc"
    writeMRC(movie, plain, pixelsize=[1.0, 0.83, 0.83])
    size = path.stat().st_size
    with MRCStack(path) as stack:
        t0 = time.perf_counter()
        frame = stack.read(12, 13)
        t_frame = time.perf_counter() - t0

    print(f"Wrote {path} ({size / 1e6:.1f} MB; uncompressed {plain.stat().st_size / 1e6:.1f} MB)\n")
    print("Header")
    for key in ("dimensions", "dtype", "compressor", "bloscFormat", "pixelsize", "pixelunits",
                "voltage", "C3", "gain", "packedBytes", "detector", "dose_per_frame"):
        print(f"  {key:<15} {meta[key]}")
    print()
    print(f"Compression ratio   {movie.nbytes / size:.2f} x (zstd, clevel 1, bit-shuffle)")
    print(f"Write               {mb / t_write:8.0f} MB/s  ({t_write * 1e3:.0f} ms for {mb:.0f} MB)")
    print(f"Read                {mb / t_read:8.0f} MB/s  ({t_read * 1e3:.0f} ms)")
    print(f"One frame (12)      {t_frame * 1e3:8.1f} ms  mean count {frame.mean():.2f} e/px")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
