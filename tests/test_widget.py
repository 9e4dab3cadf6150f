"""The MRCZ dock widget in a real napari window, used as a user would: units, sizes, loading, saving."""

from __future__ import annotations

import os
import shutil

import mrcfile
import numpy as np
import pytest

from napari_mrcz import codec, samples

from .conftest import PLUGIN, data_path, dock, make_stack, type_into


def shown(widget) -> bool:
    """Whether a row is shown when its dock is."""
    return not widget.native.isHidden()


def notifications(text: str) -> list[str]:
    """The messages of napari's notifications (its pop-ups, its notification list) that contain ``text``."""
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if text in str(n.message)]


# -- the length unit ------------------------------------------------------------------
def test_the_length_unit_converts_the_fields_and_layers_keep_overlaying(viewer, qtbot, tmp_path):
    emdb = data_path("mrc", "emdb")
    plain = viewer.open(str(emdb / "EMD-3197.map"), plugin=PLUGIN)[0]
    twin = viewer.open(str(emdb / "emd_3197.map.gz"), plugin=PLUGIN)[0]
    w = dock(viewer)
    viewer.layers.selection.active = plain
    records = len(notifications("Inconsistent units"))
    w.units.value = "nm"
    assert (w.pixel_z.value, w.pixel_y.value, w.pixel_x.value) == pytest.approx((1.14, 1.14, 1.14))
    assert w.pixel_x.native.text() == "1.14000 nm"
    assert [str(u) for u in plain.units] == ["angstrom"] * 3
    assert list(plain.scale) == pytest.approx([11.4] * 3)
    viewer.add_image(np.zeros((20, 20, 20), np.float32), scale=[11.4] * 3, units="angstrom", name="added")
    viewer.layers.selection.active = plain
    qtbot.wait(100)  # let the canvas draw: napari checks units across layers then
    assert viewer.layers.extent.units is not None, "one unit across layers"
    assert len(notifications("Inconsistent units")) == records
    np.testing.assert_allclose(plain.extent.world, twin.extent.world)
    type_into(qtbot, w.pixel_x, "1.2")
    assert list(plain.scale) == pytest.approx([11.4, 11.4, 12.0]), "typed in nm, stored in Å"
    viewer.layers.selection.active = twin
    assert w.units.value == "nm" and w.pixel_x.native.text() == "1.14000 nm", "the unit stays the user's"
    out = tmp_path / "map.mrc"
    plain.save(str(out), plugin=PLUGIN)
    with mrcfile.open(out, header_only=True) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(12.0, rel=1e-6)


def test_pixel_axes_are_named_and_take_the_length_unit_chosen(viewer, qtbot):
    emd = viewer.open(str(data_path("mrc", "emdb", "EMD-3197.map")), plugin=PLUGIN)[0]
    w = dock(viewer)
    made = viewer.add_image(np.zeros((2, 20, 20), np.float32), scale=[1.0, 1.14, 1.14], name="made")
    assert [str(u) for u in made.units] == ["pixel"] * 3 and made.axis_labels == ("-3", "-2", "-1")
    assert [f.label for f in (w.pixel_z, w.pixel_y, w.pixel_x)] == ["Pixel size z", "Pixel size y",
                                                                    "Pixel size x"]
    assert w.pixel_x.native.suffix() == " px" and w.units.value == "px"
    assert w.compressor.value == "zstd", "what saving it to MRCZ uses"
    w.units.value = "nm"
    assert [str(u) for u in made.units] == ["angstrom"] * 3
    assert list(made.scale) == pytest.approx([10.0, 11.4, 11.4]), "the sizes typed, in nm"
    assert w.pixel_x.native.text() == "1.14000 nm" and w.units.value == "nm"
    qtbot.wait(100)
    assert viewer.layers.extent.units is not None
    np.testing.assert_allclose(made.extent.world[:, 1:], emd.extent.world[:, 1:])
    rgb = viewer.add_image(np.zeros((8, 10, 3), np.uint8), rgb=True, name="rgb")
    assert rgb.rgb and [f.label for f in (w.pixel_y, w.pixel_x)] == ["Pixel size y", "Pixel size x"]
    assert not shown(w.pixel_z) and w.units.value == "px"


def test_a_spectrum_has_no_row_of_the_row_added_to_show_it(viewer):
    (spectrum,) = viewer.open(str(data_path("dm", "rsciio_1D_test-1.dm4")), plugin=PLUGIN)  # 2 channels
    w = dock(viewer)
    assert spectrum.axis_labels == ("row", "x"), "the reader adds a row to show a spectrum"
    assert not shown(w.pixel_y) and not shown(w.pixel_z), "no size for the added row"
    assert shown(w.pixel_x) and w.pixel_x.label == "Pixel size x" and w.pixel_x.native.suffix() == " px"
    w.units.value = "Å"
    assert [str(u) for u in spectrum.units] == ["pixel", "angstrom"]
    (eels,) = viewer.open(str(data_path("dm", "ncempy_08_carbon.dm3")), plugin=PLUGIN)
    assert w.pixel_x.label == "Pixel size energy" and w.pixel_x.native.suffix() == " eV"
    w.units.value = "nm"
    assert str(eels.units[-1]) == "electron_volt" and eels.scale[-1] == pytest.approx(0.1)


