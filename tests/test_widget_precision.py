"""The dock widget's *Precision* (issue 18) in a real napari window: lossless, N bits, auto, the estimate."""

from __future__ import annotations

import re

import mrcz
import numpy as np
import pytest

from napari_mrcz import codec, samples
from napari_mrcz.codec.precision import PRECISION_KEY, round_mantissa

from .test_widget import PLUGIN, dock, shown, type_into

#: How long an estimate (one 256 x 256 section, in a worker thread) may take on a busy machine.
ESTIMATE_MS = 30000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


@pytest.fixture
def tomogram_file(tmp_path):
    """The sample tomogram (16 x 256 x 256 float32) as a plain MRC file, and its values."""
    volume = samples.tomogram(16, 256)
    path = tmp_path / "tomogram.mrc"
    codec.writeMRC(volume, path, pixelsize=[5.0, 5.0, 5.0])
    return path, volume


def save(qtbot, w, path) -> None:
    """Click-free "Save as MRCZ…" to ``path`` (the dialog is tested in test_widget), and wait for it."""
    w.save_as(str(path))
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)


def estimated(qtbot, w) -> tuple[float, float]:
    """Wait for the *Estimate* row's "≈ 1.2 MB on disk, ratio 3.4 (from 1 section)"; its MB and ratio."""
    qtbot.waitUntil(lambda: w.estimate.value.startswith("≈"), timeout=ESTIMATE_MS)
    found = re.match(r"≈ ([\d.]+) (KB|MB) on disk, ratio ([\d.]+) \(from (\d+% of )?1 section",
                     w.estimate.value)
    assert found, w.estimate.value
    size = float(found[1]) * (1e3 if found[2] == "KB" else 1e6)
    return size, float(found[3])


def bits_of(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, np.float32).view(np.uint32)


def record(path) -> dict | None:
    return codec.readMRC(path)[1].get(PRECISION_KEY)


# -- lossless unless asked ------------------------------------------------------------------
def test_lossless_is_the_default_and_writes_exactly_the_layers_values(viewer, qtbot, tmp_path, tomogram_file):
    path, volume = tomogram_file
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert w.precision.value == "lossless" and w.precision.enabled
    assert w.precision_note.value == "lossless: every value saved exactly"
    assert not shown(w.keepbits) and not shown(w.max_error)
    save(qtbot, w, tmp_path / "exact.mrcz")
    layer.save(str(tmp_path / "exact.mrc"), plugin=PLUGIN)  # File > Save Selected Layers
    for out in (tmp_path / "exact.mrcz", tmp_path / "exact.mrc"):
        np.testing.assert_array_equal(bits_of(codec.readMRC(out)[0]), bits_of(volume))
        assert record(out) is None, out.name
    assert w.summary.value.endswith("\nlossless")


# -- N bits ---------------------------------------------------------------------------------
def test_eight_bits_round_the_save_which_python_mrcz_reads_the_same_and_is_smaller(viewer, qtbot, tmp_path,
                                                                                 tomogram_file):
    path, volume = tomogram_file
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    save(qtbot, w, tmp_path / "exact.mrcz")
    w.precision.value = "bits"
    assert shown(w.keepbits) and not shown(w.max_error) and w.keepbits.max == 23
    type_into(qtbot, w.keepbits, "8")
    assert w.precision_note.value == "lossy: 8 mantissa bits (of 23)"
    assert layer.metadata["mrcz"]["save"]["keepbits"] == 8
    save(qtbot, w, tmp_path / "eight.mrcz")
    out = tmp_path / "eight.mrcz"
    ours = codec.readMRC(out)[0]
    theirs = np.asarray(mrcz.readMRC(str(out))[0]).reshape(ours.shape)
    np.testing.assert_array_equal(bits_of(theirs), bits_of(ours))
    want = volume.copy()
    round_mantissa(want, 8)
    np.testing.assert_array_equal(bits_of(ours), bits_of(want))
    assert not np.array_equal(ours, volume), "lossy, as chosen"
    assert record(out) == {"lossy": True, "keepbits": 8, "mantissa_bits": 23}
    assert out.stat().st_size < 0.6 * (tmp_path / "exact.mrcz").stat().st_size
    layer.save(str(tmp_path / "eight.mrc"), plugin=PLUGIN)  # plain MRC rounds too
    np.testing.assert_array_equal(bits_of(codec.readMRC(tmp_path / "eight.mrc")[0]), bits_of(want))
    assert record(tmp_path / "eight.mrc")["keepbits"] == 8
    np.testing.assert_array_equal(bits_of(np.asarray(layer.data)), bits_of(volume))  # the layer: unchanged
    assert w.summary.value.endswith("\nlossless"), "the layer's file is as it was"
    w.precision.value = "lossless"
    assert layer.metadata["mrcz"]["save"] == {"compressor": "zstd", "clevel": 1}, "lossless as files open"


