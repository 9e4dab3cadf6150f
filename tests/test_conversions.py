"""Conversions keep what the source meant: axes that are not lengths, 4-bit samples, 1D spectra.

Files go through ``napari-mrcz compress`` and ``decompress`` as a user runs
them, and are read back by python-mrcz and mrcfile as well as by us.
"""

from __future__ import annotations

import json
import shutil

import mrcfile
import mrcz
import numpy as np

from napari_mrcz import codec
from napari_mrcz.codec.source import open_image

from .conftest import data_path
from .test_cli import cli


def test_an_energy_axis_is_not_written_as_a_length_and_comes_back_as_energy(tmp_path):
    src = tmp_path / "eels"
    src.mkdir()
    shutil.copyfile(data_path("dm", "ncempy_08_carbon.dm3"), src / "carbon.dm3")
    done = cli("compress", str(src), "-o", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    target = tmp_path / "out" / "carbon.dm3.mrcz"

    image, meta = mrcz.readMRC(str(target))  # python-mrcz: the pixel size of x is unset, not 0.1 Å
    assert image.shape == (2048,)
    assert meta["pixelsize"][-1] == 0.0
    axes = meta["napari_mrcz_axes"]
    assert axes[-1] == {"label": "energy", "scale": axes[-1]["scale"], "units": "eV"}
    assert abs(axes[-1]["scale"] - 0.1) < 1e-6

    source = open_image(target)
    try:
        assert source.shape == (2048,) == codec.readMRC(target)[0].shape
        assert source.axis_labels == ["energy"] and source.units == ["eV"]
        assert abs(source.scale[0] - 0.1) < 1e-6
    finally:
        source.handle.close()

    info = json.loads(cli("info", "--json", str(target)).stdout)
    assert info["shape"] == [2048] and info["kind"] == "spectrum"
    assert [(a["label"], a["units"]) for a in info["axes"]] == [("energy", "eV")]
    text = cli("info", str(target)).stdout
    assert "2048 float32 (spectrum)" in text and "energy 0.1 eV" in text and "Å" not in text


def test_a_layer_with_an_energy_axis_saves_it_unset_in_the_header_and_kept_in_the_json(tmp_path):
    from napari_mrcz._reader import read_layers
    from napari_mrcz._writer import save_layer

    data = np.arange(2 * 300, dtype=np.float32).reshape(2, 300)
    attributes = {"scale": [1.0, 0.25], "units": ["pixel", "eV"], "axis_labels": ["row", "energy"],
                  "metadata": {}}
    path = str(tmp_path / "spectra.mrcz")
    save_layer(path, data, attributes, compressed=True)
    with mrcfile.open(path, permissive=True, header_only=True) as mrc:  # MRCZ: mrcfile reads the header
        assert float(mrc.header.cella.x) == 0.0, "an energy is not a length: its pixel size is unset"
        assert float(mrc.header.cella.y) / int(mrc.header.ny) == 1.0, "the pixel axis counts as Å, as before"
    ((back, kwargs, _),) = read_layers(path)
    assert np.array_equal(np.asarray(back), data)
    assert kwargs["axis_labels"] == ["y", "energy"]
    assert [str(u) for u in kwargs["units"]] == ["angstrom", "eV"] and kwargs["scale"][1] == 0.25


def _packed_bytes(path) -> bytes:
    raw = path.read_bytes()
    return raw[1024 + int.from_bytes(raw[92:96], "little"):]


def test_uint4_keeps_its_mode_through_compress_and_decompress(tmp_path):
    source = data_path("mrc", "mrcz-0.6.0", "uint4_mode101.mrc")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(source, src / "counts.mrc")
    rng = np.random.default_rng(5)
    counts = np.minimum(rng.poisson(0.6, size=(8, 256, 256)), 15).astype(np.uint8)  # sparse 4-bit counts
    mrcz.writeMRC(counts, str(src / "sparse.mrc"), dtype="uint4", compressor=None)
    assert cli("compress", str(src), "-o", str(tmp_path / "z")).returncode == 0
    assert cli("decompress", str(tmp_path / "z"), "-o", str(tmp_path / "plain")).returncode == 0

    for name in ("counts.mrc", "sparse.mrc"):
        original, _ = mrcz.readMRC(str(src / name))
        compressed = tmp_path / "z" / f"{name}.mrcz"
        with codec.MRCStack(compressed) as stack:
            assert stack.header.dtype == np.int8, "4-bit samples are stored as int8, not uint16"
            chunks = sum(stack.chunk_span(i)[1] for i in range(stack.shape[0]))
        assert chunks <= 1.2 * (original.size // 2), "no more than the packed 4-bit samples (incompressible)"
        theirs, meta = mrcz.readMRC(str(compressed))
        assert np.array_equal(theirs, original)
        assert meta["napari_mrcz_uint4"] is True

        plain = tmp_path / "plain" / name  # mrcfile does not know mode 101: python-mrcz reads it
        assert int.from_bytes(plain.read_bytes()[12:16], "little") == 101
        assert np.array_equal(mrcz.readMRC(str(plain))[0], original)
        assert _packed_bytes(plain) == _packed_bytes(src / name), "decompress gives back the same samples"
    sparse = (src / "sparse.mrc").stat().st_size
    assert (tmp_path / "z" / "sparse.mrc.mrcz").stat().st_size < sparse / 2, "compression pays for 4-bit data"
