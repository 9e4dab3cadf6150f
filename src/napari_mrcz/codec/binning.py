"""Binning by block mean: frames, and stacks of frames, made smaller for viewing.

A block of ``f x f`` pixels (``f x f x f`` voxels for a volume) becomes its
mean. Sums are taken in float64 whatever the input type, so a float32 frame
of 11520 x 8184 sums without the rounding a float32 accumulator would add;
the mean is returned as float32, what a display needs. Where a size is not a
multiple of ``f``, the last block along that axis is smaller and averages the
pixels it has: nothing is dropped and nothing is padded.

Frames are summed in strips of rows, so binning a K3 super-resolution frame
needs a few MB besides the frame, not a float64 copy of it.

:class:`BlockSums` keeps sums and counts rather than means, so a coarser level
is binned from the finer one's sums exactly (a mean of means is not the mean
when edge blocks are smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: float64 bytes a strip of rows may take while a frame is summed.
_STRIP_BYTES = 8 << 20


def block_starts(n: int, factor: int) -> np.ndarray:
    """Where each block of ``factor`` starts along an axis of ``n`` (the last may be shorter)."""
    return np.arange(0, n, factor)


def block_counts(n: int, factor: int) -> np.ndarray:
    """How many elements each block of ``factor`` holds along an axis of ``n``."""
    starts = block_starts(n, factor)
    return np.diff(np.append(starts, n))


def binned_size(n: int, factor: int) -> int:
    """Blocks along an axis of ``n`` (a smaller last block counts)."""
    return -(-n // factor)


@dataclass
class BlockSums:
    """Sums of blocks of one plane, with how many pixels each block holds.

    ``sums`` is float64 of shape (ceil(ny / f), ceil(nx / f)); ``rows`` and
    ``cols`` are the blocks' heights and widths, so block (i, j) holds
    ``rows[i] * cols[j]`` pixels (times ``planes`` for z-binned volumes).
    """

    sums: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    planes: int = 1

    def mean(self) -> np.ndarray:
        """The blocks' means, as float32."""
        out = np.empty(self.sums.shape, np.float32)
        cols = self.cols.astype(np.float64)
        step = max(1, _STRIP_BYTES // max(1, 8 * len(cols)))  # rows of counts at a time
        for y in range(0, len(self.rows), step):
            counts = np.outer(self.rows[y:y + step] * float(self.planes), cols)
            np.divide(self.sums[y:y + step], counts, out=out[y:y + step], casting="unsafe")
        return out

    def coarser(self) -> BlockSums:
        """The sums of blocks twice as large (2 x 2 of these), exactly."""
        return BlockSums(_sum_blocks(self.sums, 2, np.float64),
                         np.add.reduceat(self.rows, block_starts(len(self.rows), 2)),
                         np.add.reduceat(self.cols, block_starts(len(self.cols), 2)), self.planes)

    def add(self, other: BlockSums) -> None:
        """Add a plane of the same block layout (binning along z)."""
        self.sums += other.sums
        self.planes += other.planes


def _sum_whole(a: np.ndarray, factor: int, axis: int, dtype: type) -> np.ndarray:
    """Sums of consecutive groups of ``factor`` along ``axis`` (0 or 1; its length a multiple).

    Small factors add ``factor`` strided slices (numpy reduces a short axis
    slowly); large ones reduce a reshaped axis.
    """
    if factor > 16:
        shape = (-1, factor, a.shape[1]) if axis == 0 else (a.shape[0], -1, factor)
        return a.reshape(shape).sum(axis=axis + 1, dtype=dtype)
    pick = (lambda k: a[k::factor]) if axis == 0 else (lambda k: a[:, k::factor])
    out = pick(0).astype(dtype)
    for k in range(1, factor):
        out += pick(k)
    return out


def _sum_blocks(plane: np.ndarray, factor: int, dtype: type) -> np.ndarray:
    """Sums of ``factor x factor`` blocks of a 2D array, accumulated in ``dtype``.

    Strips of whole blocks of rows: the rows of each block are summed into a
    (blocks, nx) strip of at most ``_STRIP_BYTES``, then its columns; the
    shorter last block along an axis on its own. Several times faster than
    ``np.add.reduceat`` over thousands of small blocks.
    """
    ny, nx = plane.shape
    by, bx = binned_size(ny, factor), binned_size(nx, factor)
    whole_y, whole_x = ny // factor, nx // factor
    out = np.empty((by, bx), dtype=dtype)
    strip = max(1, _STRIP_BYTES // max(1, nx * np.dtype(dtype).itemsize))
    for first in range(0, by, strip):
        last = min(by, first + strip)
        rows = plane[first * factor:min(ny, last * factor)]
        whole = max(0, min(last, whole_y) - first)
        part = np.empty((last - first, nx), dtype=dtype)
        if whole:
            part[:whole] = _sum_whole(rows[:whole * factor], factor, 0, dtype)
        if last - first > whole:
            part[whole:] = rows[whole * factor:].sum(axis=0, dtype=dtype)
        if whole_x:
            out[first:last, :whole_x] = _sum_whole(part[:, :whole_x * factor], factor, 1, dtype)
        if bx > whole_x:
            out[first:last, whole_x] = part[:, whole_x * factor:].sum(axis=1)
    return out


def frame_sums(frame: np.ndarray, factor: int) -> BlockSums:
    """Block sums of one 2D frame (any real type), in float64."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"a frame is 2D, got shape {frame.shape}")
    if frame.dtype.kind not in "biuf":
        raise TypeError(f"cannot bin {frame.dtype} data by mean (complex or not numeric)")
    ny, nx = frame.shape
    return BlockSums(_sum_blocks(frame, factor, np.float64), block_counts(ny, factor),
                     block_counts(nx, factor))


def bin_frame(frame: np.ndarray, factor: int) -> np.ndarray:
    """A 2D frame binned ``factor`` x ``factor`` by block mean, as float32."""
    if factor < 1:
        raise ValueError(f"binning factor must be 1 or more, got {factor}")
    return frame_sums(frame, factor).mean()


def bin_stack(frames: object, factor: int, *, volume: bool) -> np.ndarray:
    """Bin an (n, ny, nx) array-like read one frame at a time: y and x, and z too for a volume.

    Parameters
    ----------
    frames
        Anything indexable by frame with a ``shape`` (an array, a lazy stack,
        an :class:`~napari_mrcz.codec.stack.MRCStack`'s frames).
    factor
        Block size along each binned axis.
    volume
        Bin along z as well (a tomogram or map); a movie or tilt series keeps
        every frame.
    """
    n = len(frames)  # type: ignore[arg-type]
    step = factor if volume else 1
    planes = []
    for start in range(0, n, step):
        total: BlockSums | None = None
        for i in range(start, min(n, start + step)):
            sums = frame_sums(np.asarray(frames[i]), factor)  # type: ignore[index]
            if total is None:
                total = sums
            else:
                total.add(sums)
        assert total is not None
        planes.append(total.mean())
    return np.stack(planes)
