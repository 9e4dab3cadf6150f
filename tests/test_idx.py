"""Random access: idx on compressed and plain files, in-place writes and appends."""

from __future__ import annotations

import os

import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec import MRCFileError, MRCStack

from .conftest import chunks_by_hand, make_stack


@pytest.fixture(params=[None, "zstd", "lz4"])
def stack_file(request, tmp_path, rng):
    data = make_stack(rng, "float32", shape=(10, 24, 32))
    path = tmp_path / f"s-{request.param}.mrcz"
    codec.writeMRC(data, path, compressor=request.param, pixelsize=[2.0, 1.0, 1.0])
    return path, data


@pytest.mark.parametrize("idx, want", [(3, np.s_[3]), ((2, 5), np.s_[2:6]), ((-3, -1), np.s_[7:10]),
                                       ((0, 9), np.s_[:]), (-1, np.s_[9])])
def test_idx_reads_those_frames_on_any_file(stack_file, idx, want):
    path, data = stack_file
    image, meta = codec.readMRC(path, idx=idx)
    np.testing.assert_array_equal(image, data[want])
    assert meta["dimensions"][0] == np.atleast_3d(data[want]).shape[0] or meta["dimensions"][0] == 1


def test_idx_matches_python_mrcz_on_plain_files(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(6, 16, 16))
    path = str(tmp_path / "p.mrc")
    mrcz.writeMRC(data, path)
    for idx in (0, 4, (1, 3), (-2, -1)):
        np.testing.assert_array_equal(codec.readMRC(path, idx=idx)[0], mrcz.readMRC(path, idx=idx)[0])


@pytest.mark.parametrize("idx", [10, -11, (3, 2), (5, 10)])
def test_idx_out_of_range_is_a_clear_error(stack_file, idx):
    path, _ = stack_file
    with pytest.raises(ValueError, match="out of range") as info:
        codec.readMRC(path, idx=idx)
    assert str(path) in str(info.value)


def test_compressed_idx_touches_only_its_chunks(tmp_path, rng):
    """Frames 6..7 still read when chunk 0's compressed body is garbage: it was never decoded."""
    data = make_stack(rng, "int16", shape=(8, 64, 64)) // 256
    path = tmp_path / "c.mrcz"
    codec.writeMRC(data, path, compressor="zstd")
    with MRCStack(path) as stack:
        offset, cbytes, _ = stack.chunk_span(0)
    raw = bytearray(path.read_bytes())
    raw[offset + 64:offset + cbytes] = bytes(cbytes - 64)
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(codec.readMRC(path, idx=(6, 7))[0], data[6:8])
    with pytest.raises(MRCFileError, match="z-section 0"):
        codec.readMRC(path)


def test_stack_reads_any_range_into_a_given_array(stack_file):
    path, data = stack_file
    with MRCStack(path) as stack:
        out = np.empty((3, 24, 32), dtype=stack.dtype)
        assert stack.read(4, 7, out=out) is out
        np.testing.assert_array_equal(out, data[4:7])
        assert stack.read(5, 5).shape == (0, 24, 32)


@pytest.mark.parametrize("idx", [None, (2, 4)])
def test_memmap(stack_file, idx):
    path, data = stack_file
    image, _ = codec.readMRC(path, useMemmap=True, idx=idx)
    want = data if idx is None else data[2:5]
    np.testing.assert_array_equal(image, want)
    if "None" in path.name:
        assert isinstance(image, np.memmap)


