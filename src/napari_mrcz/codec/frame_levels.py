"""Coarse levels of huge frames, binned on demand: zoomed-out views of movies, tilt series, montages.

A K3 super-resolution frame is 11520 x 8184 pixels and a montage can be
larger; a screen shows about 2000 x 1000. Frames with a side over
``HUGE_SIDE`` get levels binned 2, 4, 8... in y and x by block mean
(:mod:`.binning`; the frame axis is never binned), down to a level whose
sides are at most ``COARSEST_SIDE``. A viewer zoomed out draws a coarse level,
a viewer zoomed in crops the full frame. A stack that may be shown in 3D
gets one more level, what napari draws in 3D, as small as a volume's
coarsest (:func:`stack_3d_factor`).

Nothing is binned ahead: level ``k`` of frame ``i`` is binned from the full
frame the first time it is asked for, then kept in a :class:`~.lazy.FrameCache`
that counts against the same memory budget as the full frames (the shared
one by default), and the frames next in the direction of travel are binned in
the background, at idle priority. The full frame is read through, not kept:
binning a frame does not push the frames being shown out of the budget.

For scripts::

    from napari_mrcz.codec.frame_levels import FrameLevels
    levels = FrameLevels(lambda i: movie[i], len(movie), movie.shape[1:])
    small = levels.stacks()[-1][5]      # frame 5, binned to at most 2048 on a side
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .binning import bin_frame, binned_size
from .lazy import FrameBudget, FrameCache, LazyStack
from .pyramid import COARSEST_BYTES

#: Frames with a side longer than this get coarse levels (larger than a 4096 x 4096 camera frame).
HUGE_SIDE = 4096
#: The coarsest level has no side longer than this (a zoomed-out view of a whole screen).
COARSEST_SIDE = 2048


def plan_frame_levels(frame_shape: tuple[int, int]) -> list[int]:
    """Binning factors of the coarse levels of frames of this shape; none for frames that are not huge.

    Examples
    --------
    >>> plan_frame_levels((8184, 11520))
    [2, 4, 8]
    >>> plan_frame_levels((4096, 4096))
    []
    """
    ny, nx = frame_shape
    factors: list[int] = []
    if max(ny, nx) <= HUGE_SIDE:
        return factors
    factor = 1
    while max(binned_size(ny, factor), binned_size(nx, factor)) > COARSEST_SIDE:
        factor *= 2
        factors.append(factor)
    return factors


def stack_3d_factor(shape: tuple[int, int, int], coarsest_bytes: int = COARSEST_BYTES) -> int:
    """The binning factor in y and x of the level of a movie or tilt series napari draws in 3D.

    The smallest power of two at which every frame fits ``coarsest_bytes`` as
    float32, as a volume's coarsest level (the frame axis is not binned); 1
    for stacks that fit already.

    Examples
    --------
    >>> stack_3d_factor((41, 4096, 4096))   # a tilt series: 41 x 512 x 512 drawn in 3D
    8
    """
    n, ny, nx = shape
    factor = 1
    while n * binned_size(ny, factor) * binned_size(nx, factor) * 4 > coarsest_bytes and \
            min(binned_size(ny, factor), binned_size(nx, factor)) > 1:
        factor *= 2
    return factor


class FrameLevels:
    """The coarse levels of every frame of a stack, each binned when first asked for.

    Parameters
    ----------
    frame
        ``frame(i) -> ndarray``: full frame ``i`` (2D, real; called from
        several threads), read to bin a whole frame and not kept.
    n
        Number of frames.
    frame_shape
        Shape of one full frame.
    budget
        The memory budget the binned frames count against (default: the one
        all open files share).
    keep
        ``keep(i) -> ndarray``: full frame ``i``, kept where frames are kept
        (a viewer's frame cache). Zoomed in on a coarse level, a viewer asks
        for boxes of it as it pans; each bins only its region of the full
        frame, read through ``keep`` so that the next box finds it. Default:
        ``frame``.
    factors
        The levels' binning factors (default: :func:`plan_frame_levels`'s).
    wait_for_prefetch
        As :class:`~.lazy.FrameCache`'s: for frames fetched over the network.
    """

    def __init__(self, frame: Callable[[int], np.ndarray], n: int, frame_shape: tuple[int, int],
                 budget: FrameBudget | None = None, keep: Callable[[int], np.ndarray] | None = None,
                 factors: list[int] | None = None, wait_for_prefetch: bool = False) -> None:
        self.frame_shape = tuple(frame_shape)
        self.factors = plan_frame_levels(self.frame_shape) if factors is None else list(factors)
        self.shapes = [(binned_size(frame_shape[0], f), binned_size(frame_shape[1], f)) for f in self.factors]
        self.caches = [FrameCache(lambda i, f=f: bin_frame(frame(i), f), n, budget=budget,
                                  wait_for_prefetch=wait_for_prefetch) for f in self.factors]
        self._keep = keep or frame

    def _region(self, k: int, i: int, box: tuple[slice, ...]) -> np.ndarray:
        """Box ``box`` of level ``k`` of frame ``i``: from the binned frame if kept, else binned alone."""
        whole = self.caches[k].cached(i)
        if whole is not None:
            return whole[box]
        f, (ny, nx) = self.factors[k], self.frame_shape
        ys, xs = box
        # Blocks start at multiples of f: the box's blocks are the whole frame's blocks.
        full = self._keep(i)[ys.start * f:min(ny, ys.stop * f), xs.start * f:min(nx, xs.stop * f)]
        return bin_frame(full, f)

    def stacks(self) -> list[LazyStack]:
        """One lazy (n, ny, nx) float32 array per level, finest first."""
        return [LazyStack(cache, shape, np.float32, region=functools.partial(self._region, k))
                for k, (cache, shape) in enumerate(zip(self.caches, self.shapes, strict=True))]

    def close(self) -> None:
        """Stop binning ahead and drop the binned frames."""
        for cache in self.caches:
            cache.close()


class LazyPlane:
    """The only frame of a one-frame :class:`~.lazy.LazyStack`, as a 2D array (a single huge image)."""

    def __init__(self, stack: LazyStack) -> None:
        self.stack = stack
        self.shape, self.dtype, self.ndim = stack.shape[1:], stack.dtype, stack.ndim - 1

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.stack.frame(0)[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        frame = self.stack.frame(0)
        return np.array(frame, dtype=dtype) if dtype is not None else np.array(frame)