def test_each_layer_keeps_its_own_precision_and_float16_has_ten_bits(viewer, qtbot, tmp_path, rng):
    single = viewer.add_image(rng.normal(size=(4, 32, 32)).astype(np.float32), name="single")
    w = dock(viewer)
    w.precision.value = "bits"
    w.keepbits.value = 12
    half = viewer.add_image(rng.normal(size=(4, 32, 32)).astype(np.float16), name="half")
    assert w.layer == half and w.precision.value == "lossless"
    w.precision.value = "bits"
    assert w.keepbits.max == 10 and w.keepbits.value == 10, "float16 has 10 mantissa bits"
    w.keepbits.value = 3
    viewer.layers.selection.active = single
    assert w.precision.value == "bits" and w.keepbits.value == 12 and w.keepbits.max == 23
    viewer.layers.selection.active = half
    assert w.keepbits.value == 3 and w.precision_note.value == "lossy: 3 mantissa bits (of 10)"
    with pytest.warns(UserWarning, match="float16 MRCZ"):
        half.save(str(tmp_path / "half.mrcz"), plugin=PLUGIN)
    want = np.array(half.data, copy=True)
    round_mantissa(want, 3)
    np.testing.assert_array_equal(codec.readMRC(tmp_path / "half.mrcz")[0].view(np.uint16),
                                  want.view(np.uint16))


# -- auto -----------------------------------------------------------------------------------
def test_auto_records_the_bits_of_each_section_and_the_max_error(viewer, qtbot, tmp_path, tomogram_file):
    path, volume = tomogram_file
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    w.precision.value = "auto"
    assert shown(w.max_error) and not shown(w.keepbits) and w.max_error.value == pytest.approx(0.01)
    assert w.precision_note.value.startswith("lossy: ")
    assert layer.metadata["mrcz"]["save"] == {"compressor": "zstd", "clevel": 1, "keepbits": "auto",
                                              "max_error": 0.01}
    save(qtbot, w, tmp_path / "auto.mrcz")
    kept = record(tmp_path / "auto.mrcz")
    assert kept["lossy"] and kept["max_error"] == 0.01 and len(kept["keepbits"]) == 16
    assert all(0 < bits < 23 for bits in kept["keepbits"])
    type_into(qtbot, w.max_error, "0.1")
    save(qtbot, w, tmp_path / "coarser.mrcz")
    coarser = record(tmp_path / "coarser.mrcz")
    assert coarser["max_error"] == pytest.approx(0.1)
    assert sum(coarser["keepbits"]) < sum(kept["keepbits"]), "a larger error allowed: fewer bits"
    assert mrcz.readMRC(str(tmp_path / "coarser.mrcz"))[1][PRECISION_KEY] == coarser


# -- integers -------------------------------------------------------------------------------
def test_an_integer_layer_has_nothing_to_round_and_saves_exactly(viewer, qtbot, tmp_path, rng):
    counts = rng.integers(-1000, 1000, size=(4, 64, 64), dtype=np.int16)
    path = tmp_path / "counts.mrcz"
    codec.writeMRC(counts, path, compressor="zstd")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert not w.precision.enabled and w.precision.value == "lossless"
    assert "int16 values are integers, stored exactly already" in w.precision_note.value
    layer.metadata["mrcz"]["save"]["keepbits"] = 4  # a script asks anyway: integers stay exact
    save(qtbot, w, tmp_path / "copy.mrcz")
    layer.save(str(tmp_path / "copy.mrc"), plugin=PLUGIN)
    for out in (tmp_path / "copy.mrcz", tmp_path / "copy.mrc"):
        np.testing.assert_array_equal(codec.readMRC(out)[0], counts)
        assert record(out) is None


