"""Layers saved as OME-Zarr in a napari window, and what napari-ome-zarr and ome-zarr-models make of them."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05

from napari_mrcz import codec
from napari_mrcz.codec.export import Sections
from napari_mrcz.codec.lazy import LazyStack
from napari_mrcz.codec.ome_zarr import ATTRS_KEY
from napari_mrcz.codec.precision import round_mantissa

from .conftest import PLUGIN, data_path

OME_ZARR = "napari-ome-zarr"
EMD = ("mrc", "emdb", "EMD-3197.map")


def attributes_of(path) -> dict:
    """The group's attributes as a reader finds them in its JSON (v3 ``zarr.json``, else v2 ``.zattrs``)."""
    if (path / "zarr.json").is_file():
        return json.loads((path / "zarr.json").read_text())["attributes"]
    return json.loads((path / ".zattrs").read_text())


def multiscales(attrs: dict) -> dict:
    return (attrs["ome"] if "ome" in attrs else attrs)["multiscales"][0]


def level_scales(attrs: dict) -> list[list[float]]:
    return [next(t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale")
            for d in multiscales(attrs)["datasets"]]


def movie_frames(n: int, shape=(256, 256)) -> Sections:
    """``n`` float32 frames of smooth signal and noise, made one at a time (frame ``i``: always the same)."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    base = 100 + 20 * np.sin(x / 17.0) * np.cos(y / 23.0)

    def frame(i: int) -> np.ndarray:
        return base + np.random.default_rng(i).normal(0, 3, shape).astype(np.float32)

    return Sections(frame, n, shape, np.float32)


def counts_frames(n: int, shape=(256, 256)) -> Sections:
    """``n`` frames of electron counts (mostly 0 and 1) as float32: what a movie holds; it compresses well."""
    def frame(i: int) -> np.ndarray:
        return np.random.default_rng(i).poisson(0.3, shape).astype(np.float32)

    return Sections(frame, n, shape, np.float32)


def only_the_output(folder, name: str) -> None:
    """The save left nothing beside its output (no hidden temporary folder)."""
    assert sorted(p.name for p in folder.iterdir()) == [name]


def shown_level0(layer) -> np.ndarray:
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data)


# --------------------------------------------------------------------------- (a) files opened with our plugin


def test_an_emdb_map_saved_as_ome_zarr_is_valid_ngff_05_with_the_same_voxels(viewer, tmp_path):
    source = data_path(*EMD)
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    out = tmp_path / "emd_3197.ome.zarr"
    assert layer.save(str(out), plugin=PLUGIN) == [str(out)]
    only_the_output(tmp_path, out.name)

    group = zarr.open_group(str(out), mode="r")
    image = v05.Image.from_zarr(group)  # raises unless it is a valid NGFF 0.5 image
    assert [a.name for a in image.ome_attributes.multiscales[0].axes] == ["z", "y", "x"]
    assert [a.unit for a in image.ome_attributes.multiscales[0].axes] == ["angstrom"] * 3
    want, meta = codec.readMRC(source)
    level0 = group["0"][...]
    assert level0.dtype == want.dtype
    np.testing.assert_array_equal(level0, want)
    attrs = attributes_of(out)
    np.testing.assert_allclose(level_scales(attrs)[0], meta["pixelsize"], rtol=1e-6)
    np.testing.assert_allclose(level_scales(attrs)[0], [11.4, 11.4, 11.4], rtol=1e-6)
    assert multiscales(attrs)["name"] == "EMD-3197"
    record = attrs[ATTRS_KEY]
    assert record["header"]["nxstart"] == -2 and record["source_format"] == "MRC"
    assert record["labels"] is False and record["stack"] is False
    # the map's first voxel is 2 voxels before the origin along x: the NGFF translation says where it is
    level0_transforms = multiscales(attrs)["datasets"][0]["coordinateTransformations"]
    translation = next(t["translation"] for t in level0_transforms if t["type"] == "translation")
    np.testing.assert_allclose(translation, [0.0, 0.0, -2 * 11.4], rtol=1e-6)


def test_a_lazy_mrcz_movie_saves_as_ome_zarr_with_its_pixel_size_and_microscope(viewer, tmp_path):
    source = tmp_path / "movie.mrcz"
    codec.writeMRC(movie_frames(40).frames(), source, pixelsize=[2.5, 2.5, 2.5], voltage=300.0, C3=2.7,
                   compressor="zstd", meta={"dose_per_frame": 1.2})
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    assert isinstance(layer.data, LazyStack) and layer.axis_labels[0] == "frame"
    out_folder = tmp_path / "out"
    out = out_folder / "movie.ome.zarr"
    viewer.layers.selection = {layer}
    assert viewer.layers.save(str(out), selected=True) == [str(out)], "napari picks our OME-Zarr writer"
    only_the_output(out_folder, out.name)

    group = zarr.open_group(str(out), mode="r")
    image = v05.Image.from_zarr(group)
    axes = image.ome_attributes.multiscales[0].axes
    assert [(a.name, a.type) for a in axes] == [("t", "time"), ("y", "space"), ("x", "space")]
    frames = movie_frames(40)
    level0 = group["0"]
    assert level0.shape == (40, 256, 256) and level0.dtype == np.float32
    for i in range(40):
        np.testing.assert_array_equal(level0[i], frames[i])
    attrs = attributes_of(out)
    np.testing.assert_allclose(level_scales(attrs)[0][1:], [2.5, 2.5], rtol=1e-6)
    record = attrs[ATTRS_KEY]
    assert (record["voltage"], record["C3"], record["stack"]) == (300.0, 2.7, True)
    assert record["meta"]["dose_per_frame"] == 1.2
    assert record["source_format"] == "MRCZ" and "precision" not in record, "lossless: nothing rounded"
    # a movie's chunks are single frames (a viewer stepping through frames reads one)
    assert group["0"].chunks == (1, 256, 256)


def test_ngff_04_and_the_codec_come_from_the_layer_metadata(viewer, tmp_path):
    volume = movie_frames(24, (64, 80))
    source = tmp_path / "tomogram.mrcz"
    codec.writeMRC(volume, source, pixelsize=[4.0, 2.0, 2.0], compressor="zstd")  # an array: a volume
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    assert layer.metadata["mrcz"]["save"] == {"compressor": "zstd", "clevel": 1}  # MRCZ's, not Zarr's
    layer.metadata["mrcz"]["save"]["ome_zarr"] = {"ngff": "0.4"}
    out = tmp_path / "portal" / "tomogram.zarr"
    layer.save(str(out), plugin=PLUGIN)
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 2
    image = v04.Image.from_zarr(group)  # the CryoET Data Portal's NGFF 0.4 layout, valid
    assert len(image.ome_attributes.multiscales[0].datasets) == 3
    np.testing.assert_array_equal(group["0"][...], np.stack([volume[i] for i in range(24)]))
    attrs = attributes_of(out)
    np.testing.assert_allclose(level_scales(attrs), [[4.0, 2.0, 2.0], [8.0, 4.0, 4.0], [16.0, 8.0, 8.0]])
    compressor = json.loads((out / "0" / ".zarray").read_text())["compressor"]
    assert (compressor["cname"], compressor["clevel"]) == ("lz4", 5), "the portal's codec, not MRCZ's"
    # NGFF 0.5 with the codec the metadata names
    layer.metadata["mrcz"]["save"]["ome_zarr"] = {"compressor": "lz4", "clevel": 7}
    out5 = tmp_path / "tomogram.ome.zarr"
    layer.save(str(out5), plugin=PLUGIN)
    codecs = json.loads((out5 / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    blosc = next(c for c in codecs if c["name"] == "blosc")["configuration"]
    assert (blosc["cname"], blosc["clevel"]) == ("lz4", 7)
    # the MRCZ writer is still the one for .mrcz, with the MRCZ settings
    layer.save(str(tmp_path / "copy.mrcz"), plugin=PLUGIN)
    image, meta = codec.readMRC(tmp_path / "copy.mrcz")
    np.testing.assert_array_equal(image, group["0"][...])
    assert meta["compressor"] == "zstd"


def test_the_layer_precision_rounds_level_0_and_is_recorded(viewer, tmp_path):
    frames = movie_frames(6, (48, 40))
    data = np.stack([frames[i] for i in range(6)])
    layer = viewer.add_image(data.copy(), scale=[3.0, 1.5, 1.5], units="angstrom", name="rounded")
    layer.metadata["mrcz"] = {"save": {"keepbits": 10}}
    out = tmp_path / "rounded.ome.zarr"
    layer.save(str(out), plugin=PLUGIN)
    group = zarr.open_group(str(out), mode="r")
    stored = group["0"][...]
    assert not np.array_equal(stored, data), "lossy, as asked"
    assert not (stored.view(np.uint32) & np.uint32((1 << 13) - 1)).any(), "10 of 23 mantissa bits kept"
    assert np.max(np.abs(stored - data) / np.abs(data)) <= 2.0 ** -11  # half a unit of the 10th bit
    want = data.copy()
    round_mantissa(want, 10)
    np.testing.assert_array_equal(stored, want)  # what MRCZ's keepbits=10 stores
    precision = attributes_of(out)[ATTRS_KEY]["precision"]
    assert precision["lossy"] is True and precision["keepbits"] == 10
    np.testing.assert_allclose(level_scales(attributes_of(out))[0], [3.0, 1.5, 1.5])
    np.testing.assert_array_equal(layer.data, data)  # the layer itself is not rounded


def test_rgb_and_complex_layers_are_refused_with_a_message(viewer, tmp_path):
    rgb = viewer.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True, name="rgb")
    with pytest.raises(TypeError, match=r"rgb\.ome\.zarr: RGB images are not written to OME-Zarr"):
        rgb.save(str(tmp_path / "rgb.ome.zarr"), plugin=PLUGIN)
    from napari_mrcz._writer import write_ome_zarr

    with pytest.raises(TypeError, match=r"c\.ome\.zarr: OME-Zarr output takes real numbers, not complex64"):
        write_ome_zarr(str(tmp_path / "c.ome.zarr"), np.zeros((4, 8, 8), np.complex64), {})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- (b) napari-ome-zarr opens it


def test_napari_ome_zarr_opens_what_we_write_with_its_scale_and_data(viewer, tmp_path):
    source = data_path(*EMD)
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    out = tmp_path / "emd.ome.zarr"
    layer.save(str(out), plugin=PLUGIN)
    (theirs,) = viewer.open(str(out), plugin=OME_ZARR)
    assert type(theirs).__name__ == "Image"
    np.testing.assert_array_equal(shown_level0(theirs), codec.readMRC(source)[0])
    np.testing.assert_allclose(theirs.scale, layer.scale, rtol=1e-6)
    assert [str(u) for u in theirs.units] == ["angstrom"] * 3 == [str(u) for u in layer.units]
    # Both show the map at the same place: napari-ome-zarr 0.10 applies only dataset 0's first transform
    # (the scale), not the NGFF translation our origin gives, and our reader ignores the origin too.
    corner = np.array(layer.data.shape) - 1
    np.testing.assert_allclose(theirs.data_to_world(corner), layer.data_to_world(corner), rtol=1e-6)

    movie = tmp_path / "movie.mrcz"
    codec.writeMRC(movie_frames(40).frames(), movie, pixelsize=[2.5, 2.5, 2.5], compressor="zstd")
    (lazy,) = viewer.open(str(movie), plugin=PLUGIN)
    out = tmp_path / "movie.ome.zarr"
    lazy.save(str(out), plugin=PLUGIN)
    (theirs,) = viewer.open(str(out), plugin=OME_ZARR)
    np.testing.assert_array_equal(shown_level0(theirs), np.asarray(lazy.data))
    np.testing.assert_allclose(theirs.scale[1:], [2.5, 2.5], rtol=1e-6)
    # frames are no length: NGFF axis "t" without a unit, which napari-ome-zarr shows in pixels
    assert [str(u) for u in theirs.units] == ["pixel", "angstrom", "angstrom"]
    assert theirs.axis_labels == ("t", "y", "x")


# --------------------------------------------------------------------------- (c) a painted segmentation


def block_max(labels: np.ndarray, f: int) -> np.ndarray:
    """Maxima of f x f x f blocks (smaller last blocks hold what they have), by reduceat along each axis."""
    out = labels
    for axis in range(3):
        out = np.maximum.reduceat(out, np.arange(0, labels.shape[axis], f), axis=axis)
    return out


def painted(viewer, shape=(13, 70, 90)):
    """A labels layer painted as a user does (brush strokes) and by assignment: several ids, up to 200."""
    layer = viewer.add_labels(np.zeros(shape, np.int32), scale=[4.0, 2.0, 2.0], units="angstrom", name="seg")
    layer.brush_size = 9
    layer.paint((3, 20, 25), 3)
    layer.paint((3, 22, 29), 3)
    layer.paint((8, 50, 60), 7)
    layer.data[10:, :5, :7] = 200
    layer.data[12, 69, 89] = 42  # alone in the last (smaller) blocks of every level
    assert (layer.data == 3).sum() > 50 and (layer.data == 7).sum() > 50
    return layer


def test_a_painted_segmentation_saves_as_ome_zarr_labels_with_block_max_levels(viewer, tmp_path):
    layer = painted(viewer)
    layer.metadata["mrcz"] = {"voltage": 300.0, "save": {"ome_zarr": {"levels": 3}, "keepbits": 4}}
    expected = np.array(layer.data)
    folder = tmp_path / "segmentations" / "tomo"  # napari-ome-zarr opens the group 2 folders up: see below
    out = folder / "seg.ome.zarr"
    viewer.layers.selection = {layer}
    assert viewer.layers.save(str(out), selected=True) == [str(out)], "napari picks our labels writer"
    only_the_output(folder, out.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segmentations"]

    group = zarr.open_group(str(out), mode="r")
    v05.ImageLabel.from_zarr(group)  # a valid NGFF 0.5 image-label
    attrs = attributes_of(out)
    assert attrs["ome"]["image-label"] == {"version": "0.5"} and multiscales(attrs)["type"] == "max"
    assert group["0"].dtype == np.uint8, "ids 0 to 200: uint8, the smallest type"
    np.testing.assert_array_equal(group["0"][...], expected)  # never rounded, keepbits or not
    for k in (1, 2):
        level = group[str(k)][...]
        np.testing.assert_array_equal(level, block_max(expected, 2 ** k))
        assert set(np.unique(level)) == {0, 3, 7, 42, 200}, "every id survives, none is made up"
    np.testing.assert_allclose(level_scales(attrs), [[4.0, 2.0, 2.0], [8.0, 4.0, 4.0], [16.0, 8.0, 8.0]])
    record = attrs[ATTRS_KEY]
    assert record["labels"] is True and record["voltage"] == 300.0 and "precision" not in record

    before = set(tmp_path.rglob("*"))
    (theirs,) = viewer.open(str(out), plugin=OME_ZARR)
    assert type(theirs).__name__ == "Labels"
    np.testing.assert_array_equal(shown_level0(theirs), expected)
    if theirs.multiscale:
        for k in (1, 2):
            np.testing.assert_array_equal(np.asarray(theirs.data[k]), block_max(expected, 2 ** k))
    np.testing.assert_allclose(theirs.scale, layer.scale)
    assert [str(u) for u in theirs.units] == ["angstrom"] * 3
    # napari-ome-zarr 0.10 opens a standalone label image's grandparent as a Zarr group with mode "a":
    # it writes a zarr.json there (here: in tmp_path/segmentations). Nothing else changes.
    stray = set(tmp_path.rglob("*")) - before
    assert stray <= {tmp_path / "segmentations" / "zarr.json"}


@pytest.mark.parametrize(("ids", "dtype"), [((1, 255), "uint8"), ((-3, 100), "int8"), ((0, 256), "uint16"),
                                            ((-200, 5), "int16"), ((0, 70000), "uint32"),
                                            ((0, 2**40), "uint64")])
def test_labels_get_the_smallest_integer_type(viewer, tmp_path, ids, dtype):
    data = np.zeros((3, 10, 12), np.int64)
    data[1, 2:5, 3:6], data[2, 9, 11] = ids
    layer = viewer.add_labels(data, name="ids")
    out = tmp_path / "ids.zarr"
    layer.save(str(out), plugin=PLUGIN)
    level0 = zarr.open_group(str(out), mode="r")["0"]
    assert level0.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(level0[...], data)


# --------------------------------------------------------------------------- (d) a large lazy movie


def test_a_lazy_256_mb_movie_saves_frame_by_frame(viewer, tmp_path):
    n = 1024  # 1024 frames of 256 x 256 float32: 256 MB decoded
    source = tmp_path / "counts.mrcz"
    codec.writeMRC(counts_frames(n).frames(), source, pixelsize=[1.0, 0.8, 0.8], compressor="zstd")
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    lazy = layer.data[0] if layer.multiscale else layer.data
    assert isinstance(lazy, LazyStack) and lazy.nbytes == 256 << 20
    decoded = lazy.cache.misses + lazy.cache.hits
    out = tmp_path / "counts.ome.zarr"
    tracemalloc.start()
    try:
        layer.save(str(out), plugin=PLUGIN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 2**20:.1f} MB for {lazy.nbytes / 2**20:.0f} MB")
    assert peak < lazy.nbytes / 4, f"{peak / 2**20:.0f} MB at once: the movie was not read frame by frame"
    assert lazy.cache.misses + lazy.cache.hits == decoded, "read from the file, not the viewer's cache"
    frames = counts_frames(n)
    level0 = zarr.open_group(str(out), mode="r")["0"]
    assert level0.shape == (n, 256, 256)
    for i in range(0, n, 64):  # a shard of 64 frames at a time
        np.testing.assert_array_equal(level0[i:i + 64], np.stack([frames[j] for j in range(i, i + 64)]))


class Counted:
    """A lazy (n, ny, nx) array made on demand that records what is asked of it (and is never read whole)."""

    def __init__(self, sections: Sections) -> None:
        self.sections, self.shape, self.dtype, self.ndim = sections, sections.shape, sections.dtype, 3
        self.keys: list = []

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        self.keys.append(key)
        if isinstance(key, (int, np.integer)):
            return self.sections[int(key)]
        return np.stack([self.sections[i] for i in range(self.shape[0])])[key]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("read whole")


def test_lazy_image_and_labels_layers_are_read_one_section_at_a_time(viewer, tmp_path):
    image = Counted(movie_frames(20, (64, 48)))
    layer = viewer.add_image(image, contrast_limits=[80, 120], scale=[3.0, 1.5, 1.5], units="nm", name="lazy")
    image.keys.clear()  # what napari read to show it
    layer.save(str(tmp_path / "lazy.ome.zarr"), plugin=PLUGIN)
    assert image.keys == list(range(20)), "each section once, in order"
    group = zarr.open_group(str(tmp_path / "lazy.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][...], np.stack([image.sections[i] for i in range(20)]))
    np.testing.assert_allclose(level_scales(attributes_of(tmp_path / "lazy.ome.zarr"))[0], [30.0, 15.0, 15.0])

    counts = Sections(lambda i: np.full((16, 16), i % 5, np.int32), 12, (16, 16), np.int32)
    labels = Counted(counts)
    seg = viewer.add_labels(labels, name="lazy labels")
    labels.keys.clear()
    seg.save(str(tmp_path / "seg.ome.zarr"), plugin=PLUGIN)
    assert labels.keys == list(range(12)) * 2, "one pass for the type, one to write"
    level0 = zarr.open_group(str(tmp_path / "seg.ome.zarr"), mode="r")["0"]
    assert level0.dtype == np.uint8
    np.testing.assert_array_equal(level0[...], np.stack([counts[i] for i in range(12)]))


def test_a_2d_float64_image_keeps_its_type_and_opens_in_napari_ome_zarr(viewer, tmp_path, rng):
    data = rng.normal(size=(300, 200))  # MRC would store float32; Zarr keeps every digit
    layer = viewer.add_image(data, scale=[0.5, 0.25], units="nm", name="micrograph")
    out = tmp_path / "micrograph.ome.zarr"
    layer.save(str(out), plugin=PLUGIN)
    group = zarr.open_group(str(out), mode="r")
    v05.Image.from_zarr(group)
    assert group["0"].dtype == np.float64
    np.testing.assert_array_equal(group["0"][...], data)
    np.testing.assert_allclose(level_scales(attributes_of(out))[0], [5.0, 2.5])  # nm as Å
    (theirs,) = viewer.open(str(out), plugin=OME_ZARR)
    np.testing.assert_array_equal(shown_level0(theirs), data)
    np.testing.assert_allclose(theirs.scale, [5.0, 2.5])
    assert [str(u) for u in theirs.units] == ["angstrom", "angstrom"]
