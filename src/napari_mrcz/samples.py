"""Synthetic sample data: a counting-mode cryo-EM movie and a tomogram.

Made on the fly (no downloads), deterministic, and shaped like the real thing:
the movie is Poisson counts (about 1 e/px/frame) over a field of "particles"
that drift a little from frame to frame; the tomogram is a box of dense
spheres in noise. No napari imports here.
"""

from __future__ import annotations

import os

import numpy as np


def _particles(rng: np.random.Generator, ny: int, nx: int, n: int, radius: float) -> np.ndarray:
    """A 2D density of ``n`` soft discs, values 0..1 (each drawn on its own patch)."""
    density = np.zeros((ny, nx), np.float32)
    half = int(3 * radius) + 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    disc = np.exp(-(yy**2 + xx**2) / (2 * radius**2))
    for cy, cx in rng.integers([half, half], [ny - half, nx - half], size=(n, 2)):
        density[cy - half:cy + half + 1, cx - half:cx + half + 1] += disc
    return density / density.max()


def movie(nframes: int = 16, size: int = 1024, seed: int = 0) -> np.ndarray:
    """A counting-mode movie: int8 electron counts, (nframes, size, size)."""
    rng = np.random.default_rng(seed)
    contrast = 1.0 - 0.45 * _particles(rng, size, size, n=size // 12, radius=size / 90)
    frames = np.empty((nframes, size, size), np.int8)
    for k in range(nframes):
        shifted = np.roll(contrast, (k // 3, k // 4), axis=(0, 1))
        frames[k] = np.minimum(rng.poisson(1.2 * shifted), 127)
    return frames


def tomogram(depth: int = 64, size: int = 256, seed: int = 1) -> np.ndarray:
    """A float32 tomogram: dense spheres (proteins, vesicles) in noise, (depth, size, size)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[0:depth, 0:size, 0:size]
    volume = np.zeros((depth, size, size), np.float32)
    for _ in range(40):
        cz, cy, cx = rng.uniform([0, 0, 0], [depth, size, size])
        r = rng.uniform(3, 12)
        z0, y0, x0 = (max(0, int(c - r)) for c in (cz, cy, cx))
        z1, y1, x1 = (int(c + r) + 1 for c in (cz, cy, cx))
        inside = ((zz[z0:z1] - cz) ** 2 + (yy[:, y0:y1] - cy) ** 2 + (xx[..., x0:x1] - cx) ** 2) < r * r
        volume[z0:z1, y0:y1, x0:x1] += inside
    volume += rng.normal(scale=0.6, size=volume.shape).astype(np.float32)
    return volume


#: writeMRC arguments for the sample movie: a K3-like header, zstd at clevel 1.
SAMPLE_MOVIE_HEADER = dict(
    pixelsize=[1.0, 0.83, 0.83], pixelunits="\\AA", voltage=300.0, C3=2.7, gain=1.0,
    compressor="zstd", clevel=1, meta={"detector": "synthetic K3 (counting)", "dose_per_frame": 1.2})


def write_sample_movie(path: str | os.PathLike, nframes: int = 16, size: int = 1024) -> None:
    """Write :func:`movie` as an MRCZ file of frames with :data:`SAMPLE_MOVIE_HEADER`."""
    from .codec import writeMRC

    frames = movie(nframes, size)
    writeMRC(list(frames), path, **SAMPLE_MOVIE_HEADER)  # a list of frames: a stack, not a volume
