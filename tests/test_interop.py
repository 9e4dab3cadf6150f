"""Cross-reads with the reference implementations: python-mrcz 0.6.0 and mrcfile, both directions."""

from __future__ import annotations

import io
import warnings

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec

from .conftest import make_stack
from .test_roundtrip import LAYOUTS, layout

# The types and codecs python-mrcz 0.6.0 itself can write.
MRCZ_DTYPES = ["int8", "int16", "uint16", "int32", "uint32", "float32", "complex64"]
MRCZ_CODECS = ["lz4", "lz4hc", "zstd", "zlib", "blosclz"]


def python_mrcz_reads_be_mode(mode: int) -> bool:
    """python-mrcz 0.6.0 spots a big-endian file only when MODE read little-endian is > 16e6.

    That fails whenever MODE's low byte is 0 or >= 128 (int8 = 0, int8 + lz4 =
    2000): python-mrcz then cannot read its own big-endian file. We detect the
    byte order from the dimensions and mode together (docs/format.md).
    """
    return 0 < (mode & 0xFF) < 128


def mode_of(dtype: str, compressor: str | None) -> int:
    base = codec.REVERSE_CCPEM_ENUM[dtype]
    return base + 1000 * (codec.REVERSE_COMPRESSOR_ENUM[compressor] if compressor else 0)


def same_structure(got, want):
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    else:
        assert isinstance(got, np.ndarray) and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("compressor", MRCZ_CODECS)
@pytest.mark.parametrize("dtype", MRCZ_DTYPES)
def test_python_mrcz_reads_our_mrcz_identically(tmp_path, rng, dtype, compressor, endian, kind):
    data = layout(make_stack(rng, dtype, shape=(4, 20, 24)), kind)
    path = str(tmp_path / "ours.mrcz")
    codec.writeMRC(data, path, meta={"dose": 1.5}, pixelsize=[2.0, 1.25, 1.5], voltage=200.0,
                   C3=2.7, gain=0.9, compressor=compressor, endian=endian)
    if endian == "be" and not python_mrcz_reads_be_mode(mode_of(dtype, compressor)):
        with pytest.raises(ValueError, match="compressor id|data type"):
            mrcz.readMRC(path)  # its own files of this kind fail the same way
        same_structure(codec.readMRC(path)[0], data)
        return
    image, meta = mrcz.readMRC(path)
    same_structure(image, data)
    np.testing.assert_allclose(meta["pixelsize"], [2.0, 1.25, 1.5], rtol=1e-6)
    assert (meta["voltage"], meta["C3"], meta["gain"]) == pytest.approx((200.0, 2.7, 0.9))
    assert meta["compressor"] == compressor and meta["dose"] == 1.5


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("compressor", [None, *MRCZ_CODECS])
@pytest.mark.parametrize("dtype", MRCZ_DTYPES)
def test_we_read_python_mrcz_files_as_it_does(tmp_path, rng, dtype, compressor, endian, kind):
    data = layout(make_stack(rng, dtype, shape=(4, 20, 24)), kind)
    path = str(tmp_path / "theirs.mrcz")
    mrcz.writeMRC(data, path, meta={"who": "python-mrcz"}, pixelsize=[2.0, 1.25, 1.5],
                  voltage=300.0, C3=2.7, gain=1.05, compressor=compressor, endian=endian)
    ours, ours_meta = codec.readMRC(path)
    if endian == "be" and not python_mrcz_reads_be_mode(mode_of(dtype, compressor)):
        with pytest.raises(ValueError):
            mrcz.readMRC(path)
        same_structure(ours, data)
        return
    theirs, theirs_meta = mrcz.readMRC(path)
    same_structure(ours, theirs)
    np.testing.assert_allclose(ours_meta["pixelsize"], theirs_meta["pixelsize"], rtol=1e-6)
    for key in ("voltage", "C3", "gain"):
        assert ours_meta[key] == pytest.approx(theirs_meta[key], rel=1e-7), key
    for key in ("compressor", "who", "packedBytes", "MRCtype"):
        assert ours_meta[key] == theirs_meta[key], key


