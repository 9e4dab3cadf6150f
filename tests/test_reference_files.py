"""Every MRC file in ../shared/data read exactly as its expected.json says."""

from __future__ import annotations

import time
import tracemalloc

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec import MRCFileError, MRCStack

from .conftest import data_path, expected

REFERENCE = expected("mrc/mrcz-0.6.0")
QUIRKS = expected("mrc/quirks")


@pytest.fixture(scope="module")
def arrays():
    with np.load(data_path("mrc", "mrcz-0.6.0", "expected_arrays.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_python_mrcz_files_read_exactly(name, arrays):
    info = REFERENCE[name]
    path = data_path("mrc", "mrcz-0.6.0", name)
    image, meta = codec.readMRC(path)
    want = arrays[name]
    if info.get("slices", 0) > 1:
        assert isinstance(image, list) and len(image) == want.shape[0]
        np.testing.assert_array_equal(np.stack(image), want)
    else:
        assert isinstance(image, np.ndarray)
        assert image.shape == tuple(info["shape"])
        assert image.dtype == np.dtype(info["dtype"]).newbyteorder(image.dtype.byteorder)
        np.testing.assert_array_equal(image, want.reshape(image.shape))
    assert meta["compressor"] == info.get("compressor")
    if "pixelsize_zyx_angstrom" in info:
        np.testing.assert_allclose(meta["pixelsize"], info["pixelsize_zyx_angstrom"], rtol=1e-6)
        assert meta["voltage"] == pytest.approx(info["voltage"])
        assert meta["C3"] == pytest.approx(info["C3"])
        assert meta["gain"] == pytest.approx(info["gain"])
    if info.get("endian") == "be":
        assert meta["dtype"].startswith(">")
    for key, value in (info.get("meta") or {}).items():
        assert meta[key] == value
    chunks = info.get("chunk_format")
    if chunks:
        assert meta["bloscFormat"] == (2 if chunks.startswith("blosc2") else 1)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_meta_matches_python_mrcz(name):
    path = str(data_path("mrc", "mrcz-0.6.0", name))
    _, ours = codec.readMRC(path)
    _, theirs = mrcz.readMRC(path)
    for key in ("compressor", "MRCtype", "voltage", "C3", "gain", "packedBytes", "extendedBytes",
                "minImage", "maxImage", "meanImage", "bloscFormat", "backend", "pixelunits"):
        if key in theirs:
            assert ours[key] == pytest.approx(theirs[key]) if isinstance(theirs[key], float) \
                else ours[key] == theirs[key], key
    np.testing.assert_allclose(ours["pixelsize"], theirs["pixelsize"], rtol=1e-6)
    np.testing.assert_array_equal(ours["dimensions"], theirs["dimensions"])
    assert np.dtype(ours["dtype"]) == np.dtype(theirs["dtype"])


def test_uint4_values_are_two_per_byte():
    image, meta = codec.readMRC(data_path("mrc", "mrcz-0.6.0", "uint4_mode101.mrc"))
    assert meta["MRCtype"] == 101 and image.dtype == np.uint8
    assert image.min() >= 0 and image.max() <= 15
    raw = np.fromfile(data_path("mrc", "mrcz-0.6.0", "uint4_mode101.mrc"), dtype=np.uint8, offset=1024)
    np.testing.assert_array_equal(image.reshape(-1)[0::2], raw & 15)
    np.testing.assert_array_equal(image.reshape(-1)[1::2], raw >> 4)


@pytest.mark.parametrize("name", ["EMD-3197.map", "emd_3197.map.gz", "EMD-3197.map.bz2"])
def test_emdb_map_with_its_voxel_size(name):
    image, meta = codec.readMRC(data_path("mrc", "emdb", name))
    assert isinstance(image, np.ndarray) and image.shape == (20, 20, 20)
    np.testing.assert_allclose(meta["pixelsize"], [11.4, 11.4, 11.4], rtol=1e-6)
    with mrcfile.open(data_path("mrc", "emdb", "EMD-3197.map")) as m:
        np.testing.assert_array_equal(image, m.data)


def test_emdb_map_in_nanometres():
    _, meta = codec.readMRC(data_path("mrc", "emdb", "EMD-3197.map"), pixelunits="nm")
    np.testing.assert_allclose(meta["pixelsize"], [1.14, 1.14, 1.14], rtol=1e-6)
    assert meta["pixelunits"] == "nm"


READABLE = sorted(k for k, v in QUIRKS.items() if "must read" in v)
BROKEN = sorted(k for k, v in QUIRKS.items() if "must raise" in v)


@pytest.mark.parametrize("name", READABLE)
def test_quirky_headers_still_read(name):
    path = data_path("mrc", "quirks", name)
    image, meta = codec.readMRC(path)
    with mrcfile.open(data_path("mrc", "quirks", "reference_mrcfile.mrc")) as m:
        np.testing.assert_array_equal(image, m.data)
        want = [m.voxel_size.z, m.voxel_size.y, m.voxel_size.x]
    np.testing.assert_allclose(meta["pixelsize"], want, rtol=1e-6)
    assert meta["dtype"] in ("<f4", "=f4")


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_raise_a_clear_error_at_once(name):
    path = data_path("mrc", "quirks", name)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(MRCFileError) as info:
        codec.readMRC(path)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message
    assert elapsed < 1.0 and peak < 2 << 20, (elapsed, peak)
    words = {
        "truncated.mrc": "bytes missing", "huge_dims.mrc": "1073741824", "bad_mode.mrc": "mode 77",
        "negative_nx.mrc": "nx = -24", "not_an_mrc.mrc": "not an MRC file", "empty.mrc": "empty file",
        "mrcz_truncated_chunk.mrcz": "z-section 3", "mrcz_corrupt_chunk_header.mrcz": "z-section 0",
    }
    assert words[name] in message


def test_frames_before_a_truncated_chunk_stay_readable():
    path = data_path("mrc", "quirks", "mrcz_truncated_chunk.mrcz")
    good, _ = codec.readMRC(data_path("mrc", "mrcz-0.6.0", "float32_zstd.mrcz"))
    first, _ = codec.readMRC(path, idx=(0, 2))
    np.testing.assert_array_equal(first, good[:3])
    with MRCStack(path) as stack, pytest.raises(MRCFileError, match="z-section 3"):
        stack.read(3, 4)
