"""Write then read: every dtype x compressor x byte order x layout, and the casts."""

from __future__ import annotations

import logging

import mrcfile
import numpy as np
import pytest

from napari_mrcz import codec

from .conftest import make_stack

DTYPES = ["int8", "int16", "uint16", "int32", "uint32", "float16", "float32", "complex64"]
COMPRESSORS = [None, "lz4", "lz4hc", "zstd", "zlib", "blosclz"]
LAYOUTS = ["array", "list of 2D", "list of 3D"]


def layout(stack: np.ndarray, kind: str):
    if kind == "array":
        return stack
    if kind == "list of 2D":
        return list(stack)
    return [stack[i:i + 2] for i in range(0, stack.shape[0], 2)]


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip(tmp_path, rng, dtype, compressor, endian, kind):
    stack = make_stack(rng, dtype, shape=(4, 20, 24))
    data = layout(stack, kind)
    path = tmp_path / "x.mrcz"
    codec.writeMRC(data, path, pixelsize=[2.5, 1.25, 1.5], voltage=300.0, C3=2.7, gain=1.05,
                   compressor=compressor, endian=endian, meta={"note": "µ-test", "n": 3})
    image, meta = codec.readMRC(path)
    if kind == "array":
        assert isinstance(image, np.ndarray) and image.shape == stack.shape
        np.testing.assert_array_equal(image, stack)
    else:
        assert isinstance(image, list) and len(image) == len(data)
        for got, want in zip(image, data, strict=True):
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    first = image if kind == "array" else image[0]
    assert first.dtype.name == np.dtype(dtype).name
    assert (first.dtype.byteorder == ">") == (endian == "be" and first.dtype.itemsize > 1)
    assert meta["compressor"] == compressor
    np.testing.assert_allclose(meta["pixelsize"], [2.5, 1.25, 1.5], rtol=1e-6)
    assert (meta["voltage"], meta["C3"]) == pytest.approx((300.0, 2.7))
    assert meta["gain"] == pytest.approx(1.05)
    assert (meta["note"], meta["n"]) == ("µ-test", 3)


@pytest.mark.parametrize("units, factor", [("\\AA", 1.0), ("nm", 10.0), ("\\mum", 1e4), ("pm", 0.01)])
def test_pixel_units_convert_both_ways(tmp_path, units, factor):
    path = tmp_path / "u.mrc"
    codec.writeMRC(np.zeros((2, 8, 8), np.float32), path, pixelsize=[3.0, 2.0, 1.0], pixelunits=units)
    _, meta = codec.readMRC(path)
    np.testing.assert_allclose(meta["pixelsize"], np.array([3.0, 2.0, 1.0]) * factor, rtol=1e-6)
    _, meta = codec.readMRC(path, pixelunits=units)
    np.testing.assert_allclose(meta["pixelsize"], [3.0, 2.0, 1.0], rtol=1e-6)


def test_unknown_units_are_refused(tmp_path):
    with pytest.raises(ValueError, match="pixelunits"):
        codec.writeMRC(np.zeros((2, 8, 8), np.float32), tmp_path / "u.mrc", pixelunits="furlong")


def test_single_image_and_scalar_pixelsize(tmp_path, rng):
    image = make_stack(rng, "float32", shape=(30, 40))
    codec.writeMRC(image, tmp_path / "one.mrcz", pixelsize=1.5, compressor="zstd")
    back, meta = codec.readMRC(tmp_path / "one.mrcz")
    assert back.shape == (30, 40)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(meta["pixelsize"], [1.5, 1.5, 1.5], rtol=1e-6)


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_uint4_is_lossless_over_0_to_15_with_odd_width(tmp_path, rng, compressor):
    image = rng.integers(0, 16, size=(2, 7, 33)).astype(np.int8)
    path = tmp_path / "u4.mrc"
    if compressor:
        with pytest.raises(TypeError, match="uint4"):
            codec.writeMRC(image, path, dtype="uint4", compressor=compressor)
        return
    codec.writeMRC(image, path, dtype="uint4")
    assert path.stat().st_size == 1024 + 2 * 7 * 17
    back, meta = codec.readMRC(path)
    assert meta["MRCtype"] == 101
    np.testing.assert_array_equal(back, image)


def test_uint4_refuses_values_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="0..15"):
        codec.writeMRC(np.full((1, 4, 4), 16, np.int16), tmp_path / "u4.mrc", dtype="uint4")
    assert not (tmp_path / "u4.mrc").exists()


@pytest.mark.parametrize("wide, narrow", [("float64", "float32"), ("complex128", "complex64")])
def test_wide_types_are_cast_with_one_warning(tmp_path, rng, caplog, wide, narrow):
    codec.mrc._WARNED.discard(wide)
    data = make_stack(rng, wide)
    with caplog.at_level(logging.WARNING, logger="napari_mrcz.codec"):
        codec.writeMRC(data, tmp_path / "a.mrcz", compressor="lz4")
        codec.writeMRC(list(data), tmp_path / "b.mrc")
    assert len([r for r in caplog.records if narrow in r.getMessage()]) == 1
    back, _ = codec.readMRC(tmp_path / "a.mrcz")
    assert back.dtype == np.dtype(narrow)
    np.testing.assert_array_equal(back, data.astype(narrow))


