"""The lazy stack napari slices: indexing like numpy, a bounded cache, prefetch in the direction of travel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.lazy import FrameBudget, FrameCache, LazyStack
from napari_mrcz.codec.source import open_image

from .conftest import make_stack


def counting(data: np.ndarray):
    calls: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def read(i: int) -> np.ndarray:
        background = threading.current_thread() is not threading.main_thread()
        with lock:
            calls.append((i, background))
        return data[i].copy()

    return read, calls


@pytest.fixture
def stack(rng):
    data = make_stack(rng, "float32", shape=(10, 6, 7))
    read, calls = counting(data)
    cache = FrameCache(read, 10, prefetch=2)
    yield data, LazyStack(cache, data.shape[1:], data.dtype), calls
    cache.close()


@pytest.mark.parametrize("key", [3, -1, np.s_[2:5], np.s_[::3], np.s_[4, 1:3], np.s_[..., 2],
                                 np.s_[7, ..., ::2], np.s_[[1, 4]], (np.int64(2), slice(None))])
def test_indexes_like_numpy(stack, key):
    data, lazy, _ = stack
    np.testing.assert_array_equal(lazy[key], data[key])


def test_shape_dtype_and_asarray(stack):
    data, lazy, _ = stack
    assert lazy.shape == data.shape and lazy.dtype == data.dtype and lazy.ndim == 3
    assert lazy.nbytes == data.nbytes and len(lazy) == 10
    np.testing.assert_array_equal(np.asarray(lazy), data)
    with pytest.raises(IndexError):
        lazy.frame(10)


def wait_for(cache: FrameCache, frames: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with cache._lock:
            if all(f in cache._frames for f in frames):
                return
        time.sleep(0.01)
    raise AssertionError(f"frames {frames} were not prefetched")


def test_stepping_prefetches_ahead_in_the_direction_of_travel(stack):
    _, lazy, calls = stack
    lazy[4]
    lazy[5]
    wait_for(lazy.cache, [6, 7])
    lazy[6]
    assert lazy.cache.hits >= 1
    assert (6, True) in calls and (7, True) in calls
    lazy[5]
    lazy[4]
    wait_for(lazy.cache, [3, 2])
    assert all(bg for i, bg in calls if i in (2, 3))


def test_a_jump_prefetches_nothing(stack):
    _, lazy, calls = stack
    lazy[0]
    lazy[8]
    time.sleep(0.2)
    assert sorted(i for i, _ in calls) == [0, 8]


def test_frames_taken_for_a_binned_level_do_not_turn_the_prefetch_around(stack):
    """A binned level reads the full frame the viewer shows (take) after the viewer did: that is not a
    step back, so nothing is prefetched behind, and the viewer's next step finds its frames ahead."""
    data, lazy, calls = stack
    cache = lazy.cache
    lazy[4]
    lazy[5]  # the viewer steps forward: 6 and 7 are prefetched
    wait_for(cache, [6, 7])
    np.testing.assert_array_equal(cache.take(4), data[4])
    time.sleep(0.2)
    assert sorted(i for i, _ in calls) == [4, 5, 6, 7], "taking frame 4 prefetched frames behind it"
    lazy[6]  # the viewer's next step forward
    wait_for(cache, [8])


def test_the_cache_is_bounded(rng):
    data = make_stack(rng, "uint16", shape=(40, 4, 4))
    read, calls = counting(data)
    budget = FrameBudget(limit_bytes=4 * data[0].nbytes)
    cache = FrameCache(read, 40, prefetch=0, budget=budget)
    lazy = LazyStack(cache, data.shape[1:], data.dtype)
    for i in range(10):
        lazy[i]
    assert len(cache._frames) == 4 and budget.used == 4 * data[0].nbytes
    lazy[0]
    assert calls.count((0, False)) == 2, "frame 0 was evicted and decoded again"


def test_all_open_files_share_one_budget(rng):
    """Two files viewed in turn keep no more than the budget between them, oldest frames going first."""
    a, b = make_stack(rng, "float32", shape=(20, 8, 8)), make_stack(rng, "float32", shape=(20, 8, 8))
    budget = FrameBudget(limit_bytes=6 * a[0].nbytes)
    (read_a, calls_a), (read_b, _) = counting(a), counting(b)
    first = FrameCache(read_a, 20, prefetch=0, budget=budget)
    second = FrameCache(read_b, 20, prefetch=0, budget=budget)
    for i in range(5):
        first.get(i)
    for i in range(4):
        second.get(i)
    assert len(first._frames) + len(second._frames) == 6 and budget.used == 6 * a[0].nbytes
    assert sorted(first._frames) == [3, 4], "the first file's oldest frames made room"
    first.get(4)
    assert calls_a.count((4, False)) == 1, "a kept frame is served from memory"
    second.close()
    assert budget.used == 2 * a[0].nbytes
    del first
    import gc

    gc.collect()
    assert budget.used == 0, "a cache dropped without close gives its share back"


def test_channels_and_transforms_share_one_cache(rng):
    data = (make_stack(rng, "float32", shape=(6, 5, 5)) + 1j).astype(np.complex64)
    read, _ = counting(data)
    cache = FrameCache(read, 6, prefetch=0)
    second = LazyStack(cache, (5, 5), np.float32, index=lambda i: 2 * i + 1, n=3, transform=np.abs)
    np.testing.assert_allclose(np.asarray(second), np.abs(data[1::2]))


def test_damaged_frames_are_reported_when_shown(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(4, 64, 64)) // 256
    path = tmp_path / "d.mrcz"
    codec.writeMRC(data, path, compressor="zstd")
    with codec.MRCStack(path) as stack:
        offset, cbytes, _ = stack.chunk_span(2)
    raw = bytearray(path.read_bytes())
    raw[offset + 40:offset + cbytes] = bytes(cbytes - 40)
    path.write_bytes(bytes(raw))
    source = open_image(path)
    lazy = LazyStack(source.cache, source.shape[1:], source.dtype)
    lazy[0]
    lazy[1]  # prefetches 2 and 3 in the background: frame 2 fails there, quietly
    np.testing.assert_array_equal(lazy[3], data[3])
    with pytest.raises(codec.MRCFileError, match="z-section 2"):
        lazy[2]


def test_a_frame_being_prefetched_over_the_network_is_waited_for_not_read_twice(rng):
    data = make_stack(rng, "float32", shape=(6, 5, 5))
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow(i: int) -> np.ndarray:  # a transfer in flight
        calls.append(i)
        if i == 2:
            started.set()
            release.wait(10)
        return data[i].copy()

    cache = FrameCache(slow, 6, prefetch=1, wait_for_prefetch=True)
    try:
        cache.get(0)
        cache.get(1)  # a step forward: frame 2 is prefetched
        assert started.wait(10)
        threading.Timer(0.2, release.set).start()
        np.testing.assert_array_equal(cache.get(2), data[2])
        assert calls.count(2) == 1 and cache.misses == 2
    finally:
        release.set()
        cache.close()


def test_a_failed_prefetch_is_raised_by_the_read_that_asks_for_the_frame(rng):
    def broken(i: int) -> np.ndarray:
        if i == 2:
            raise codec.MRCFileError("movie.mrcz", f"z-section {i}: damaged")
        return np.zeros((2, 2), np.float32)

    cache = FrameCache(broken, 3, prefetch=1, wait_for_prefetch=True)
    try:
        cache.get(0)
        cache.get(1)  # frame 2 prefetched, and failing there
        with pytest.raises(codec.MRCFileError, match="z-section 2"):
            cache.get(2)
    finally:
        cache.close()
