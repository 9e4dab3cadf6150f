"""Self-tests shipped with the package: ``napari_mrcz.codec.test()`` runs them.

They need nothing but the codec's own dependencies and pytest.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mrcz import codec


@pytest.mark.parametrize("compressor", [None, "lz4", "lz4hc", "zstd", "zlib", "blosclz"])
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "int32", "uint32", "float16", "float32",
                                   "complex64"])
def test_roundtrip(tmp_path, dtype, compressor):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(3, 16, 20)) * 50).astype(dtype)
    path = tmp_path / "x.mrcz"
    codec.writeMRC(data, path, pixelsize=[3.0, 2.0, 1.0], compressor=compressor, meta={"k": 1})
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, data)
    np.testing.assert_allclose(meta["pixelsize"], [3.0, 2.0, 1.0], rtol=1e-6)
    assert meta["k"] == 1 and meta["compressor"] == compressor


def test_frames_of_a_compressed_file(tmp_path):
    data = np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8)
    codec.writeMRC(data, tmp_path / "c.mrcz", compressor="zstd")
    np.testing.assert_array_equal(codec.readMRC(tmp_path / "c.mrcz", idx=(2, 4))[0], data[2:5])


def test_truncated_file_is_a_clear_error(tmp_path):
    codec.writeMRC(np.ones((4, 8, 8), np.float32), tmp_path / "t.mrc")
    raw = (tmp_path / "t.mrc").read_bytes()
    (tmp_path / "t.mrc").write_bytes(raw[:-10])
    with pytest.raises(codec.MRCFileError, match="missing"):
        codec.readMRC(tmp_path / "t.mrc")
