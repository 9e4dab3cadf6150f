"""Segmentations as napari Labels layers: saved in the smallest MRC integer mode, reopened as labels."""

from __future__ import annotations

import os
import threading
import time

import mrcfile
import mrcz
import numpy as np
import psutil
import pytest

from napari_mrcz import codec
from napari_mrcz._writer import save_layer, write_labels_mrc, write_labels_mrcz
from napari_mrcz.codec.export import LABELS_KEY, LABELS_LABEL, UnsupportedImageError
from napari_mrcz.codec.narrowing import LabelValueError

from .conftest import PLUGIN, dock

SCALE = [2.0, 1.5, 1.25]


def notifications(text: str) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if text in str(n.message)]


def file_mode(path) -> int:
    """The MRC mode in the header (MRCZ adds 1000 x its compressor)."""
    with open(path, "rb") as f:
        f.seek(12)
        return int(np.frombuffer(f.read(4), "<i4")[0]) % 1000


def painted(viewer, shape=(6, 40, 50)):
    """A labels layer painted as a user does (a brush stroke) and by assignment."""
    layer = viewer.add_labels(np.zeros(shape, np.uint8), scale=SCALE, units="angstrom", name="seg")
    layer.metadata["mrcz"] = {"voltage": 300.0}
    layer.brush_size = 9
    layer.paint((2, 20, 25), 3)
    layer.paint((2, 21, 27), 3)
    layer.data[4, :5, :7] = 200
    layer.data[5, 30:, 40:] = 1
    assert (layer.data == 3).sum() > 50
    return layer


@pytest.mark.parametrize("suffix", [".mrcz", ".mrc"])
def test_a_painted_segmentation_reopens_as_labels(viewer, tmp_path, suffix):
    from napari.layers import Labels

    layer = painted(viewer)
    expected = np.array(layer.data)
    path = tmp_path / f"seg{suffix}"
    viewer.layers.selection = {layer}
    assert viewer.layers.save(str(path), selected=True) == [str(path)], "napari picks our labels writer"
    assert file_mode(path) == 1, "0..200: int16 (int8 stops at 127, MRC has no uint8 mode)"
    if suffix == ".mrc":  # plain MRC2014: a label says "labels" (no JSON: the layer has no other metadata)
        with mrcfile.open(path, permissive=True) as mrc:
            np.testing.assert_array_equal(mrc.data, expected)
            assert mrc.data.dtype == np.int16
            voxel = mrc.voxel_size
            assert (float(voxel.z), float(voxel.x)) == pytest.approx((2.0, 1.25))
            labels = [bytes(t).decode().strip() for t in mrc.header.label[:int(mrc.header.nlabl)]]
            assert LABELS_LABEL in labels and mrc.header.exttyp != b"json"
        assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))
    else:  # MRCZ: the JSON says so too
        theirs, meta = mrcz.readMRC(str(path))
        np.testing.assert_array_equal(theirs, expected)
        assert meta[LABELS_KEY] is True and meta["voltage"] == 300.0
        np.testing.assert_allclose(meta["pixelsize"], SCALE, rtol=1e-6)
    (again,) = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(again, Labels) and again.name.startswith("seg") and not again.multiscale
    np.testing.assert_array_equal(np.asarray(again.data), expected)
    np.testing.assert_allclose(again.scale, SCALE)
    assert [str(u) for u in again.units] == ["angstrom"] * 3
    assert again.metadata["mrcz"]["voltage"] == 300.0
    # saved again (as labels, by napari's choice of writer), it is the same file
    again.save(str(tmp_path / f"again{suffix}"), plugin=PLUGIN)
    (third,) = viewer.open(str(tmp_path / f"again{suffix}"), plugin=PLUGIN)
    assert isinstance(third, Labels)
    np.testing.assert_array_equal(np.asarray(third.data), expected)


def test_mrcz_labels_read_as_shown_say_to_load_them_before_painting(viewer, qtbot, tmp_path):
    from napari.layers import Labels

    layer = painted(viewer)
    path = tmp_path / "seg.mrcz"
    layer.save(str(path), plugin=PLUGIN)
    (again,) = viewer.open(str(path), plugin=PLUGIN)
    with pytest.raises(TypeError, match="load it into memory first"):
        again.paint((1, 10, 10), 5)
    w = dock(viewer)
    viewer.layers.selection.active = again
    assert w.layer == again and w.load_button.enabled and not w.labels_button.enabled
    again.mode = "paint"
    assert again.mode == "pan_zoom", "the painting tool is taken back"
    assert notifications("cannot be painted")[-1].endswith('"Load into memory" (MRCZ widget) first')
    w.load_button.native.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=20000)
    assert isinstance(again, Labels) and type(again.data) is np.ndarray and again.data.flags.writeable
    again.mode = "paint"
    assert again.mode == "paint"
    again.paint((1, 10, 10), 5)
    assert again.data[1, 10, 10] == 5
    worker = w.save_as(str(tmp_path / "painted.mrcz"))  # the widget's Save as MRCZ keeps it labels
    qtbot.waitUntil(lambda: not w.busy, timeout=20000)
    assert worker is not None
    (third,) = viewer.open(str(tmp_path / "painted.mrcz"), plugin=PLUGIN)
    assert isinstance(third, Labels)
    np.testing.assert_array_equal(np.asarray(third.data), again.data)


