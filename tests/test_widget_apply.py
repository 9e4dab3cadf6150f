"""The dock widget's "Apply to file": header edits written in place, in a real napari window."""

from __future__ import annotations

import hashlib
import os
import shutil

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec, samples

from .conftest import PLUGIN, data_path, dock, type_into


def click_apply(qtbot, w) -> None:
    from qtpy.QtCore import Qt

    assert w.apply_button.enabled, w.apply_button.tooltip
    qtbot.mouseClick(w.apply_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)


def data_digest(path) -> str:
    """sha256 of what follows the header and the extended header (NSYMBT bytes)."""
    raw = open(path, "rb").read()
    order = "<" if raw[212] == 0x44 else ">"  # MACHST: 0x44 little-endian, 0x11 big-endian
    nsymbt = int(np.frombuffer(raw[92:96], f"{order}i4")[0])
    return hashlib.sha256(raw[1024 + nsymbt:]).hexdigest()


def notifications(text: str) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if text in str(n.message)]


def inspector_value(w, name: str) -> str:
    return dict(w.inspector.visible_rows())[name]


def test_apply_writes_a_lazy_mrcz_movies_header_in_place_and_the_layer_goes_on(viewer, qtbot, tmp_path):
    path = tmp_path / "movie.mrcs"
    movie = samples.movie(nframes=8, size=64)
    codec.writeMRC(movie, path, pixelsize=[2.0, 1.0, 1.0], compressor="zstd")
    size, digest = os.path.getsize(path), data_digest(path)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert layer.axis_labels[0] == "frame" and not isinstance(layer.data, np.ndarray), "a lazy stack"
    assert w.apply_button.enabled and str(path) in w.apply_button.tooltip
    assert not w.apply_result.visible
    w.units.value = "nm"
    type_into(qtbot, w.pixel_y, "1.348")
    type_into(qtbot, w.pixel_x, "1.348")
    type_into(qtbot, w.voltage, "300")
    assert list(layer.scale) == pytest.approx([1.0, 13.48, 13.48])
    click_apply(qtbot, w)

    said = w.apply_result.value
    assert said.startswith("applied in place: pixelsize 2, 1, 1 → 2, 13.48, 13.48 Å"), said
    assert "voltage 0 → 300 kV" in said and w.apply_result.visible
    assert os.path.getsize(path) == size and data_digest(path) == digest, "data bytes untouched"
    assert not os.path.exists(tmp_path / ".movie.mrcs.napari-mrcz-journal")
    theirs, meta = mrcz.readMRC(str(path))
    np.testing.assert_allclose(meta["pixelsize"], [2.0, 13.48, 13.48], rtol=1e-6)
    assert meta["voltage"] == pytest.approx(300.0)
    np.testing.assert_array_equal(theirs, movie)
    ours, ours_meta = codec.readMRC(path)
    np.testing.assert_allclose(ours_meta["pixelsize"], [2.0, 13.48, 13.48], rtol=1e-6, err_msg="z kept")
    assert ours_meta["voltage"] == pytest.approx(300.0)
    # the layer reads on, frames never read before included, from where they were
    for k in (7, 0):
        np.testing.assert_array_equal(np.asarray(layer.data[k]), movie[k])
    assert list(layer.scale) == pytest.approx([1.0, 13.48, 13.48]), "the scale stays as edited"
    live = layer.metadata["mrcz"]
    assert live["voltage"] == pytest.approx(300.0) and live["frame_spacing"] == pytest.approx(2.0)
    assert live["header"]["voltage"] == pytest.approx(300.0)
    assert live["header"]["cella"][:2] == pytest.approx([64 * 13.48] * 2, rel=1e-6)
    assert w.summary.value.startswith("MRCZ, zstd: 8 × 64 × 64 int8 (8 frames)"), w.summary.value
    assert w.voltage.value == pytest.approx(300.0) and w.pixel_x.native.text() == "1.34800 nm"
    assert inspector_value(w, "voltage") == "300", "the header inspector shows the file's new header"
    assert w.apply_button.enabled
    click_apply(qtbot, w)
    assert w.apply_result.value == "nothing to apply: the file says this already"


