"""What a save keeps, converts and refuses, in a real napari window (issue: the napari path keeps meaning).

Header statistics, 32-bit integers in plain MRC, DM's RGB, float16 MRCZ and
FEI per-section records, each checked as a user would: with mrcfile and
python-mrcz on the saved file, or by looking at what napari draws.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz.codec.export import UnsupportedImageError

from .conftest import data_path
from .test_extended import write_fei

PLUGIN = "napari-mrcz"


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def header_stats(path) -> tuple[float, float, float, float]:
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        h = mrc.header
        return float(h.dmin), float(h.dmax), float(h.dmean), float(h.rms)


@pytest.mark.parametrize("suffix", [".mrc", ".mrcz"])
def test_resaving_keeps_the_header_statistics_and_edits_get_their_own(viewer, tmp_path, suffix):
    source = data_path("mrc", "emdb", "EMD-3197.map")
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    same = tmp_path / f"same{suffix}"
    layer.save(str(same), plugin=PLUGIN)
    assert header_stats(same) == header_stats(source), "unchanged data: the source's statistics, as they were"

    edited = np.asarray(layer.data) * 2.0 - 1.0
    (copy,) = [viewer.add_image(edited, metadata={"mrcz": dict(layer.metadata["mrcz"])})]
    out = tmp_path / f"edited{suffix}"
    copy.save(str(out), plugin=PLUGIN)
    lo, hi, mean, rms = header_stats(out)
    data = np.asarray(mrcz.readMRC(str(out))[0], dtype=np.float64)
    assert (lo, hi) == (float(data.min()), float(data.max()))
    assert mean == pytest.approx(data.mean(), rel=1e-6) and rms == pytest.approx(data.std(), rel=1e-6)
    if suffix == ".mrc":
        assert mrcfile.validate(str(out)), "mrcfile checks the statistics against the data"


@pytest.mark.parametrize(("values", "stored"), [
    (np.arange(-40, 40, dtype=np.int32), np.int16),
    (np.arange(0, 80, dtype=np.uint32) * 800, np.uint16),
    (np.arange(0, 80, dtype=np.int32) * 200_000 - 8_000_000, np.float32),
])
def test_32_bit_integers_save_as_a_standard_mode_that_holds_them(viewer, tmp_path, values, stored):
    layer = viewer.add_image(values.reshape(8, 10))
    out = tmp_path / "counts.mrc"
    layer.save(str(out), plugin=PLUGIN)
    with mrcfile.open(out) as mrc:  # not permissive: a standard mode
        assert mrc.data.dtype == stored
        np.testing.assert_array_equal(mrc.data.astype(np.int64), values.reshape(8, 10).astype(np.int64))
    assert mrcfile.validate(str(out))
    kept = tmp_path / "counts.mrcz"
    layer.save(str(kept), plugin=PLUGIN)
    assert mrcz.readMRC(str(kept))[0].dtype == values.dtype, "MRCZ keeps python-mrcz's modes"


def test_32_bit_integers_no_standard_mode_holds_are_refused_naming_mrcz(tmp_path):
    from napari_mrcz._writer import save_layer

    values = np.array([[0, 1 << 25], [3, 4]], dtype=np.uint32)
    with pytest.raises(UnsupportedImageError, match=r"no mode that holds .*save as MRCZ"):
        save_layer(str(tmp_path / "big.mrc"), values, {}, compressed=False)
    assert not (tmp_path / "big.mrc").exists()


def test_dm_rgb_shows_its_colours_not_a_black_canvas(viewer):
    (layer,) = viewer.open(str(data_path("dm", "rsciio_2D_test-8.dm3")), plugin=PLUGIN)
    assert layer.rgb and layer.data.shape == (2, 2, 3), "RGB, no alpha channel DM did not mean"
    np.testing.assert_array_equal(np.asarray(layer.data)[0, 0], [1, 1, 1])
    layer.contrast_limits = (0, 4)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].max() > 100, "napari draws the pixels (a DM alpha of 0 drew nothing)"


def test_float16_mrcz_says_python_mrcz_cannot_read_it(viewer, tmp_path):
    layer = viewer.add_image(np.linspace(0, 1, 64, dtype=np.float16).reshape(8, 8))
    with pytest.warns(UserWarning, match="python-mrcz 0.6.0 cannot read"):
        layer.save(str(tmp_path / "half.mrcz"), plugin=PLUGIN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.save(str(tmp_path / "half.mrc"), plugin=PLUGIN)  # plain float16 (mode 12): mrcfile reads it
    with mrcfile.open(tmp_path / "half.mrc") as mrc:
        assert mrc.data.dtype == np.float16


def test_an_fei_tilt_series_keeps_its_records_and_shows_its_voltage(viewer, tmp_path, rng):
    data = rng.normal(size=(5, 16, 12)).astype(np.float32)
    tilts = np.linspace(-60, 60, 5)
    source = tmp_path / "tilt.mrcs"
    write_fei(source, b"FEI1", data, tilts)
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    assert layer.metadata["mrcz"]["voltage"] == 300.0, "the extended header's HT, in kV"
    out = tmp_path / "tilt.mrcz"
    layer.save(str(out), plugin=PLUGIN)
    _, meta = mrcz.readMRC(str(out))
    kept = meta["napari_mrcz_extended"]
    assert kept["type"] == "FEI1"
    np.testing.assert_allclose(kept["sections"]["Alpha tilt"], tilts)
    assert meta["voltage"] == 300.0
    (again,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(again.metadata["mrcz"]["extended"]["sections"]["Alpha tilt"], tilts)
    with pytest.warns(UserWarning, match="FEI1 extended header .* not written to plain MRC"):
        layer.save(str(tmp_path / "tilt-plain.mrcs"), plugin=PLUGIN)


def _every_readable_file() -> list:
    from .test_napari import ALL_FILES, BROKEN

    return [p for p in ALL_FILES if Path(p).name not in BROKEN and not Path(p).name.startswith("mrcz_")]


@pytest.mark.parametrize("path", _every_readable_file(), ids=lambda p: Path(p).name)
def test_every_plain_file_we_write_opens_in_mrcfile_without_permissive(viewer, tmp_path, path):
    layers = viewer.open(path, plugin=PLUGIN)
    for k, layer in enumerate(layers):
        if layer.rgb:
            continue  # refused, with a message (test_metadata)
        out = tmp_path / f"layer{k}.mrc"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # casts and what plain MRC cannot keep are warned of
            layer.save(str(out), plugin=PLUGIN)
        with mrcfile.open(out) as mrc:  # raises on anything non-standard
            shown = np.asarray(layer.data[0] if layer.multiscale else layer.data)
            assert mrc.data.size == shown.size
            np.testing.assert_allclose(mrc.data.reshape(shown.shape).astype(np.float64),
                                       shown.astype(np.float32).astype(np.float64), rtol=1e-6)


def test_python_mrcz_quick_statistics_are_not_copied_as_if_exact(tmp_path, rng):
    from napari_mrcz.codec.convert import convert

    data = rng.normal(size=(3, 16, 16)).astype(np.float32)
    data[0] = 0  # python-mrcz's quick statistics come from frame 0 alone: (0, 0, 0, 0)
    mrcz.writeMRC(data, str(tmp_path / "quick.mrc"))
    out = tmp_path / "plain.mrc"
    assert convert(tmp_path / "quick.mrc", out, compressed=False).status == "done"
    assert header_stats(out) == (0.0, -1.0, -2.0, -1.0), "MRC2014's 'not computed', not frame 0's"
    assert mrcfile.validate(str(out))