@pytest.mark.parametrize("dtype", ["uint8", "bool"])
def test_uint8_and_bool_are_widened_to_uint16(tmp_path, rng, dtype):
    data = rng.integers(0, 2 if dtype == "bool" else 256, size=(2, 8, 8)).astype(dtype)
    codec.writeMRC(data, tmp_path / "w.mrc")
    back, meta = codec.readMRC(tmp_path / "w.mrc")
    assert meta["MRCtype"] == 6 and back.dtype == np.uint16
    np.testing.assert_array_equal(back, data.astype(np.uint16))


def test_int64_is_refused_with_advice(tmp_path):
    with pytest.raises(TypeError, match="cannot store int64"):
        codec.writeMRC(np.zeros((2, 4, 4), np.int64), tmp_path / "x.mrc")


def test_strided_and_lazy_inputs_are_streamed(tmp_path, rng):
    base = make_stack(rng, "int16", shape=(6, 40, 50))
    strided = base[::2, ::2, ::3]

    class Lazy:
        """An array-like that only hands out one z-section at a time."""

        shape, dtype, ndim = strided.shape, strided.dtype, 3
        served = 0

        def __getitem__(self, i):
            assert isinstance(i, int), "the writer must not ask for more than a section"
            Lazy.served += 1
            return strided[i]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole stack was materialised")

    for compressor in (None, "zstd"):
        codec.writeMRC(Lazy(), tmp_path / "lazy.mrcz", compressor=compressor)
        back, _ = codec.readMRC(tmp_path / "lazy.mrcz")
        np.testing.assert_array_equal(back, strided)
    assert Lazy.served == 2 * strided.shape[0]


@pytest.mark.parametrize("clevel", range(1, 10))
def test_every_clevel(tmp_path, rng, clevel):
    data = make_stack(rng, "uint16", shape=(2, 64, 64)) // 64
    codec.writeMRC(data, tmp_path / "c.mrcz", compressor="zstd", clevel=clevel)
    np.testing.assert_array_equal(codec.readMRC(tmp_path / "c.mrcz")[0], data)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_thread_count_changes_nothing_in_the_data(tmp_path, rng, n_threads):
    data = make_stack(rng, "float32", shape=(5, 64, 80))
    codec.writeMRC(data, tmp_path / "t.mrcz", compressor="lz4", n_threads=n_threads)
    back, _ = codec.readMRC(tmp_path / "t.mrcz", n_threads=n_threads)
    np.testing.assert_array_equal(back, data)


def test_blosc2_backend_writes_version_5_chunks(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(3, 32, 32))
    codec.writeMRC(data, tmp_path / "b2.mrcz", compressor="zstd", backend="blosc2")
    back, meta = codec.readMRC(tmp_path / "b2.mrcz")
    assert (meta["bloscFormat"], meta["backend"]) == (2, "blosc2")
    np.testing.assert_array_equal(back, data)
    raw = (tmp_path / "b2.mrcz").read_bytes()
    assert raw[1024] == 5


def test_default_backend_writes_version_2_chunks(tmp_path, rng):
    codec.writeMRC(make_stack(rng, "int8"), tmp_path / "b1.mrcz", compressor="lz4")
    assert (tmp_path / "b1.mrcz").read_bytes()[1024] == 2


@pytest.mark.parametrize("kwargs, error", [
    ({"compressor": "nope"}, ValueError), ({"compressor": "zstd", "backend": "blosc3"}, ValueError),
    ({"compressor": "ndlz", "backend": "blosc1"}, ValueError), ({"endian": "middle"}, ValueError),
    ({"pixelsize": [1, 2, 3, 4]}, ValueError)])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, error):
    with pytest.raises(error):
        codec.writeMRC(np.zeros((2, 8, 8), np.float32), tmp_path / "bad.mrcz", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_exact_statistics_when_asked(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(4, 30, 20))
    codec.writeMRC(data, tmp_path / "s.mrc", quickStats=False)
    _, meta = codec.readMRC(tmp_path / "s.mrc")
    assert meta["minImage"] == data.min() and meta["maxImage"] == data.max()
    assert meta["meanImage"] == pytest.approx(data.mean(dtype=np.float64), rel=1e-5)
    codec.writeMRC(data, tmp_path / "q.mrc")
    _, meta = codec.readMRC(tmp_path / "q.mrc")
    assert meta["maxImage"] < meta["minImage"], "quick stats are marked undetermined (MRC2014)"


@pytest.mark.parametrize("dtype", ["complex64", "float16", "float32", "int16"])
def test_exact_statistics_are_what_mrcfile_computes(tmp_path, rng, dtype):
    """The header statistics of each type are mrcfile's own, or marked undetermined."""
    data = make_stack(rng, dtype, shape=(3, 30, 20))
    codec.writeMRC(data, tmp_path / "s.mrc", quickStats=False)
    with mrcfile.open(tmp_path / "s.mrc") as ours, mrcfile.new(tmp_path / "ref.mrc", data=data) as ref:
        ref.update_header_stats()
        mine, theirs = ours.header, ref.header
        if dtype == "float16":  # checked in half precision, where the sum of squares overflows
            assert mine.rms == -1 and not np.isfinite(data.std())
        else:
            assert mine.rms == pytest.approx(float(theirs.rms), rel=1e-5)
        if dtype == "complex64":  # mrcfile leaves min, max and mean undetermined for complex data
            assert (mine.dmin, mine.dmax, mine.dmean) == (0, -1, -2)
        else:
            assert (mine.dmin, mine.dmax) == (theirs.dmin, theirs.dmax)
            assert mine.dmean == pytest.approx(float(data.mean(dtype=np.float64)), rel=1e-6)