@pytest.mark.parametrize(("top", "mrcz_mode", "plain_mode"), [
    (127, 0, 0),  # int8
    (200, 1, 1),  # int16
    (40000, 6, 6),  # uint16
    (70000, 7, 2),  # MRCZ: int32 (python-mrcz's mode 7); plain MRC2014: float32, exact to 2**24
    (2**32 - 1, 8, None),  # MRCZ: uint32; plain MRC2014 has no mode for it
])
def test_the_smallest_mode_that_holds_every_label(tmp_path, top, mrcz_mode, plain_mode):
    data = np.zeros((3, 8, 9), np.int64)
    data[1, 2:4, 3:5], data[2, 0, 0] = top, 1
    attributes = {"scale": SCALE, "units": ["angstrom"] * 3, "metadata": {}}
    write_labels_mrcz(str(tmp_path / "l.mrcz"), data, attributes)
    assert file_mode(tmp_path / "l.mrcz") == mrcz_mode
    theirs, _ = mrcz.readMRC(str(tmp_path / "l.mrcz"))
    np.testing.assert_array_equal(theirs, data)
    if plain_mode is None:
        with pytest.raises(UnsupportedImageError, match=f"label {top} .*save as MRCZ"):
            write_labels_mrc(str(tmp_path / "l.mrc"), data, attributes)
        assert not (tmp_path / "l.mrc").exists()
        return
    write_labels_mrc(str(tmp_path / "l.mrc"), data, attributes)
    assert file_mode(tmp_path / "l.mrc") == plain_mode
    with mrcfile.open(tmp_path / "l.mrc", permissive=True) as mrc:
        np.testing.assert_array_equal(mrc.data, data)
    from napari_mrcz._reader import read_layers

    ((back, _, kind),) = read_layers(str(tmp_path / "l.mrc"))
    assert kind == "labels" and np.dtype(back.dtype).kind in "iu"  # float32 labels read as int32
    np.testing.assert_array_equal(np.asarray(back), data)