# -- the estimate ---------------------------------------------------------------------------
def test_the_estimate_arrives_from_a_worker_and_is_near_the_real_ratio(viewer, qtbot, tmp_path,
                                                                       tomogram_file):
    path, volume = tomogram_file
    viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    assert w.estimate.value == "estimating…", "measured off the event loop, not while the widget is built"
    size, ratio = estimated(qtbot, w)
    save(qtbot, w, tmp_path / "exact.mrcz")
    real = volume.nbytes / (tmp_path / "exact.mrcz").stat().st_size
    assert real / 1.3 < ratio < real * 1.3 and size == pytest.approx((tmp_path / "exact.mrcz").stat().st_size,
                                                                       rel=0.3)
    w.precision.value = "bits"
    type_into(qtbot, w.keepbits, "8")
    assert w.estimate.value == "estimating…", "each change measures again"
    _, eight = estimated(qtbot, w)
    save(qtbot, w, tmp_path / "eight.mrcz")
    real8 = volume.nbytes / (tmp_path / "eight.mrcz").stat().st_size
    assert real8 / 1.3 < eight < real8 * 1.3 and eight > 1.5 * ratio
    w.precision.value = "auto"
    qtbot.waitUntil(lambda: "mantissa bits)" in w.estimate.value, timeout=ESTIMATE_MS)
    assert re.search(r"\(from 1 section: \d+ mantissa bits\)$", w.estimate.value), w.estimate.value
    w.compressor.value = "lz4"
    w.clevel.value = 5
    _, lz4 = estimated(qtbot, w)
    save(qtbot, w, tmp_path / "lz4.mrcz")
    real_lz4 = volume.nbytes / (tmp_path / "lz4.mrcz").stat().st_size
    assert real_lz4 / 1.3 < lz4 < real_lz4 * 1.3
    ints = viewer.add_image(np.zeros((3, 256, 256), np.int16), name="zeros")
    assert w.layer == ints
    _, zeros = estimated(qtbot, w)
    assert zeros > 10 * lz4, "the layer changed: its own estimate"


def test_the_event_loop_runs_while_a_large_section_is_estimated(viewer, qtbot, rng):
    import time

    from qtpy.QtCore import QTimer

    viewer.add_image(rng.normal(size=(4096, 4096)).astype(np.float32), name="large")
    w = dock(viewer)
    estimated(qtbot, w)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    w.compressor.value = "zlib"
    w.clevel.value = 9  # seconds of work for 8 MB of the section
    began = time.perf_counter()
    estimated(qtbot, w)
    took = time.perf_counter() - began
    timer.stop()
    assert "(from 12% of 1 section)" in w.estimate.value, "a 64 MB section: 8 bands of rows measured"
    gaps = np.diff([began, *[t for t in ticks if t >= began]])
    assert took > 0.3 and gaps.max() < took / 2, "the event loop ran all along while the worker compressed"


# -- a lossy file, reopened ---------------------------------------------------------------
def test_a_lossy_file_reopened_says_so_and_saves_lossless_unless_asked(viewer, qtbot, tmp_path,
                                                                      tomogram_file):
    path, _ = tomogram_file
    viewer.open(str(path), plugin=PLUGIN)
    w = dock(viewer)
    w.precision.value = "bits"
    w.keepbits.value = 8
    save(qtbot, w, tmp_path / "eight.mrcz")
    (lossy,) = viewer.open(str(tmp_path / "eight.mrcz"), plugin=PLUGIN)
    assert w.layer == lossy
    assert w.summary.value.splitlines()[-1] == "lossy: 8 mantissa bits"
    assert w.precision.value == "lossless" and lossy.metadata["mrcz"]["save"].get("keepbits") is None
    rounded = np.array(lossy.data, copy=True)
    save(qtbot, w, tmp_path / "again.mrcz")
    np.testing.assert_array_equal(bits_of(codec.readMRC(tmp_path / "again.mrcz")[0]), bits_of(rounded))
    assert record(tmp_path / "again.mrcz")["keepbits"] == 8, "the record of the first rounding stays"
    (source_layer,) = [layer for layer in viewer.layers if layer.name == "tomogram"]
    viewer.layers.selection.active = source_layer
    w.precision.value = "bits"
    w.keepbits.value = 6
    save(qtbot, w, path)  # over the file the layer reads: it is lossy now, and says so
    qtbot.waitUntil(lambda: w.summary.value.endswith("\nlossy: 6 mantissa bits"), timeout=5000)
