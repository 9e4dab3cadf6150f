"""Synthetic sample data: a counting-mode cryo-EM movie and a tomogram.

Made on the fly (no downloads), deterministic, and shaped like the real thing:
the movie is Poisson counts (about 1 e/px/frame) over a field of "particles"
that drift a little from frame to frame; the tomogram is a cell's edge at
10 Å per voxel (membranes, vesicles, ribosomes, filaments) in noise, made plane
by plane so that it can be of any size. No napari imports here.
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


def movie(nframes: int = 16, size: int = 1024, seed: int = 0,
          shape: tuple[int, int] | None = None) -> np.ndarray:
    """A counting-mode movie: int8 electron counts, (nframes, size, size), or (nframes, *shape)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape if shape is not None else (size, size)
    contrast = 1.0 - 0.45 * _particles(rng, ny, nx, n=ny * nx // (12 * min(ny, nx)), radius=min(ny, nx) / 90)
    frames = np.empty((nframes, ny, nx), np.int8)
    for k in range(nframes):
        shifted = np.roll(contrast, (k // 3, k // 4), axis=(0, 1))
        frames[k] = np.minimum(rng.poisson(1.2 * shifted), 127)
    return frames


#: Specimen contrast against unit noise: dense matter is dark, as in a reconstructed tomogram.
CONTRAST = 0.6


class Tomogram:
    """A cryo-electron tomogram of a cell's edge, made plane by plane (any size, little memory).

    At 10 Å per voxel: a curved plasma membrane and vesicles (lipid bilayers:
    two dense leaflets 4 nm apart), ribosome-sized particles (25 nm, two
    subunits), a few actin-like filaments, in low-pass noise at the contrast of
    a real tomogram (dense matter dark, a signal-to-noise ratio per
    voxel, about 0.07). Index it like an array of shape ``(depth, size, size)``; planes are
    float32 and deterministic for a ``seed``.
    """

    def __init__(self, depth: int = 96, size: int = 384, seed: int = 1) -> None:
        self.shape = (depth, size, size)
        self.dtype, self.ndim = np.dtype(np.float32), 3
        self.seed = seed
        rng = np.random.default_rng(seed)
        area = size * size / (384 * 384)
        n_vesicles, n_particles = max(2, int(10 * area)), max(5, int(140 * area * depth / 96))
        self.vesicles = np.column_stack([rng.uniform([0.15 * depth, 0, 0], [0.85 * depth, size, size],
                                                     size=(n_vesicles, 3)),
                                         rng.uniform(14, 38, size=n_vesicles)])
        self.particles = np.column_stack([rng.uniform([0, 0, 0], [depth, size, size], size=(n_particles, 3)),
                                          rng.uniform(0, 2 * np.pi, size=(n_particles, 2))])
        self.filaments = [(rng.uniform(0.2, 0.8) * depth, rng.uniform(0, size), rng.uniform(-0.6, 0.6))
                          for _ in range(max(1, int(4 * area)))]
        self.membrane = (0.2 * depth, 0.06 * depth, size / rng.uniform(1.5, 3.0))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return np.stack([self[i] for i in range(self.shape[0])]).astype(dtype or np.float32)

    def __getitem__(self, i: int) -> np.ndarray:
        return (-CONTRAST * self.density(i) + self.noise(i)).astype(np.float32)

    def noise(self, i: int) -> np.ndarray:
        """Plane ``i``'s noise: low-pass (3 x 3 binomial), unit variance."""
        _, ny, nx = self.shape
        rng = np.random.default_rng((self.seed, i))
        noise = rng.normal(size=(ny + 2, nx + 2)).astype(np.float32)
        noise = noise[:-2] + 2 * noise[1:-1] + noise[2:]
        return (noise[:, :-2] + 2 * noise[:, 1:-1] + noise[:, 2:]) / 6.0

    def density(self, i: int) -> np.ndarray:
        """Plane ``i`` without noise: the specimen's density (0 in ice)."""
        depth, ny, nx = self.shape
        z = float(i) + 0.5
        density = np.zeros((ny, nx), np.float32)
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        # the plasma membrane: a gently curved bilayer sheet
        z0, amp, period = self.membrane
        height = z0 + amp * np.sin(xx / period) * np.cos(yy / (1.3 * period))
        density += _bilayer(np.abs(z - height))
        for cz, cy, cx, r in self.vesicles:
            if abs(z - cz) > r + 4:
                continue
            ring = np.sqrt(max(r * r - (z - cz) ** 2, 0.0))
            box = _box(cy, cx, ring + 5, ny, nx)
            if box is None:
                continue
            sy, sx = box
            d = np.sqrt((yy[sy, sx] - cy) ** 2 + (xx[sy, sx] - cx) ** 2 + (z - cz) ** 2)
            density[sy, sx] += _bilayer(np.abs(d - r))
        for cz, cy, cx, a, b in self.particles:  # a large and a small subunit, 25 nm across
            for (dz, dy, dx), radius, weight in (((0.0, 0.0, 0.0), 9.0, 1.0),
                                                 ((5 * np.cos(b), 7 * np.cos(a), 7 * np.sin(a)), 6.5, 0.9)):
                pz, py, px = cz + dz, cy + dy, cx + dx
                if abs(z - pz) > radius + 2:
                    continue
                box = _box(py, px, radius + 3, ny, nx)
                if box is None:
                    continue
                sy, sx = box
                d2 = (yy[sy, sx] - py) ** 2 + (xx[sy, sx] - px) ** 2 + (z - pz) ** 2
                density[sy, sx] += weight * 1.4 / (1 + np.exp((np.sqrt(d2) - radius) / 0.8))
        for fz, fy, slope in self.filaments:  # actin: 7 nm rods lying in the section
            if abs(z - fz) > 8:
                continue
            d = np.abs((yy - fy - slope * xx) / np.sqrt(1 + slope * slope))
            density += 1.2 * np.exp(-(d ** 2 + (z - fz) ** 2) / (2 * 2.5 ** 2))
        return density


def _bilayer(distance: np.ndarray) -> np.ndarray:
    """Density across a lipid bilayer: two leaflets 2 voxels (2 nm) either side of the middle."""
    return 1.4 * (np.exp(-((distance - 2.0) ** 2) / 0.9) + np.exp(-((distance + 2.0) ** 2) / 0.9))


def _box(cy: float, cx: float, r: float, ny: int, nx: int) -> tuple[slice, slice] | None:
    y0, y1 = max(0, int(cy - r)), min(ny, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(nx, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def tomogram(depth: int = 96, size: int = 384, seed: int = 1) -> np.ndarray:
    """A float32 tomogram of a cell's edge, (depth, size, size): see :class:`Tomogram`."""
    return np.asarray(Tomogram(depth, size, seed))


#: writeMRC arguments for the sample movie: a K3-like header, zstd at clevel 1.
SAMPLE_MOVIE_HEADER = dict(
    pixelsize=[1.0, 0.83, 0.83], pixelunits="\\AA", voltage=300.0, C3=2.7, gain=1.0,
    compressor="zstd", clevel=1, meta={"detector": "synthetic K3 (counting)", "dose_per_frame": 1.2})


def write_sample_movie(path: str | os.PathLike, nframes: int = 16, size: int = 1024) -> None:
    """Write :func:`movie` as an MRCZ file of frames with :data:`SAMPLE_MOVIE_HEADER`."""
    from .codec import writeMRC

    frames = movie(nframes, size)
    writeMRC(list(frames), path, **SAMPLE_MOVIE_HEADER)  # a list of frames: a stack, not a volume