def test_a_label_no_mode_holds_is_refused_naming_the_file_and_the_label(viewer, tmp_path):
    data = np.zeros((2, 8, 8), np.uint64)
    data[1, 3, 3] = 2**40
    path = tmp_path / "huge_ids.mrcz"
    with pytest.raises(ValueError, match=rf"huge_ids\.mrcz: label {2**40} is held by no MRC mode"):
        save_layer(str(path), data, {}, compressed=True, layer_type="labels")
    assert issubclass(LabelValueError, ValueError)
    layer = viewer.add_labels(data, name="ids")
    # through napari the message reaches the user (napari takes a writer's ValueError for "not a writer")
    with pytest.raises(TypeError, match=rf"huge_ids\.mrcz: label {2**40}"):
        layer.save(str(path), plugin=PLUGIN)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_show_as_labels_shares_the_image_data(viewer, tmp_path, rng):
    from napari.layers import Labels

    stack = rng.integers(0, 5, size=(5, 32, 32)).astype(np.int16)
    path = tmp_path / "classes.mrcz"
    codec.writeMRC(stack, path, compressor="zstd", pixelsize=[3.0, 1.5, 1.5])
    (image,) = viewer.open(str(path), plugin=PLUGIN)
    image.translate = [0.0, 4.0, 2.0]
    w = dock(viewer)
    viewer.layers.selection.active = image
    assert w.labels_button.enabled
    w.labels_button.native.click()
    labels = viewer.layers["classes labels"]
    assert isinstance(labels, Labels) and labels.data is image.data, "the same lazy stack, no copy"
    assert list(labels.scale) == list(image.scale) and labels.units == image.units
    assert list(labels.translate) == [0.0, 4.0, 2.0]
    assert labels.metadata["mrcz"] is image.metadata["mrcz"]
    np.testing.assert_array_equal(np.asarray(labels.data), stack)
    assert viewer.layers.selection.active == labels
    assert "Load into memory" in notifications("shares classes's data")[-1]
    labels.mode = "fill"
    assert labels.mode == "pan_zoom"

    # plain MRC, mapped copy-on-write: shared and paintable at once (the image shows the strokes)
    codec.writeMRC(stack, tmp_path / "classes.mrc", pixelsize=[3.0, 1.5, 1.5])
    (mapped,) = viewer.open(str(tmp_path / "classes.mrc"), plugin=PLUGIN)
    viewer.layers.selection.active = mapped
    shared = w.show_as_labels()
    assert shared.data is mapped.data
    shared.mode = "paint"
    assert shared.mode == "paint"
    shared.paint((2, 16, 16), 4)
    assert mapped.data[2, 16, 16] == 4
    np.testing.assert_array_equal(codec.readMRC(str(tmp_path / "classes.mrc"))[0], stack)  # never the file

    # multiscale: the full-size level (the coarse ones are means, not labels)
    levels = [stack.astype(np.uint16), stack[:, ::2, ::2].astype(np.uint16)]
    pyramid = viewer.add_image(levels, multiscale=True, name="pyramid")
    viewer.layers.selection.active = pyramid
    assert w.show_as_labels().data is pyramid.data[0]

    # a float mask of 0 and 1: labels of its values; other floats are refused
    mask = viewer.add_image((stack > 2).astype(np.float32), name="mask")
    viewer.layers.selection.active = mask
    from_mask = w.show_as_labels()
    assert from_mask.data.dtype == np.uint8
    np.testing.assert_array_equal(from_mask.data, stack > 2)
    viewer.layers.selection.active = viewer.add_image(stack * 0.5, name="halves")
    assert w.labels_button.enabled and w.show_as_labels() is None
    assert "values other than 0 and 1" in notifications("halves")[-1]
    viewer.layers.selection.active = viewer.add_image(np.zeros((4, 4, 3), np.uint8), rgb=True, name="rgb")
    assert not w.labels_button.enabled and w.show_as_labels() is None


class PeakRSS:
    """The peak RSS of this process while on, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.peak, self._on = 0, False

    def _run(self) -> None:
        while self._on:
            self.peak = max(self.peak, self.me.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self.me.memory_info().rss
        self._on = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._on = False
        self._thread.join()


def sphere_mask(shape: tuple[int, int, int], spheres: list[tuple[int, int, int, int]]):
    """A lazy (dask) uint8 mask, 1 inside the spheres (z, y, x, radius): each frame made when read."""
    import dask.array as da

    def frame(block_info=None):
        z = block_info[None]["chunk-location"][0]
        out = np.zeros((1, *shape[1:]), np.uint8)
        for cz, cy, cx, r in spheres:
            if abs(z - cz) <= r:
                rr = int(np.sqrt(r * r - (z - cz) ** 2))
                yy, xx = np.ogrid[-rr:rr + 1, -rr:rr + 1]
                disk = (yy * yy + xx * xx <= rr * rr)
                out[0, cy - rr:cy + rr + 1, cx - rr:cx + rr + 1] |= disk.astype(np.uint8)
        return out

    return da.map_blocks(frame, chunks=((1,) * shape[0], (shape[1],), (shape[2],)), dtype=np.uint8)


def test_a_1_gb_mask_saves_frame_by_frame_and_compresses_well(viewer, tmp_path):
    shape = (256, 2048, 2048)  # 1 GiB of uint8
    spheres = [(60, 500, 600, 50), (128, 1024, 1024, 120), (200, 1500, 300, 40)]
    layer = viewer.add_labels(sphere_mask(shape, spheres), scale=[4.0, 4.0, 4.0], units="angstrom",
                              name="mask")
    path = tmp_path / "mask.mrcz"
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        import napari

        assert napari.save_layers(str(path), [layer], plugin=PLUGIN) == [str(path)]
    seconds = time.perf_counter() - t0
    grown = rss.peak - rss.before
    nbytes = int(np.prod(shape))
    ratio = nbytes / path.stat().st_size
    print(f"1 GiB mask: saved in {seconds:.1f} s, RSS +{grown >> 20} MB, "
          f"{path.stat().st_size} bytes on disk, ratio {ratio:.0f}")
    assert grown < 200 * 2**20, f"RSS grew {grown >> 20} MB saving a {nbytes >> 20} MB mask"
    assert ratio > 50
    assert file_mode(path) == 0, "0/1: int8"
    frame, meta = codec.readMRC(str(path), idx=128)
    np.testing.assert_array_equal(frame, np.asarray(layer.data[128]))
    assert meta[LABELS_KEY] is True and frame.sum() > 3 * 120 * 120