def test_a_pixel_size_of_zero_is_refused(viewer, qtbot, tmp_path):
    (layer,) = viewer.open(str(data_path("mrc", "emdb", "EMD-3197.map")), plugin=PLUGIN)
    w = dock(viewer)
    type_into(qtbot, w.pixel_x, "0")
    assert w.pixel_x.value > 0 and list(layer.scale) == pytest.approx([11.4] * 3)
    with pytest.raises(ValueError, match="outside of the allowed range"):
        w.pixel_x.value = 0.0
    w.units.value = "nm"
    type_into(qtbot, w.pixel_y, "0.00000")
    assert list(layer.scale) == pytest.approx([11.4] * 3)
    assert not notifications("Singular matrix")
    out = tmp_path / "map.mrc"
    layer.save(str(out), plugin=PLUGIN)
    with mrcfile.open(out, header_only=True) as mrc:
        assert min(float(v) for v in mrc.voxel_size.tolist()) == pytest.approx(11.4, rel=1e-6)


# -- load into memory ------------------------------------------------------------------
def test_load_into_memory_leaves_a_plain_writable_array_in_the_layers_place(viewer, qtbot):
    viewer.add_image(np.zeros((1024, 1024), np.float32), name="below")
    (movie,) = viewer.open_sample(PLUGIN, "movie")
    viewer.add_image(np.zeros((1024, 1024), np.float32), name="above")
    assert movie.multiscale
    name, index, metadata = movie.name, list(viewer.layers).index(movie), movie.metadata["mrcz"]
    movie.contrast_limits = [-3.0, 9.0]
    movie.translate = [0.0, 5.0, 7.0]
    viewer.dims.set_point(0, 5)
    viewer.layers.selection.active = movie
    w = dock(viewer)
    assert w.load_button.enabled
    w.load_button.native.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    loaded = viewer.layers[name]
    assert [layer.name for layer in viewer.layers] == ["below", name, "above"]
    assert list(viewer.layers).index(loaded) == index and not loaded.multiscale
    assert type(loaded.data) is np.ndarray and loaded.data.shape == (24, 1024, 1024)
    assert loaded.metadata["mrcz"] is metadata
    assert list(loaded.scale) == pytest.approx(list(movie.scale)) and loaded.units == movie.units
    assert loaded.axis_labels == movie.axis_labels and list(loaded.translate) == [0.0, 5.0, 7.0]
    assert list(loaded.contrast_limits) == [-3.0, 9.0]
    assert viewer.layers.selection.active == loaded and w.layer == loaded
    assert viewer.dims.current_step[0] == 5
    np.testing.assert_array_equal(loaded.data[5], np.asarray(movie.data[0][5]))
    loaded.data[0] = 0  # the guide's promise
    assert not loaded.data[0].any()
    assert not w.load_button.enabled, "nothing left to load"


def test_editing_a_lazy_layer_says_to_load_it_first(viewer, tmp_path):
    path = tmp_path / "m.mrcz"
    codec.writeMRC(samples.movie(nframes=4, size=64), path, compressor="zstd")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    with pytest.raises(TypeError, match="load it into memory first"):
        layer.data[0] = 0


# -- nothing stale ---------------------------------------------------------------------
def test_a_points_layer_shows_no_values_of_the_image_before(viewer):
    viewer.open(str(data_path("mrc", "emdb", "EMD-3197.map")), plugin=PLUGIN)
    w = dock(viewer)
    w.units.value = "nm"
    assert w.pixel_x.native.text() == "1.14000 nm"
    viewer.add_points([[1, 1, 1]], name="picks")
    assert w.layer is None and "picks" in w.layer_name.value and "not an image" in w.layer_name.value
    for row in (w.pixel_z, w.pixel_y, w.pixel_x, w.units, w.voltage, w.c3, w.gain, w.compressor, w.summary):
        assert not shown(row), row.label
    assert not w.save_button.enabled and not w.load_button.enabled


@pytest.fixture
def zstd_file(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(4, 64, 64))
    path = tmp_path / "w.mrcz"
    codec.writeMRC(data, path, compressor="zstd", clevel=1, pixelsize=[3.0, 1.5, 1.5])
    return path, data