def test_apply_to_a_plain_mrc_is_read_by_mrcfile(viewer, qtbot, tmp_path):
    path = tmp_path / "EMD-3197.map"
    shutil.copyfile(data_path("mrc", "emdb", "EMD-3197.map"), path)
    digest = data_digest(path)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    before = np.array(layer.data[3])
    w.units.value = "nm"
    for field in (w.pixel_z, w.pixel_y, w.pixel_x):
        type_into(qtbot, field, "1.2")
    type_into(qtbot, w.c3, "2.7")
    click_apply(qtbot, w)
    assert w.apply_result.value.startswith("applied in place: pixelsize 11.4 → 12 Å"), w.apply_result.value
    assert data_digest(path) == digest
    with mrcfile.open(path, permissive=True) as mrc:
        assert tuple(float(v) for v in mrc.voxel_size.tolist()) == pytest.approx((12.0, 12.0, 12.0))
    assert codec.readMRC(path)[1]["C3"] == pytest.approx(2.7)
    np.testing.assert_array_equal(np.asarray(layer.data[3]), before)
    assert layer.metadata["mrcz"]["C3"] == pytest.approx(2.7) and w.c3.value == pytest.approx(2.7)


def test_every_layer_read_from_the_file_sees_the_new_values(viewer, qtbot, tmp_path):
    path = tmp_path / "complex.mrcz"
    shutil.copyfile(data_path("mrc", "mrcz-0.6.0", "complex64_blosclz.mrcz"), path)
    amplitude, phase = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    viewer.layers.selection.active = amplitude
    w.voltage.value = 200.0
    w.pixel_x.value = 2.0
    click_apply(qtbot, w)
    assert "voltage 300 → 200 kV" in w.apply_result.value, w.apply_result.value
    assert phase.metadata["mrcz"] is amplitude.metadata["mrcz"]
    assert phase.metadata["mrcz"]["header"]["voltage"] == pytest.approx(200.0)
    assert list(phase.scale)[-1] == pytest.approx(2.0)
    viewer.layers.selection.active = phase
    assert w.voltage.value == pytest.approx(200.0) and w.pixel_x.value == pytest.approx(2.0)
    assert "voltage 300 → 200 kV" in w.apply_result.value, "the same file's result"
    assert codec.readMRC(path)[1]["pixelsize"] == pytest.approx([3.3, 1.25, 2.0], rel=1e-6)


def test_a_failed_apply_says_why(viewer, qtbot, tmp_path):
    path = tmp_path / "gone.mrcz"
    codec.writeMRC(samples.movie(nframes=3, size=32), path, compressor="zstd")
    viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    os.remove(path)  # moved away meanwhile: the open layer still reads its frames
    w.voltage.value = 300.0
    click_apply(qtbot, w)
    assert w.apply_result.value.startswith("not applied: "), w.apply_result.value
    assert "gone.mrcz" in w.apply_result.value
    assert notifications("gone.mrcz"), "and in napari's notifications"
    assert w.apply_button.enabled, "it may be tried again"


def test_a_2d_image_keeps_the_files_z_pixel_size(viewer, qtbot, tmp_path):
    path = tmp_path / "image.mrcz"
    shutil.copyfile(data_path("mrc", "mrcz-0.6.0", "single_image_float32_lz4.mrcz"), path)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert layer.ndim == 2
    w.pixel_x.value = 1.75
    click_apply(qtbot, w)
    assert w.apply_result.value == "applied in place: pixelsize 3.3, 1.25, 1.5 → 3.3, 1.25, 1.75 Å"
    np.testing.assert_allclose(codec.readMRC(path)[1]["pixelsize"], [3.3, 1.25, 1.75], rtol=1e-6)


def test_dm_files_are_read_only(viewer, tmp_path):
    path = tmp_path / "image.dm4"
    shutil.copyfile(data_path("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4"), path)
    viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert w.layer is not None and not w.apply_button.enabled
    assert w.apply_button.tooltip == "DM files are read-only: save as MRC or MRCZ, then edit"
    assert w.file_edit.apply() is None and "read-only" in w.apply_result.value


def test_gzip_files_and_layers_made_in_napari_cannot_be_applied(viewer, tmp_path):
    viewer.open(str(data_path("mrc", "emdb", "emd_3197.map.gz")), plugin=PLUGIN)
    w = dock(viewer)
    assert not w.apply_button.enabled and "gzip/bzip2" in w.apply_button.tooltip
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="made")
    assert w.layer is not None and w.layer.name == "made"
    assert not w.apply_button.enabled and "not read from a file" in w.apply_button.tooltip
