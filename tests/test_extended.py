"""Extended headers without napari: FEI1/FEI2 written by mrcfile, SerialEM as IMOD documents it."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest
from mrcfile.dtypes import get_ext_header_dtype

from napari_mrcz import codec
from napari_mrcz.codec.header import MRCHeaderWarning

from .conftest import data_path
from .seri_writer import write_serialem


def write_fei(path, exttyp: bytes, data: np.ndarray, tilts, *, size=None, n_records=None) -> np.ndarray:
    """An FEI1/FEI2 file written by mrcfile, with its own record type; returns the records."""
    dtype = get_ext_header_dtype(exttyp, "<")
    records = np.zeros(len(data) if n_records is None else n_records, dtype=dtype)
    records["Metadata size"] = dtype.itemsize if size is None else size
    records["Metadata version"] = 0 if exttyp == b"FEI1" else 2
    records["Alpha tilt"] = tilts[: len(records)]
    records["Defocus"] = -1.5e-6
    records["Dose"] = 2.5e20  # e/m²: 2.5 e/Å²
    records["HT"] = 300e3
    records["Pixel size X"] = records["Pixel size Y"] = 1.1e-10
    records["Microscope type"] = b"TITAN52336320"
    records["Magnification"] = 105000
    records["Integration time"] = 0.9
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(records)
        mrc.header.exttyp = exttyp
        mrc.voxel_size = 1.1
    return records


@pytest.mark.parametrize("exttyp", [b"FEI1", b"FEI2"])
def test_fei_records_equal_mrcfiles_reading(tmp_path, rng, exttyp):
    data = rng.normal(size=(6, 16, 12)).astype(np.float32)
    path = tmp_path / "tilt.mrcs"
    write_fei(path, exttyp, data, np.linspace(-60, 60, 6))
    with mrcfile.open(path) as mrc:
        theirs = mrc.indexed_extended_header
    with codec.MRCStack(path) as stack:
        ext = stack.extended_header
    assert ext.kind == exttyp.decode() and ext.n_sections == 6 and ext.problem is None
    assert set(ext.sections) == set(theirs.dtype.names)
    for name in theirs.dtype.names:
        np.testing.assert_array_equal(ext.sections[name], theirs[name], err_msg=name)
    assert ext.section(0)["Microscope type"] == "TITAN52336320"
    assert ext.summary(0) == "tilt −60.0°, defocus −1.50 µm, dose 2.50 e/Å², mag 105000×"
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(image, data)
    assert meta["extendedHeader"]["type"] == exttyp.decode()
    np.testing.assert_allclose(meta["extendedHeader"]["sections"]["Alpha tilt"], np.linspace(-60, 60, 6))


def test_seri_records_decode_as_imod_documents(tmp_path, rng):
    n = 5
    data = rng.normal(size=(n, 10, 8)).astype(np.float32)
    records = {"tilt": np.array([-60.0, -30.5, 0.0, 29.75, 60.0]),
               "piece": np.array([[0, 0, 0], [900, 0, 0], [0, 900, 0], [900, 900, 0], [0, 0, 1]]),
               "stage": np.array([[12.0, -3.52], [12.04, -3.52], [0, 0], [-100.0, 7.2], [1.0, 1.0]]),
               "mag": np.array([53000, 53000, 81000, 2300, 105000]),
               "intensity": np.array([0.125, 0.25, 0.5, 1.0, 0.01]),
               "dose": np.array([3.1, 0.0, 120.5, 1e-3, 52.25])}
    path = tmp_path / "serialem.st"
    write_serialem(path, data, records, flags=1 | 2 | 4 | 8 | 16 | 32)
    image, meta = codec.readMRC(path)
    np.testing.assert_array_equal(np.stack(image) if isinstance(image, list) else image, data)
    sections = meta["extendedHeader"]["sections"]
    assert meta["extendedHeader"]["type"] == "SERI"
    np.testing.assert_allclose(sections["Tilt angle"], records["tilt"])
    pieces = np.stack([sections["Piece X"], sections["Piece Y"], sections["Piece Z"]], 1)
    np.testing.assert_array_equal(pieces, records["piece"])
    np.testing.assert_allclose(np.stack([sections["Stage X"], sections["Stage Y"]], 1), records["stage"])
    np.testing.assert_allclose(sections["Magnification"], records["mag"])
    np.testing.assert_allclose(sections["Intensity"], records["intensity"], atol=2e-5)
    np.testing.assert_allclose(sections["Exposure dose"], records["dose"], rtol=1e-6)
    with codec.MRCStack(path) as stack:
        assert stack.extended_header.summary(0) == "tilt −60.0°, dose 3.10 e/Å², mag 53000×, intensity 0.1250"


def test_old_serialem_files_without_exttyp_are_recognised(tmp_path, rng):
    data = rng.normal(size=(3, 8, 8)).astype(np.float32)
    path = tmp_path / "old.mrc"
    write_serialem(path, data, {"tilt": [-3.0, 0.0, 3.0], "mag": [1000, 2000, 3000]}, flags=1 | 8, exttyp=b"")
    with codec.MRCStack(path) as stack:
        assert stack.extended_header.kind == "SERI"
        np.testing.assert_allclose(stack.extended_header.sections["Tilt angle"], [-3.0, 0.0, 3.0])


@pytest.mark.parametrize("damage", ["fei_size", "fei_short", "seri_short", "seri_flags", "seri_no_record"])
def test_malformed_extended_headers_warn_and_the_data_opens_unshifted(tmp_path, rng, damage):
    data = rng.normal(size=(4, 12, 10)).astype(np.float32)
    path = tmp_path / f"{damage}.mrc"
    if damage == "fei_size":
        write_fei(path, b"FEI2", data, [1, 2, 3, 4], size=640)
    elif damage == "fei_short":
        write_fei(path, b"FEI1", data, [1, 2, 3, 4], n_records=2)
    elif damage == "seri_short":
        write_serialem(path, data, {"tilt": [1, 2, 3, 4]}, flags=1, nsymbt=5)
    elif damage == "seri_no_record":  # fewer bytes than one record (found by the fuzzer)
        write_serialem(path, data, {"tilt": [1, 2, 3, 4], "mag": [1, 1, 1, 1]}, flags=1 | 8, nsymbt=3)
    else:
        write_serialem(path, data, {"tilt": [1, 2, 3, 4]}, flags=1)
        raw = bytearray(path.read_bytes())
        raw[128:130] = np.array([6], "<i2").tobytes()  # NINT says 6 bytes, the flags imply 2
        path.write_bytes(bytes(raw))
    with pytest.warns(MRCHeaderWarning, match=str(path)):
        image, meta = codec.readMRC(path, slices=0)
    np.testing.assert_array_equal(image, data)
    with mrcfile.open(path, permissive=True) as mrc:
        np.testing.assert_array_equal(image, mrc.data)
    if damage == "fei_short":
        problem = meta["extendedHeader"]["problem"]
        assert problem.startswith("FEI1 extended header holds records for 2 of the 4")
        np.testing.assert_array_equal(meta["extendedHeader"]["sections"]["Alpha tilt"], [1, 2])


def test_header_fields_equal_mrcfiles_header():
    path = data_path("mrc", "quirks", "reference_mrcfile.mrc")
    with codec.MRCStack(path) as stack:
        ours = stack.header.fields()
    with mrcfile.open(path) as mrc:
        h = mrc.header
        for name in ("nx", "ny", "nz", "mode", "nxstart", "nystart", "nzstart", "mx", "my", "mz", "mapc",
                     "mapr", "maps", "ispg", "nsymbt", "nversion", "nlabl"):
            assert ours[name] == int(h[name]), name
        for name in ("dmin", "dmax", "dmean", "rms"):
            assert ours[name] == pytest.approx(float(h[name]), rel=1e-7), name
        assert ours["cella"] == pytest.approx([float(h.cella[k]) for k in "xyz"])
        assert ours["origin"] == pytest.approx([float(h.origin[k]) for k in "xyz"])
        assert ours["labels"] == [bytes(t).decode().rstrip() for t in h.label[: int(h.nlabl)]]
        assert ours["map"] == "MAP "


def test_files_without_records_have_no_extended_key():
    path = data_path("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, meta = codec.readMRC(path)
    assert "extendedHeader" not in meta and meta["metaId"] == b"json"
