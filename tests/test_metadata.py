"""Metadata in a real napari viewer: units, frames vs volumes, headers kept on save, the header inspector."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from napari_mrcz import codec, samples

from .conftest import DATA, PLUGIN, data_path, make_stack
from .seri_writer import write_serialem
from .test_extended import write_fei


def open_with_widget(viewer, path):
    layers = viewer.open(str(path), plugin=PLUGIN)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "MRCZ metadata")
    viewer.layers.selection.active = layers[0]
    return layers, w


def shown(widget) -> bool:
    """Whether the widget is shown when its dock is (Qt's own visibility needs the dock on screen)."""
    return not widget.native.isHidden()


def mrcfile_voxel(path) -> list[float]:
    """(z, y, x) voxel size in Å as mrcfile reads it (MRC2014: cell / sampling)."""
    with mrcfile.open(path, permissive=True, header_only=True) as mrc:
        v = mrc.voxel_size
        return [float(v.z), float(v.y), float(v.x)]


# -- units ------------------------------------------------------------------------
def test_mixed_dm_calibrations_are_lengths_in_one_unit_and_survive_save(viewer, tmp_path):
    path = data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4")  # z 4 µm, y 3 nm, x 2 pm
    (layer,), w = open_with_widget(viewer, path)
    np.testing.assert_allclose(layer.scale, [40000.0, 30.0, 0.02], rtol=1e-12)
    assert [str(u) for u in layer.units] == ["angstrom"] * 3
    assert [s.native.suffix() for s in (w.pixel_z, w.pixel_y, w.pixel_x)] == [" Å"] * 3
    for name in ("copy.mrc", "copy.mrcz"):
        out = tmp_path / name
        layer.save(str(out), plugin=PLUGIN)
        if name.endswith(".mrc"):
            np.testing.assert_allclose(mrcfile_voxel(out), [40000.0, 30.0, 0.02], rtol=1e-6)
        _, meta = codec.readMRC(out)
        np.testing.assert_allclose(meta["pixelsize"], [40000.0, 30.0, 0.02], rtol=1e-6)
        (again,) = viewer.open(str(out), plugin=PLUGIN)
        np.testing.assert_allclose(again.scale, layer.scale, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(again.data), np.asarray(layer.data))


def test_the_length_unit_shows_lengths_in_it_and_the_saved_file_is_in_angstrom(viewer, tmp_path, rng):
    data = make_stack(rng, "float32", shape=(4, 24, 20))
    path = tmp_path / "v.map"
    codec.writeMRC(data, path, pixelsize=[3.0, 1.5, 1.25])
    (layer,), w = open_with_widget(viewer, path)
    w.units.value = "nm"
    assert [str(u) for u in layer.units] == ["angstrom"] * 3, "the layer stays in Å"
    np.testing.assert_allclose(layer.scale, [3.0, 1.5, 1.25])
    assert (w.pixel_z.value, w.pixel_y.value, w.pixel_x.value) == pytest.approx((0.3, 0.15, 0.125))
    w.pixel_x.value = 0.2
    np.testing.assert_allclose(layer.scale, [3.0, 1.5, 2.0])
    out = tmp_path / "v_nm.mrc"
    layer.save(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(mrcfile_voxel(out), [3.0, 1.5, 2.0], rtol=1e-6)
    (again,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, [3.0, 1.5, 2.0], rtol=1e-6)
    assert [str(u) for u in again.units] == ["angstrom"] * 3


def test_layers_in_other_units_are_converted_on_save(viewer, tmp_path, rng):
    data = make_stack(rng, "int16", shape=(3, 16, 16))
    layer = viewer.add_image(data, scale=[0.5, 0.2, 0.2], units=("micrometer", "nanometer", "nanometer"))
    out = tmp_path / "mixed.mrcz"
    layer.save(str(out), plugin=PLUGIN)
    _, meta = codec.readMRC(out)
    np.testing.assert_allclose(meta["pixelsize"], [5000.0, 2.0, 2.0], rtol=1e-6)


def test_non_length_axes_keep_their_own_units(viewer):
    path = data_path("dm", "ncempy_08_carbon.dm3")  # an EELS spectrum: 0.1 eV per channel
    (layer,), w = open_with_widget(viewer, path)
    assert str(layer.units[-1]) == "electron_volt" and layer.axis_labels[-1] == "energy"
    assert layer.scale[-1] == pytest.approx(0.1)
    assert w.pixel_x.native.suffix() == " eV" and w.pixel_x.label == "Pixel size energy"
    w.units.value = "nm"
    assert str(layer.units[-1]) == "electron_volt" and layer.scale[-1] == pytest.approx(0.1)


# -- frames and volumes ---------------------------------------------------------------
def test_movies_have_a_frame_axis_and_volumes_a_z_axis(viewer, tmp_path, rng):
    stack_path = tmp_path / "movie.mrcs"
    with mrcfile.new(stack_path) as mrc:  # ISPG 0: an image stack
        mrc.set_data(make_stack(rng, "float32", shape=(5, 16, 16)))
        mrc.set_image_stack()
        mrc.voxel_size = 0.83
    (movie,), w = open_with_widget(viewer, stack_path)
    assert movie.axis_labels[0] == "frame" and movie.scale[0] == 1.0
    assert str(movie.units[0]) == "pixel"
    assert shown(w.pixel_y) and not shown(w.pixel_z)
    assert "(5 frames)" in w.summary.value
    volume = viewer.open(str(data_path("mrc", "emdb", "EMD-3197.map")), plugin=PLUGIN)[0]
    viewer.layers.selection.active = volume
    assert volume.axis_labels[0] == "z" and shown(w.pixel_z)
    assert w.pixel_z.value == pytest.approx(11.4) and w.pixel_z.label == "Pixel size z"
    image = viewer.open(str(data_path("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4")),
                        plugin=PLUGIN)[0]
    viewer.layers.selection.active = image
    assert shown(w.pixel_y) and not shown(w.pixel_z)
    (sample,) = viewer.open_sample(PLUGIN, "movie")
    assert sample.axis_labels[0] == "frame"


def test_a_saved_movie_stays_a_movie(viewer, tmp_path):
    (movie,) = viewer.open_sample(PLUGIN, "movie")
    for name in ("again.mrcz", "again.mrc"):
        out = tmp_path / name
        movie.save(str(out), plugin=PLUGIN)
        (again,) = viewer.open(str(out), plugin=PLUGIN)
        assert again.axis_labels[0] == "frame" and list(again.scale) == pytest.approx(list(movie.scale))


# -- nothing changes that the user did not change ------------------------------------
GOOD_QUIRKS = {"reference_mrcfile.mrc", "nlabl_mismatch.mrc", "serialem_machine_stamp.mrc",
               "motioncor2_map_id.mrc"}
RESAVABLE = sorted(
    p for p in glob.glob(str(DATA / "**" / "*"), recursive=True)
    if os.path.isfile(p) and not p.endswith((".json", ".npz", ".md"))
    and ("quirks" not in p or Path(p).name in GOOD_QUIRKS))


@pytest.mark.parametrize("path", RESAVABLE, ids=[Path(p).name for p in RESAVABLE])
def test_resaving_every_shared_file_keeps_its_header(viewer, tmp_path, path):
    layers = viewer.open(path, plugin=PLUGIN)
    layer = layers[0]
    if layer.rgb:
        with pytest.raises(TypeError, match="RGB"):
            layer.save(str(tmp_path / "rgb.mrc"), plugin=PLUGIN)
        return
    source = layer.metadata["mrcz"]
    header = source.get("header") or {}
    for name in ("resaved.mrc", "resaved.mrcz"):
        out = tmp_path / name
        layer.save(str(out), plugin=PLUGIN)
        with codec.MRCStack(out) as stack:
            fields = stack.header.fields()
            json_meta = stack.header.json_meta or {}
        for key in ("voltage", "C3", "gain"):
            assert fields[key] == pytest.approx(source[key] or 0.0, rel=1e-7), key
        for key in ("origin", "nxstart", "nystart", "nzstart"):
            assert fields[key] == header.get(key, fields[key]), key
        theirs = [t for t in header.get("labels", []) if "napari-mrcz" not in t]
        assert fields["labels"][:-1] == theirs[:9] and "napari-mrcz" in fields["labels"][-1]
        for key, value in source["meta"].items():
            assert json_meta.get(key) == value, key
        again = viewer.open(str(out), plugin=PLUGIN)[0]
        assert again.metadata["mrcz"]["voltage"] == source["voltage"]
        assert again.metadata["mrcz"]["gain"] == source["gain"]
        if all(str(u) in ("angstrom", "pixel") for u in layer.units) and "row" not in layer.axis_labels:
            # MRC has lengths only: an energy axis or a spectrum's added row cannot survive
            assert again.axis_labels == layer.axis_labels
            np.testing.assert_allclose(again.scale, layer.scale, rtol=1e-6)
        if len(layers) == 1:
            np.testing.assert_array_equal(np.asarray(again.data), np.asarray(layer.data))


def test_emdb_gain_stays_zero(viewer, tmp_path):
    path = data_path("mrc", "emdb", "EMD-3197.map")
    (layer,), w = open_with_widget(viewer, path)
    assert [box.native.text() for box in (w.voltage, w.c3, w.gain)] == ["not set"] * 3
    out = tmp_path / "emd.map"
    layer.save(str(out), plugin=PLUGIN)
    raw = out.read_bytes()[132:144]
    assert np.frombuffer(raw, "<f4").tolist() == [0.0, 0.0, 0.0]
    with mrcfile.open(out) as mrc, mrcfile.open(path) as src:
        assert mrc.header.nxstart == src.header.nxstart == -2
        assert mrc.header.ispg == src.header.ispg == 1
        assert bytes(src.header.label[0]).strip() in [bytes(t).strip() for t in mrc.header.label]
        np.testing.assert_array_equal(mrc.data, src.data)


# -- the widget: what the file is, apart from how it will be saved -------------------
def test_the_widget_shows_the_file_apart_from_the_save_settings(viewer, tmp_path, rng):
    (dm,), w = open_with_widget(viewer, data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"))
    assert w.summary.value.startswith("DM4: 66 × 65 × 64 int16") and "ratio" not in w.summary.value
    assert w.compressor.label == "Compressor" and w.save_heading.value == "Save as MRCZ… will use:"
    plain = viewer.open(str(data_path("mrc", "emdb", "EMD-3197.map")), plugin=PLUGIN)[0]
    viewer.layers.selection.active = plain
    assert w.summary.value.startswith("MRC: 20 × 20 × 20 float32") and "ratio" not in w.summary.value
    assert plain.metadata["mrcz"]["compressor"] is None
    path = tmp_path / "c.mrcz"
    codec.writeMRC(make_stack(rng, "int16", shape=(4, 32, 32)), path, compressor="lz4", voltage=300.0)
    packed = viewer.open(str(path), plugin=PLUGIN)[0]
    viewer.layers.selection.active = packed
    assert w.summary.value.startswith("MRCZ, lz4: 4 × 32 × 32 int16") and "ratio" in w.summary.value
    assert w.compressor.value == "lz4" and w.voltage.value == pytest.approx(300.0)
    w.voltage.value = w.voltage.min  # back to "not set"
    assert packed.metadata["mrcz"]["voltage"] is None and w.voltage.native.text() == "not set"


# -- the header inspector ---------------------------------------------------------------
def grab(widget) -> np.ndarray:
    """The widget as rendered on screen, as an RGB array."""
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    return np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)[..., :3]


def test_the_inspector_follows_the_slider_through_an_fei_tilt_series(viewer, tmp_path, rng, qtbot):
    tilts = np.array([-42.0, -21.0, 0.0, 21.0, 42.0])
    path = tmp_path / "tilt.mrcs"
    write_fei(path, b"FEI2", rng.normal(size=(5, 64, 64)).astype(np.float32), tilts)
    (layer,), w = open_with_widget(viewer, path)
    np.testing.assert_array_equal(layer.metadata["mrcz"]["extended"]["sections"]["Alpha tilt"], tilts)
    w.show_inspector(True)
    for k, tilt in enumerate(tilts):
        viewer.dims.set_point(0, k)
        want = f"tilt {tilt:+.1f}°".replace("-", "−")
        assert w.inspector.section.text().startswith(f"Section {k}: {want}, defocus −1.50 µm")
        current = dict(w.inspector.visible_rows())
        assert current["Alpha tilt"] == f"{tilt:.6g}"
    w.inspector.filter.setText("defocus")
    rows = w.inspector.visible_rows()
    assert ("Defocus", "-1.5e-06") in rows and ("nx", "64") not in rows
    w.inspector.filter.setText("")
    rows = w.inspector.visible_rows()
    assert ("nx", "64") in rows and ("exttyp", "FEI2") in rows
    assert any(field == "0" and value.startswith("Created by mrcfile") for field, value in rows)
    qtbot.wait(50)
    shot = grab(w.inspector)
    assert shot.shape[0] > 200 and shot.std() > 10, "the inspector is drawn, not blank"
    tree_rows = w.inspector.tree.visualItemRect(w.inspector.tree.topLevelItem(0))
    assert tree_rows.height() > 0, "the header rows are on screen"


def test_the_inspector_shows_serialem_records(viewer, tmp_path, rng):
    path = tmp_path / "tilt.st"
    tilts = [-60.0, 0.0, 60.0]
    write_serialem(path, rng.normal(size=(3, 16, 16)).astype(np.float32),
                   {"tilt": tilts, "mag": [53000, 53000, 53000], "dose": [2.0, 2.0, 4.0]}, flags=1 | 8 | 32)
    (layer,), w = open_with_widget(viewer, path)
    np.testing.assert_allclose(layer.metadata["mrcz"]["extended"]["sections"]["Tilt angle"], tilts)
    viewer.dims.set_point(0, 2)
    assert w.inspector.section.text() == "Section 2: tilt +60.0°, dose 4.00 e/Å², mag 53000×"


def test_the_inspector_searches_dm_tags_and_json(viewer, tmp_path):
    (_, w) = open_with_widget(viewer, data_path("dm", "ncempy_08_carbon.dm3"))
    w.inspector.filter.setText("voltage")
    rows = w.inspector.visible_rows()
    assert ("Voltage", "300000") in rows or ("Voltage", "300000.0") in rows, rows[:20]
    mrcz = viewer.open(str(data_path("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz")), plugin=PLUGIN)[0]
    viewer.layers.selection.active = mrcz
    meta = json.loads(json.dumps(mrcz.metadata["mrcz"]["meta"]))
    w.inspector.filter.setText("")
    rows = dict(w.inspector.visible_rows())
    for key, value in meta.items():
        if not isinstance(value, (dict, list)):
            assert rows[key] == str(value) or rows[key] == f"{value:.6g}", key


def test_the_demo_sample_opens_with_its_metadata(viewer):
    (movie,) = viewer.open_sample(PLUGIN, "movie")
    meta = movie.metadata["mrcz"]
    assert meta["voltage"] == 300.0 and meta["C3"] == pytest.approx(2.7)
    assert meta["meta"]["detector"] == samples.SAMPLE_MOVIE_HEADER["meta"]["detector"]


def test_the_widget_rows_line_up_and_labels_are_whole(viewer, qtbot):
    from qtpy.QtCore import QPoint

    viewer.open_sample(PLUGIN, "movie")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "MRCZ metadata")
    rows = [w.pixel_y, w.pixel_x, w.units, w.voltage, w.c3, w.gain, w.compressor, w.clevel]

    def starts() -> set[int]:
        return {row.native.mapTo(w.native, QPoint(0, 0)).x() for row in rows}

    qtbot.waitUntil(lambda: len(starts()) == 1, timeout=5000)
    for row in rows:
        label = row._labeled_widget()._label_widget.native
        assert label.width() >= label.fontMetrics().horizontalAdvance(label.text()), label.text()