def test_python_mrcz_reads_our_blosc2_chunks(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(3, 16, 16))
    codec.writeMRC(data, tmp_path / "b2.mrcz", compressor="zstd", backend="blosc2")
    image, meta = mrcz.readMRC(str(tmp_path / "b2.mrcz"))
    np.testing.assert_array_equal(image, data)
    assert meta["bloscFormat"] == 2


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "float16", "float32", "complex64"])
def test_our_plain_files_are_valid_mrc2014(tmp_path, rng, dtype, endian, kind, quick):
    stack = make_stack(rng, dtype, shape=(4, 20, 24))
    path = tmp_path / "ours.mrc"
    codec.writeMRC(layout(stack, kind), path, pixelsize=[3.0, 1.25, 1.5], endian=endian,
                   quickStats=quick)
    log = io.StringIO()
    assert mrcfile.validate(str(path), print_file=log), log.getvalue()
    assert "statistics" not in log.getvalue()
    with mrcfile.open(path) as m:
        np.testing.assert_array_equal(m.data.reshape(stack.shape), stack)
        assert (m.voxel_size.z, m.voxel_size.y, m.voxel_size.x) == pytest.approx((3.0, 1.25, 1.5))
        assert m.header.mode == {"int8": 0, "int16": 1, "uint16": 6, "float16": 12, "float32": 2,
                                 "complex64": 4}[dtype]
        assert (m.is_volume_stack() if kind == "list of 3D" else True)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_python_mrcz_reads_our_plain_files(tmp_path, rng, kind):
    stack = make_stack(rng, "float32", shape=(4, 20, 24))
    path = str(tmp_path / "ours.mrc")
    codec.writeMRC(layout(stack, kind), path, pixelsize=[3.0, 1.25, 1.5])
    image, meta = mrcz.readMRC(path)
    frames = image if isinstance(image, list) else [image]
    np.testing.assert_array_equal(np.concatenate([np.reshape(f, (-1, 20, 24)) for f in frames]), stack)
    np.testing.assert_allclose(meta["pixelsize"][1:], [1.25, 1.5], rtol=1e-6)


@pytest.mark.parametrize("compression", [None, "gzip", "bzip2"])
@pytest.mark.parametrize("stack_kind", ["volume", "image stack", "volume stack"])
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "float16", "float32", "complex64"])
def test_we_read_mrcfile_output(tmp_path, rng, dtype, stack_kind, compression):
    data = make_stack(rng, dtype, shape=(4, 20, 24))
    path = tmp_path / "mrcfile.mrc"
    with mrcfile.new(path, compression=compression) as m:
        m.set_data(data)
        if stack_kind == "image stack":
            m.set_image_stack()
        elif stack_kind == "volume stack":
            m.set_data(data.reshape(2, 2, 20, 24))
        m.voxel_size = (1.5, 1.25, 3.0)
    image, meta = codec.readMRC(path)
    assert isinstance(image, np.ndarray), "a file not from python-mrcz reads as one array"
    np.testing.assert_array_equal(image, data)
    np.testing.assert_allclose(meta["pixelsize"], [3.0, 1.25, 1.5], rtol=1e-6)


def test_imod_unsigned_bytes(tmp_path, rng):
    data = rng.integers(0, 256, size=(2, 8, 8)).astype(np.uint8)
    path = tmp_path / "imod.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.new(path) as m:
            m.set_data(data.view(np.int8))
            m.header.exttyp = b"\0\0\0\0"
    raw = bytearray(path.read_bytes())
    raw[152:156] = np.int32(1146047817).tobytes()
    raw[156:160] = np.int32(0).tobytes()
    path.write_bytes(bytes(raw))
    image, _ = codec.readMRC(path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, data)
    raw[156:160] = np.int32(1).tobytes()  # IMOD: bytes are signed
    path.write_bytes(bytes(raw))
    assert codec.readMRC(path)[0].dtype == np.int8


def test_extended_headers_of_any_type_are_skipped(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(3, 8, 10))
    path = tmp_path / "fei.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.set_extended_header(np.arange(768, dtype=np.uint8).view("V128"))
        m.header.exttyp = b"FEI1"
        m.voxel_size = 2.0
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, data)
    assert meta["extendedBytes"] == 768 and meta["metaId"] == b"FEI1"
    np.testing.assert_allclose(meta["pixelsize"], [2.0, 2.0, 2.0])


def test_eman2_mode_numbers(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(2, 6, 6))
    path = tmp_path / "eman2.mrc"
    codec.writeMRC(data, path)
    raw = bytearray(path.read_bytes())
    raw[12:16] = np.int32(3).tobytes()  # EMAN2's int16; in MRC2014, 3 is complex int16
    path.write_bytes(bytes(raw))
    image, _ = codec.readMRC(path, fileConvention="eman2")
    np.testing.assert_array_equal(image, data)
    with pytest.raises(ValueError, match="fileConvention"):
        codec.readMRC(path, fileConvention="spider")


def test_mode_3_complex_int16_reads_as_complex64(tmp_path, rng):
    pairs = make_stack(rng, "int16", shape=(2, 6, 12))
    path = tmp_path / "c16.mrc"
    codec.writeMRC(pairs, path)
    raw = bytearray(path.read_bytes())
    raw[0:4] = np.int32(6).tobytes()  # nx counts complex samples
    raw[12:16] = np.int32(3).tobytes()
    path.write_bytes(bytes(raw))
    image, meta = codec.readMRC(path)
    assert image.dtype == np.complex64 and image.shape == (2, 6, 6) and meta["MRCtype"] == 3
    np.testing.assert_array_equal(image.real, pairs[..., 0::2])
    np.testing.assert_array_equal(image.imag, pairs[..., 1::2])
