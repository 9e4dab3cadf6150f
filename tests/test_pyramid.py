"""Binning and volume pyramids in the codec: block means, levels built in one pass, the on-disk cache."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.binning import bin_frame, bin_stack
from napari_mrcz.codec.pyramid import (
    BuildCancelledError,
    PyramidBuilder,
    PyramidCache,
    build,
    plan_levels,
    read_binned,
)

from .conftest import data_path


def block_mean_by_loop(volume: np.ndarray, f: int, z: bool) -> np.ndarray:
    """The definition: every block's mean over the voxels it has, in float64."""
    fz = f if z else 1
    nz, ny, nx = volume.shape
    out = np.empty((-(-nz // fz), -(-ny // f), -(-nx // f)))
    for k in range(out.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[k, i, j] = volume[k * fz:(k + 1) * fz, i * f:(i + 1) * f, j * f:(j + 1) * f].mean(
                    dtype=np.float64)
    return out.astype(np.float32)


@pytest.mark.parametrize("dtype", ["int8", "uint16", "float32", "int16"])
def test_a_divisible_frame_bins_to_numpys_reshape_mean(rng, dtype):
    frame = (rng.normal(size=(64, 96)) * 50).astype(dtype) if dtype.startswith("f") else \
        rng.integers(0, 100, size=(64, 96)).astype(dtype)
    want = frame.reshape(16, 4, 24, 4).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    got = bin_frame(frame, 4)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_float32_is_summed_in_float64():
    """A float32 accumulator would lose the small values next to a large offset."""
    frame = np.full((512, 512), 1e7, np.float32)
    frame[::2, ::2] += 1.0  # a quarter of the pixels one higher: every 2x2 block means 1e7 + 0.25
    want = frame.reshape(256, 2, 256, 2).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(bin_frame(frame, 2), want)
    np.testing.assert_array_equal(bin_frame(frame, 512)[0, 0], np.float32(1e7 + 0.25))


@pytest.mark.parametrize("shape", [(7, 9, 11), (5, 33, 17), (1, 8, 8)])
@pytest.mark.parametrize("volume", [True, False])
def test_edges_average_the_pixels_they_have(rng, shape, volume):
    data = rng.integers(-50, 50, size=shape).astype(np.int16)
    np.testing.assert_array_equal(bin_stack(data, 2, volume=volume), block_mean_by_loop(data, 2, volume))
    np.testing.assert_array_equal(bin_stack(data, 4, volume=volume), block_mean_by_loop(data, 4, volume))


def test_complex_data_is_refused():
    with pytest.raises(TypeError, match="complex"):
        bin_frame(np.zeros((4, 4), np.complex64), 2)


def test_levels_go_down_to_what_draws_at_once():
    assert plan_levels((64, 256, 256)) == []  # 16 MB: already small
    shapes = plan_levels((500, 4096, 4096))  # a 32 GB float32 tomogram
    assert shapes[0] == (250, 2048, 2048)
    assert np.prod(shapes[-1]) * 4 <= 64 << 20 < np.prod(shapes[-2]) * 4
    assert plan_levels((100, 300, 500), coarsest_bytes=1 << 20) == [(50, 150, 250), (25, 75, 125)]


def test_the_builder_fills_every_level_in_one_pass(rng):
    volume = rng.normal(size=(13, 40, 36)).astype(np.float32)
    shapes = plan_levels(volume.shape, coarsest_bytes=2000)
    levels = [np.zeros(s, np.float32) for s in shapes]
    reads, planes = [], []
    PyramidBuilder(lambda i: reads.append(i) or volume[i], volume.shape, levels).run(
        on_plane=lambda k, z: planes.append((k, z)))
    assert reads == list(range(13))  # each frame read once, in order
    for k, level in enumerate(levels, start=1):
        np.testing.assert_allclose(level, block_mean_by_loop(volume, 2 ** k, True), rtol=1e-6, atol=1e-6)
        assert sorted(z for kk, z in planes if kk == k) == list(range(level.shape[0]))


def test_a_cancelled_build_stops_between_frames_and_caches_nothing(tmp_path, rng):
    path = tmp_path / "tomo.rec"
    codec.writeMRC(rng.normal(size=(16, 64, 64)).astype(np.float32), path)
    cache = PyramidCache(tmp_path / "cache")
    stop = threading.Event()
    seen: list[int] = []

    def read(i: int) -> np.ndarray:
        seen.append(i)
        if i == 5:
            stop.set()
        return np.zeros((64, 64), np.float32)

    with pytest.raises(BuildCancelledError):
        build(read, (16, 64, 64), path, cache, cancel=stop, coarsest_bytes=4096)
    assert seen == list(range(6))
    assert cache.entries() == []


def test_the_cache_is_hit_on_reopen_and_ignores_damage(tmp_path, rng):
    volume = rng.normal(size=(20, 48, 40)).astype(np.float32)
    path = tmp_path / "tomo.rec"
    codec.writeMRC(volume, path, pixelsize=[5.0, 5.0, 5.0])
    cache = PyramidCache(tmp_path / "cache")
    reads: list[int] = []

    def read(i: int) -> np.ndarray:
        reads.append(i)
        return volume[i]

    first = [np.array(a) for a in build(read, volume.shape, path, cache, coarsest_bytes=4096)]
    assert len(reads) == 20 and len(cache.entries()) == 1
    again = build(read, volume.shape, path, cache, coarsest_bytes=4096)
    assert len(reads) == 20  # nothing read: the cache answered
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    (entry,) = cache.entries()
    level = entry / "level1.npy"
    damaged = bytearray(level.read_bytes())
    damaged[-7] ^= 0xFF
    level.write_bytes(bytes(damaged))
    rebuilt = build(read, volume.shape, path, cache, coarsest_bytes=4096)
    assert len(reads) == 40  # the damaged entry was not trusted
    np.testing.assert_array_equal(rebuilt[0], first[0])


def test_a_changed_source_is_not_served_from_the_cache(tmp_path, rng):
    path = tmp_path / "tomo.rec"
    codec.writeMRC(np.zeros((8, 32, 32), np.float32), path)
    cache = PyramidCache(tmp_path / "cache")
    zero = build(lambda i: np.zeros((32, 32), np.float32), (8, 32, 32), path, cache, coarsest_bytes=1024)
    codec.writeMRC(np.ones((8, 32, 32), np.float32), path)
    with codec.MRCStack(path) as stack:
        one = build(lambda i: stack.read(i, i + 1)[0], (8, 32, 32), path, cache, coarsest_bytes=1024)
    assert float(zero[0].max()) == 0.0 and float(one[0].min()) == 1.0


def test_the_least_recently_used_entry_goes_first(tmp_path, rng):
    cache = PyramidCache(tmp_path / "cache", limit_bytes=10**9)
    paths = []
    for k in range(3):
        path = tmp_path / f"t{k}.rec"
        codec.writeMRC(rng.normal(size=(8, 64, 64)).astype(np.float32), path)
        build(lambda i: np.zeros((64, 64), np.float32), (8, 64, 64), path, cache, coarsest_bytes=4096)
        paths.append(path)
    cache.limit_bytes = cache.nbytes() - 1  # one entry too many
    cache.find(paths[0])  # t0 used again: t1 is now the least recently used
    cache.evict()
    manifests = [json.loads((p / "manifest.json").read_text())["source"]["path"] for p in cache.entries()]
    assert len(manifests) == 2 and not any(m.endswith("t1.rec") for m in manifests)
    cache.clear()
    assert cache.entries() == [] and cache.nbytes() == 0


def test_a_script_reads_a_binned_tomogram_in_one_line(tmp_path):
    path = data_path("mrc", "emdb", "EMD-3197.map")
    with codec.MRCStack(path) as stack:
        full = stack.read()
    cache = PyramidCache(tmp_path / "cache")
    np.testing.assert_array_equal(read_binned(path, 4, cache=cache), block_mean_by_loop(full, 4, True))
    np.testing.assert_array_equal(read_binned(path, 2, cache=cache), block_mean_by_loop(full, 2, True))
    with pytest.raises(ValueError, match="power of two"):
        read_binned(path, 3, cache=cache)


def test_the_sample_tomogram_looks_like_one():
    """Membranes and particles at a tomogram's signal-to-noise ratio: hidden per voxel, clear binned."""
    from napari_mrcz.samples import CONTRAST, Tomogram

    tomo = Tomogram(depth=48, size=192)
    planes = range(0, 48, 4)
    signal = np.stack([-CONTRAST * tomo.density(i) for i in planes])
    noise = np.stack([tomo.noise(i) for i in planes])
    snr = signal.var() / noise.var()
    assert 0.02 < snr < 0.5, snr
    data, density = np.asarray(tomo), np.stack([tomo.density(i) for i in range(48)])
    binned, truth = bin_stack(data, 4, volume=True), bin_stack(density, 4, volume=True)
    assert np.corrcoef(binned.ravel(), truth.ravel())[0, 1] < -0.5, "binned 4x, the specimen shows (dark)"
    assert (density > 0.5).mean() > 0.01, "there is specimen in the box"


def test_the_command_line_shows_and_clears_the_cache(tmp_path, rng, monkeypatch, capsys):
    from napari_mrcz.cli import main

    monkeypatch.setenv("NAPARI_MRCZ_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tomo.rec"
    codec.writeMRC(rng.normal(size=(8, 64, 64)).astype(np.float32), path)
    build(lambda i: np.zeros((64, 64), np.float32), (8, 64, 64), path, coarsest_bytes=4096)
    assert main(["cache"]) == 0
    shown = capsys.readouterr().out
    assert str(tmp_path / "cache") in shown and "1 entries" in shown
    assert main(["cache", "--clear"]) == 0
    assert "0 entries, 0.00 GB" in capsys.readouterr().out
    assert PyramidCache().entries() == []