def test_saving_over_the_shown_file_shows_what_it_is_now(viewer, qtbot, zstd_file):
    from napari_mrcz._widget import _human

    path, data = zstd_file
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert w.summary.value.startswith("MRCZ, zstd")
    w.compressor.value = "lz4"
    w.save_as(str(path))
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    qtbot.waitUntil(lambda: w.summary.value.startswith("MRCZ, lz4"), timeout=5000)
    assert f"{_human(os.path.getsize(path))} on disk" in w.summary.value
    layer.metadata["mrcz"]["save"]["compressor"] = "zlib"
    layer.save(str(path), plugin=PLUGIN)  # File > Save Selected Layers
    assert w.summary.value.startswith("MRCZ, zlib")
    assert f"{_human(os.path.getsize(path))} on disk" in w.summary.value
    layer.save(str(path.with_suffix(".mrc")), plugin=PLUGIN)  # another file: the layer's stays what it is
    assert w.summary.value.startswith("MRCZ, zlib")
    np.testing.assert_array_equal(codec.readMRC(path)[0], data)


def _dialog_file_name(dialog) -> str:
    from qtpy.QtWidgets import QLineEdit

    return dialog.findChild(QLineEdit, "fileNameEdit").text()


def run_save_dialog(qtbot, w, act):
    """Click "Save as MRCZ…" and let ``act(dialog)`` see and close the dialog napari shows."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QFileDialog

    seen = {}

    def handle():
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(20, handle)
            return
        seen["directory"] = dialog.directory().absolutePath()
        seen["name"] = _dialog_file_name(dialog)
        act(dialog)

    QTimer.singleShot(20, handle)
    w.save_button.native.click()
    return seen


def test_save_as_proposes_a_new_mrcz_beside_the_source(viewer, qtbot, tmp_path, zstd_file):
    emdb = tmp_path / "emdb"
    emdb.mkdir()
    gz = shutil.copyfile(data_path("mrc", "emdb", "emd_3197.map.gz"), emdb / "emd_3197.map.gz")
    viewer.open(str(gz), plugin=PLUGIN)
    w = dock(viewer)
    seen = run_save_dialog(qtbot, w, lambda dialog: dialog.reject())
    assert seen == {"directory": str(emdb), "name": "emd_3197.mrcz"}
    path, data = zstd_file
    (own,) = viewer.open(str(path), plugin=PLUGIN)
    before = path.read_bytes()
    seen = run_save_dialog(qtbot, w, lambda dialog: dialog.accept())
    assert seen == {"directory": str(path.parent), "name": "w_copy.mrcz"}, "never the source itself"
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(codec.readMRC(path.parent / "w_copy.mrcz")[0], data)


# -- files read as several layers --------------------------------------------------------
def test_a_complex_file_shows_its_own_ratio_and_its_two_layers_follow_each_edit(viewer):
    path = data_path("mrc", "mrcz-0.6.0", "complex64_blosclz.mrcz")  # 2 x 32 x 32 complex64
    amplitude, phase = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    viewer.layers.selection.active = amplitude
    raw = 2 * 32 * 32 * 8
    ratio = raw / os.path.getsize(path)
    assert w.summary.value.startswith("MRCZ, blosclz: 2 × 32 × 32 complex64, shown as float32")
    assert f"ratio {ratio:.2f}" in w.summary.value and f"{ratio:.2f}" == "0.98"
    w.pixel_x.value = 2.0
    w.units.value = "nm"
    w.pixel_y.value = 0.2
    for layer in (amplitude, phase):
        assert list(layer.scale)[-2:] == pytest.approx([2.0, 2.0]), layer.name
    viewer.layers.selection.active = phase
    assert (w.pixel_y.value, w.pixel_x.value) == pytest.approx((0.2, 0.2))


# -- saving a type MRC does not have --------------------------------------------------
def test_a_float64_layer_saved_as_float32_says_so_in_napari_every_time(viewer, qtbot, tmp_path, rng):
    layer = viewer.add_image(rng.normal(size=(3, 16, 16)), name="doubles")
    w = dock(viewer)
    before = len(notifications("saved as float32"))
    layer.save(str(tmp_path / "a.mrc"), plugin=PLUGIN)
    layer.save(str(tmp_path / "a.mrc"), plugin=PLUGIN)
    w.save_as(str(tmp_path / "a.mrcz"))
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    said = notifications("saved as float32")[before:]
    assert len(said) == 3 and all("doubles is float64" in s for s in said), said
    assert codec.readMRC(tmp_path / "a.mrcz")[0].dtype == np.float32


def test_the_save_dialog_says_python_mrcz_cannot_read_float16_mrcz(viewer):
    viewer.add_image(np.linspace(0, 1, 64, dtype=np.float16).reshape(8, 8), name="half")
    w = dock(viewer)
    assert "python-mrcz 0.6.0 cannot read it" in w.save_dialog().windowTitle()
    viewer.add_image(np.zeros((8, 8), np.float32), name="single")
    assert w.save_dialog().windowTitle() == "Save as MRCZ"