def test_appending_frames_one_by_one_as_python_mrcz(tmp_path, rng):
    frames = [make_stack(rng, "float32", shape=(12, 10)) for _ in range(3)]
    path = tmp_path / "stack.mrcs"
    for j, frame in enumerate(frames):
        codec.writeMRC(frame, path, pixelsize=[5.6, 3.4], idx=j)
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, np.stack(frames))
    np.testing.assert_allclose(meta["pixelsize"][1:], [5.6, 3.4], rtol=1e-6)
    assert isinstance(image, np.ndarray) and image.shape == (3, 12, 10), "one array, as python-mrcz"
    mrcz.writeMRC(frames[0], str(tmp_path / "theirs.mrcs"), pixelsize=[5.6, 3.4], idx=0)
    for j, frame in enumerate(frames[1:], 1):
        mrcz.writeMRC(frame, str(tmp_path / "theirs.mrcs"), pixelsize=[5.6, 3.4], idx=j)
    reference, _ = mrcz.readMRC(str(tmp_path / "theirs.mrcs"))
    assert isinstance(reference, np.ndarray) and reference.shape == image.shape
    theirs, _ = mrcz.readMRC(str(path))  # python-mrcz takes MZ (= nz) for slices: one 3D frame
    np.testing.assert_array_equal(np.reshape(theirs, image.shape), np.stack(frames))


def test_overwriting_frames_in_place(tmp_path, rng):
    data = make_stack(rng, "uint16", shape=(6, 8, 8))
    path = tmp_path / "p.mrc"
    codec.writeMRC(data, path, pixelsize=2.0)
    new = make_stack(rng, "uint16", shape=(3, 8, 8))
    codec.writeMRC(new, path, idx=-2)
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, np.concatenate([data[:4], new]))
    np.testing.assert_allclose(meta["pixelsize"], [2.0, 2.0, 2.0], rtol=1e-6)


def test_appending_to_a_compressed_file(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(5, 16, 16))
    path = tmp_path / "a.mrcz"
    codec.writeMRC(data[:3], path, compressor="zstd", pixelsize=[3.0, 1.0, 1.0], voltage=300.0)
    codec.writeMRC(data[3:], path, idx=3)
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, data)
    assert meta["compressor"] == "zstd" and meta["voltage"] == 300.0
    np.testing.assert_allclose(meta["pixelsize"], [3.0, 1.0, 1.0], rtol=1e-6)
    theirs, their_meta = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(theirs, data)
    assert their_meta["packedBytes"] == path.stat().st_size - 1024
    with MRCStack(path) as stack:  # the index at the end is the five chunks', not the first three's
        assert stack._index.loaded and stack._index.complete
        assert [stack.chunk_span(i)[:2] for i in range(5)] == chunks_by_hand(path)


def test_appending_to_a_python_mrcz_file(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(4, 16, 16))
    path = str(tmp_path / "theirs.mrcz")
    mrcz.writeMRC(data[:2], path, compressor="lz4", pixelsize=[1.0, 1.0, 1.0])
    codec.writeMRC(data[2:], path, idx=2)
    np.testing.assert_array_equal(mrcz.readMRC(path)[0], data)
    end = chunks_by_hand(path)[-1]
    assert os.path.getsize(path) == sum(end), "their file gets no index of ours"


def test_compressed_files_only_take_appends(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(3, 8, 8))
    path = tmp_path / "a.mrcz"
    codec.writeMRC(data, path, compressor="lz4")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="appended"):
        codec.writeMRC(data[:1], path, idx=1)
    assert path.read_bytes() == before


def test_idx_write_with_the_wrong_frame_size_changes_nothing(tmp_path, rng):
    path = tmp_path / "p.mrc"
    codec.writeMRC(make_stack(rng, "float32", shape=(2, 8, 8)), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="sections are"):
        codec.writeMRC(np.zeros((1, 9, 8), np.float32), path, idx=2)
    assert path.read_bytes() == before


def test_memmap_of_packed_modes_decodes_instead(tmp_path, rng):
    data = rng.integers(0, 16, size=(3, 6, 10)).astype(np.int8)
    codec.writeMRC(data, tmp_path / "u4.mrc", dtype="uint4")
    image, _ = codec.readMRC(tmp_path / "u4.mrc", useMemmap=True)
    np.testing.assert_array_equal(image, data)
