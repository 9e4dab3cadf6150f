"""Coarse levels of huge frames, binned on demand (codec, no napari)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz._reader import layer_data
from napari_mrcz.codec import frame_levels
from napari_mrcz.codec.frame_levels import FrameLevels, LazyPlane, plan_frame_levels
from napari_mrcz.codec.lazy import FrameBudget
from napari_mrcz.codec.source import open_image


def block_means(frame: np.ndarray, f: int) -> np.ndarray:
    """Each f x f block's mean, one block at a time in float64 (edge blocks hold what they have)."""
    ny, nx = frame.shape
    return np.array([[frame[y:y + f, x:x + f].astype(np.float64).mean() for x in range(0, nx, f)]
                     for y in range(0, ny, f)], dtype=np.float32)


@pytest.fixture
def small_huge(monkeypatch):
    """Frames count as huge from 64 pixels, levels go down to 16: small arrays, same code."""
    monkeypatch.setattr(frame_levels, "HUGE_SIDE", 64)
    monkeypatch.setattr(frame_levels, "COARSEST_SIDE", 16)


@pytest.mark.parametrize(("shape", "factors"), [
    ((8184, 11520), [2, 4, 8]),        # K3 super-resolution: 1440 x 1023 at the coarsest
    ((7420, 7676), [2, 4]),            # K2 super-resolution
    ((4092, 5760), [2, 4]),            # K3 counting
    ((4096, 4096), []),                # Falcon 4: shown as it is
    ((24000, 24000), [2, 4, 8, 16]),   # a montage
    ((100, 30000), [2, 4, 8, 16]),     # a long strip: its long side decides
])
def test_levels_go_down_until_no_side_exceeds_2048(shape, factors):
    assert plan_frame_levels(shape) == factors
    if factors:
        coarsest, finer = factors[-1], factors[-1] // 2
        assert max(-(-n // coarsest) for n in shape) <= 2048 < max(-(-n // finer) for n in shape)


def test_each_level_is_the_block_mean_of_each_frame(small_huge, rng):
    frames = rng.normal(100, 30, size=(5, 128, 256)).astype(np.float32)
    levels = FrameLevels(frames.__getitem__, 5, (128, 256), budget=FrameBudget())
    assert levels.factors == [2, 4, 8, 16]
    for f, stack in zip(levels.factors, levels.stacks(), strict=True):
        assert stack.shape == (5, 128 // f, 256 // f) and stack.dtype == np.float32
        for i in (0, 4, 2):
            expected = frames[i].reshape(128 // f, f, 256 // f, f).mean(axis=(1, 3), dtype=np.float64)
            np.testing.assert_array_equal(stack[i], expected.astype(np.float32))


def test_edges_that_do_not_divide_average_what_they_have(small_huge, rng):
    frames = rng.integers(-128, 127, size=(2, 101, 203), dtype=np.int8)
    levels = FrameLevels(frames.__getitem__, 2, (101, 203), budget=FrameBudget())
    for f, stack in zip(levels.factors, levels.stacks(), strict=True):
        assert stack.shape == (2, -(-101 // f), -(-203 // f))
        np.testing.assert_array_equal(stack[1], block_means(frames[1], f))


def test_float32_frames_sum_in_float64(small_huge):
    """1e8 + 1 + 1 + 1 in float32 stays 1e8: the means of such blocks must not lose the ones."""
    frame = np.ones((128, 128), np.float32)
    frame[::2, ::2] = 1e8
    level = FrameLevels(lambda i: frame, 1, frame.shape, budget=FrameBudget()).stacks()[0]
    np.testing.assert_array_equal(level[0], np.full((64, 64), np.float32((1e8 + 3) / 4)))


def test_a_box_of_a_level_bins_only_its_region_and_equals_the_whole(small_huge, rng):
    frames = rng.normal(size=(3, 203, 301)).astype(np.float32)
    reads = []

    def frame(i):
        reads.append(i)
        return frames[i]

    levels = FrameLevels(frame, 3, (203, 301), budget=FrameBudget())
    coarse = levels.stacks()[1]  # factor 4: 51 x 76
    whole = block_means(frames[2], 4)
    for box in [(slice(3, 17), slice(0, 40)), (slice(40, 51), slice(60, 76)), (slice(50, 51), slice(75, 76))]:
        np.testing.assert_array_equal(coarse[(2, *box)], whole[box])   # data[i, y0:y1, x0:x1]
        view = coarse[(slice(None), *box)]                                # data[:, y0:y1, x0:x1], then [i]
        np.testing.assert_array_equal(view[2], whole[box])
    assert levels.caches[1].cached(2) is None, "a box is binned alone, the whole level frame is not made"
    np.testing.assert_array_equal(coarse[2], whole)
    np.testing.assert_array_equal(coarse[2, 3:17, 0:40], whole[3:17, 0:40])  # now cut from the binned frame
    np.testing.assert_array_equal(coarse[-1, 3:17, 0:40], whole[3:17, 0:40])
    with pytest.raises(IndexError):
        coarse[3, 3:17, 0:40]


def test_binned_frames_share_the_budget_and_full_frames_are_read_through(tmp_path, small_huge, rng):
    movie = rng.integers(0, 4, size=(6, 200, 200), dtype=np.int8)
    path = tmp_path / "movie.mrcz"
    codec.writeMRC(list(movie), path, compressor="zstd", pixelsize=[1.0, 0.5, 0.5])
    source = open_image(path)
    ((levels, attributes, _),) = layer_data(source)
    assert attributes["multiscale"] and [lv.shape for lv in levels] == \
        [(6, 200, 200), (6, 100, 100), (6, 50, 50), (6, 25, 25), (6, 13, 13)]
    budget = levels[1].cache.budget
    before = budget.used
    np.testing.assert_array_equal(levels[3][4], block_means(movie[4], 8))
    assert source.cache.cached(4) is None, "the full frame was read through, not kept"
    assert budget.used - before >= 25 * 25 * 4, "the binned frame counts against the shared budget"
    assert budget is source.cache.budget


def test_a_single_huge_image_has_2d_levels(tmp_path, small_huge, rng):
    image = rng.normal(size=(300, 130)).astype(np.float32)
    path = tmp_path / "sum.mrc"
    codec.writeMRC(image, path, pixelsize=0.4)
    ((levels, attributes, _),) = layer_data(open_image(path))
    assert attributes["multiscale"] and [lv.shape for lv in levels] == [(300, 130), (150, 65), (75, 33),
                                                                        (38, 17), (19, 9), (10, 5)]
    assert isinstance(levels[2], LazyPlane) and levels[2].ndim == 2
    np.testing.assert_array_equal(np.asarray(levels[2]), block_means(image, 4))
    np.testing.assert_array_equal(levels[2][10:20, 5:9], block_means(image, 4)[10:20, 5:9])


def test_what_gets_no_frame_levels(tmp_path, small_huge, rng):
    """Small frames, RGB, complex and volumes with a z-binned pyramid open as before."""
    small = tmp_path / "small.mrcs"
    codec.writeMRC(rng.normal(size=(3, 64, 64)).astype(np.float32), small, pixelsize=1.0)
    complex_ = tmp_path / "fft.mrc"
    codec.writeMRC((rng.normal(size=(100, 100)) + 1j).astype(np.complex64), complex_, pixelsize=1.0)
    for path in (small, complex_):
        assert all(not attributes.get("multiscale") for _, attributes, _ in layer_data(open_image(path)))


def test_a_filling_level_gives_one_frame_at_once_and_the_whole_as_filled(small_huge, rng):
    """What napari's 2D view (one frame) and 3D view (the whole level) get while the fill runs."""
    from types import SimpleNamespace

    from napari_mrcz._pyramid import FillingStack

    frames = rng.normal(size=(6, 128, 128)).astype(np.float32)
    levels = FrameLevels(frames.__getitem__, 6, (128, 128), budget=FrameBudget(), factors=[2])
    filled = np.zeros((6, 64, 64), np.float32)
    fill = SimpleNamespace(done=0)  # frames the background pass has binned so far
    level = FillingStack(levels.stacks()[0], filled, fill)
    filled[:2] = [block_means(frames[i], 2) for i in range(2)]
    fill.done = 2
    for i in (0, 4, -1):  # 2D: data[:, y0:y1, x0:x1] then [i], or data[i]
        np.testing.assert_array_equal(level[:, 8:40, :][i], block_means(frames[i], 2)[8:40])
        np.testing.assert_array_equal(level[i], block_means(frames[i], 2))
        np.testing.assert_array_equal(level[i % 6:i % 6 + 1, 3:9][0], block_means(frames[i], 2)[3:9])
    assert levels.caches[0].cached(4) is not None and levels.caches[0].cached(0) is None
    whole = np.asarray(level[:, :, :])  # 3D: what is filled, nothing binned now
    np.testing.assert_array_equal(whole[:2], filled[:2])
    assert not whole[2:].any()
