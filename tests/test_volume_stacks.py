"""Stacks of volumes (4D layers): saved as python-mrcz's list of multi-slice frames, reopened as one 4D layer.

A 4D napari layer is written as a list of 3D frames (``slices`` sections
each, in MZ); python-mrcz's own ``slices`` files are the same layout. Both
must open as what was saved: one lazy ``(volumes, slices, ny, nx)`` layer,
labelled ("volume", "z", "y", "x"), with the file's spacing; saving it again
gives the same file.
"""

from __future__ import annotations

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz._reader import layer_data
from napari_mrcz.codec.source import open_image

from .conftest import data_path, make_stack

PLUGIN = "napari-mrcz"
LABELS = ("volume", "z", "y", "x")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def layout(path) -> dict:
    """The header fields that say how the file is laid out, and its pixel size."""
    with codec.MRCStack(path) as stack:
        h = stack.header.fields()
    return {k: h[k] for k in ("nx", "ny", "nz", "mode", "mx", "my", "mz", "ispg", "cella", "mapc", "mapr",
                              "maps")}


@pytest.mark.parametrize("suffix", [".mrcz", ".mrc"])
def test_a_4d_layer_reopens_as_one_lazy_4d_layer_and_saves_the_same_file(viewer, tmp_path, rng, suffix):
    data = make_stack(rng, "float32", shape=(4, 5, 64, 48))
    layer = viewer.add_image(data, scale=(1.0, 3.0, 2.0, 1.5))
    first = tmp_path / f"volumes{suffix}"
    layer.save(str(first), plugin=PLUGIN)

    frames, meta = mrcz.readMRC(str(first))  # python-mrcz: a list of 4 volumes of 5 sections
    assert isinstance(frames, list) and [f.shape for f in frames] == [(5, 64, 48)] * 4
    np.testing.assert_array_equal(np.stack(frames), data)
    if suffix == ".mrc":
        with mrcfile.open(str(first)) as mrc:  # MRC2014's volume stack
            assert (int(mrc.header.ispg), int(mrc.header.mz)) == (401, 5)
            assert mrc.voxel_size.tolist() == (1.5, 2.0, 3.0)

    viewer.layers.remove(layer)
    layers = viewer.open(str(first), plugin=PLUGIN)
    assert len(layers) == 1, "one layer, not one per section of a volume"
    (again,) = layers
    assert again.data.shape == (4, 5, 64, 48)
    assert tuple(again.axis_labels) == LABELS
    np.testing.assert_allclose(again.scale, (1.0, 3.0, 2.0, 1.5), rtol=1e-6)
    assert [str(u) for u in again.units][1:] == ["angstrom"] * 3
    assert not isinstance(again.data, np.ndarray), "lazy: sections are decoded when shown"
    viewer.dims.set_point(0, 2)  # volume 2
    viewer.dims.set_point(1, 3 * 3.0)  # its section 3, 9 Å in
    shown = np.asarray(again._slice.image.raw)
    np.testing.assert_array_equal(shown, data[2, 3])
    if suffix == ".mrcz":
        assert again.data.cache.misses <= 8, "a few of the 20 sections decoded, not the whole stack"
    np.testing.assert_array_equal(np.asarray(again.data), data)

    second = tmp_path / f"again{suffix}"
    again.save(str(second), plugin=PLUGIN)
    assert layout(second) == layout(first)
    np.testing.assert_array_equal(np.stack(mrcz.readMRC(str(second))[0]), data)


def test_python_mrczs_list_of_two_slice_frames_opens_as_a_stack_of_volumes(viewer, tmp_path):
    path = data_path("mrc", "mrcz-0.6.0", "list_slices2_zstd.mrcz")
    theirs, their_meta = mrcz.readMRC(str(path))  # 3 frames of (2, 32, 24)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.data.shape == (3, 2, 32, 24)
    assert tuple(layer.axis_labels) == LABELS
    np.testing.assert_allclose(layer.scale, [1.0, *their_meta["pixelsize"]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer.data), np.stack(theirs))
    np.testing.assert_array_equal(layer.data[2, 1], theirs[2][1])

    out = tmp_path / "copy.mrcz"
    layer.save(str(out), plugin=PLUGIN)
    frames, meta = mrcz.readMRC(str(out))
    assert isinstance(frames, list) and len(frames) == 3
    np.testing.assert_array_equal(np.stack(frames), np.stack(theirs))
    assert layout(out)["mz"] == 2
    np.testing.assert_allclose(meta["pixelsize"], their_meta["pixelsize"], rtol=1e-6)


def test_a_complex_stack_of_volumes_opens_as_amplitude_and_phase_4d_layers(tmp_path, rng):
    data = make_stack(rng, "complex64", shape=(3, 2, 8, 10))
    path = tmp_path / "complex.mrc"
    codec.writeMRC(list(data), path, pixelsize=[2.0, 1.0, 1.0])
    amplitude, phase = layer_data(open_image(path))
    for (arr, attrs, _), want in ((amplitude, np.abs(data)), (phase, np.angle(data))):
        assert arr.shape == (3, 2, 8, 10) and tuple(attrs["axis_labels"]) == LABELS
        np.testing.assert_allclose(np.asarray(arr), want, rtol=1e-6)
        np.testing.assert_allclose(arr[1, 0], want[1, 0], rtol=1e-6)
