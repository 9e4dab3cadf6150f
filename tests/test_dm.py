"""DigitalMicrograph DM3/DM4: the shared files, every data type, calibrations, damage, laziness."""

from __future__ import annotations

import hashlib
import time

import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec import MRCFileError
from napari_mrcz.codec.dm import DMFile

from .conftest import data_path, expected, make_stack, open_handles
from .dm_writer import Hole, String, image_entry, write_dm

DM_EXPECTED = expected("dm")


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(DM_EXPECTED))
def test_shared_dm_files_match_rosettasciio(name):
    want = DM_EXPECTED[name]
    with DMFile(data_path("dm", name)) as dm:
        image = dm.main_image
        data = dm.read(image)
        assert list(data.shape) == want["shape"]
        assert data.dtype.name == want["dtype"]
        assert sha(data) == want["sha256_c_order"]
        assert len([im for im in dm.images if im.is_thumbnail]) == 1
        for axis, ax_want in zip(image.axes, want["axes"], strict=True):
            assert axis.scale == pytest.approx(ax_want["scale"], rel=1e-6)
            assert axis.offset == pytest.approx(ax_want["offset"], rel=1e-6, abs=1e-9)
            assert axis.units == ax_want["units"]


# python-mrcz 0.6.0 itself fails on the 1D, complex, int8 and uint8 files, and reads RGBA as
# packed int32 words: these are the shared DM4 files it reads (and so do we, as it does).
PYTHON_MRCZ_READS = [
    "ncempy_dmTest_3D_int16_64-65-66.dm4", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4",
    "rsciio_2D_MonarcCL_mono-image.dm4", "rsciio_2D_test-1.dm4", "rsciio_2D_test-10.dm4",
    "rsciio_2D_test-12.dm4", "rsciio_2D_test-2.dm4", "rsciio_2D_test-7.dm4", "rsciio_2D_test-8.dm4",
    "rsciio_3D_test-1.dm4", "rsciio_3D_test-2.dm4"]


def test_python_mrcz_reads_exactly_these_shared_dm4_files():
    """PYTHON_MRCZ_READS is every shared DM4 file python-mrcz 0.6.0 opens, so none is left unchecked."""
    reads = []
    for path in sorted(data_path("dm").glob("*.dm4")):
        try:
            mrcz.readDM4(str(path))
        except Exception:  # noqa: BLE001 - python-mrcz fails in many ways (IndexError, TypeError ...)
            continue
        reads.append(path.name)
    assert reads == sorted(PYTHON_MRCZ_READS)


@pytest.mark.parametrize("name", PYTHON_MRCZ_READS)
def test_read_dm4_gives_python_mrcz_every_image_rgb_included(name):
    """Every image, thumbnails and RGB(A) ones too: python-mrcz's shape, dtype and bytes."""
    path = str(data_path("dm", name))
    ours, theirs = codec.readDM4(path), mrcz.readDM4(path)
    assert len(ours.im) == len(theirs.im)
    for mine, ref in zip(ours.im, theirs.im, strict=True):
        np.testing.assert_array_equal(mine.shape, ref.shape)
        assert mine.imageData.shape == ref.imageData.shape
        assert mine.imageData.dtype == ref.imageData.dtype
        np.testing.assert_array_equal(mine.imageData, ref.imageData, strict=True)
        assert np.ascontiguousarray(mine.imageData).tobytes() == np.ascontiguousarray(ref.imageData).tobytes()


def test_rgb_stays_uint8_channels_in_dmfile_and_the_napari_reader():
    """Only readDM4 packs RGB(A) as python-mrcz does; DMFile and napari keep R, G, B(, A) bytes."""
    from napari_mrcz._reader import read_layers

    path = data_path("dm", "rsciio_2D_test-8.dm4")
    with DMFile(path) as dm:
        image = dm.main_image
        assert image.is_rgb and image.shape == (2, 2, 4) and image.dtype == np.uint8
        channels = dm.read(image)
    assert channels.dtype == np.uint8 and channels.shape == (2, 2, 4)
    assert channels[0, 0].tolist() == [1, 1, 1, 0] and channels[1, 1].tolist() == [4, 4, 4, 0]
    # the same pixels, as readDM4's packed words (x reversed): B, G, R, A bytes of each word
    packed = np.ascontiguousarray(codec.readDM4(str(path)).im[1].imageData[:, ::-1])
    np.testing.assert_array_equal(packed.view(np.uint8).reshape(2, 2, 4)[..., [2, 1, 0, 3]], channels)
    ((data, meta, kind),) = read_layers(str(path))
    data = np.asarray(data)
    assert kind == "image" and meta["rgb"] is True
    assert data.dtype == np.uint8 and data.shape[:2] == (2, 2) and data.shape[-1] in (3, 4)
    np.testing.assert_array_equal(data, channels[..., :data.shape[-1]])
    with DMFile(data_path("dm", "rsciio_2D_MonarcCL_mono-image.dm4")) as dm:
        thumb = dm.read(dm.images[0])
    assert dm.images[0].is_thumbnail and thumb.dtype == np.uint8 and thumb.shape == (384, 384, 4)


@pytest.mark.parametrize("name", PYTHON_MRCZ_READS)
def test_read_dm4_matches_python_mrcz(name):
    path = str(data_path("dm", name))
    ours, theirs = codec.readDM4(path), mrcz.readDM4(path)
    assert len(ours.im) == len(theirs.im)
    mine, ref = ours.im[-1], theirs.im[-1]
    np.testing.assert_array_equal(mine.shape, ref.shape)
    # the same orientation: python-mrcz's [:, ::-1] flips x of a 2D image, y of a 3D stack
    np.testing.assert_array_equal(mine.imageData, ref.imageData.reshape(mine.imageData.shape))
    for key, value in ref.imageInfo.items():
        got = mine.imageInfo[key]
        if isinstance(value, (float, np.floating)):
            assert got == pytest.approx(float(value), rel=1e-6), key
        elif str(value).replace("\x00", "").isprintable():
            # python-mrcz leaves the UTF-16 zero bytes in units ('n\x00m\x00')
            assert str(got) == str(value).replace("\x00", ""), key
        else:  # and reads an empty units array as its type code ('\x14')
            assert got == "", key


def test_read_dm4_flips_the_second_axis_as_a_view_and_closes_the_file():
    path = data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4")
    before = open_handles()
    dm = codec.readDM4(path)
    assert open_handles() == before
    with DMFile(path) as plain:
        raw = plain.read()
    image = dm.im[1].imageData
    np.testing.assert_array_equal(image, raw[:, ::-1, :])
    assert image.base is not None and not image.flags.owndata
    assert dm.im[1].imageInfo["DimZScale"] == pytest.approx(4.0)
    future = codec.asyncReadDM4(path)
    assert len(future.result(timeout=60).im) == 2


LAYOUTS = {  # name: (data as DMFile returns it, image_entry keyword arguments)
    "1D spectrum": ((9,), {}), "1D RGB": ((7, 4), {"rgb": True}), "2D": ((4, 6), {}),
    "2D RGB": ((5, 3, 4), {"rgb": True}), "3D stack": ((2, 3, 4), {}),
    "3D RGB": ((2, 3, 4, 4), {"rgb": True}),
    "4D spectrum image": ((2, 3, 4, 5), {}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_dm4_opens_every_layout(tmp_path, rng, layout):
    """python-mrcz reverses the second axis of what DMFile reads (x of an image, y of a stack).

    Spectra have no second axis and stay as they are; RGB(A) pixels are python-mrcz's packed
    int32 words (B, G, R, A bytes, as stored), the image's own shape, flipped alike.
    """
    shape, kwargs = LAYOUTS[layout]
    data = (rng.integers(0, 256, size=shape).astype(np.uint8) if kwargs.get("rgb")
            else make_stack(rng, "float32", shape=shape))
    write_dm(tmp_path / "l.dm4", [image_entry(data, **kwargs)])
    with DMFile(tmp_path / "l.dm4") as dm:
        np.testing.assert_array_equal(dm.read(), data)
    got = codec.readDM4(str(tmp_path / "l.dm4")).im[-1].imageData
    if kwargs.get("rgb"):
        data = np.ascontiguousarray(data[..., [2, 1, 0, 3]]).view("<i4")[..., 0]
    np.testing.assert_array_equal(got, data[:, ::-1] if data.ndim >= 2 else data, strict=True)
    if data.ndim in (2, 3):  # python-mrcz fails on spectra and 4D spectrum images
        theirs = mrcz.readDM4(str(tmp_path / "l.dm4")).im[-1].imageData
        np.testing.assert_array_equal(got, theirs, strict=True)


@pytest.mark.parametrize("data_type,kwargs", [(27, {}), (5, {}), (3, {})], ids=["half FFT", "packed FFT",
                                                                                    "complex64"])
def test_read_dm4_opens_complex_and_fft_images(tmp_path, rng, data_type, kwargs):
    full = np.fft.fft2(rng.normal(size=(8, 8))).astype(np.complex64)
    stored = {27: np.ascontiguousarray(full[:, :5]), 5: rng.normal(size=64).astype(np.float32),
              3: full}[data_type]
    write_dm(tmp_path / "f.dm4", [image_entry(full, stored=stored, data_type=data_type)])
    with DMFile(tmp_path / "f.dm4") as dm:
        plain = dm.read()
    got = codec.readDM4(str(tmp_path / "f.dm4")).im[-1].imageData
    assert got.shape == (8, 8) and got.dtype == np.complex64
    np.testing.assert_array_equal(got, plain[:, ::-1])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32",
                                   "float64", "complex64", "complex128"])
def test_files_without_a_datatype_tag_take_the_data_arrays_type(tmp_path, rng, dtype):
    """Only DigitalMicrograph is bound to write DataType; other writers' files still open."""
    data = make_stack(rng, dtype, shape=(3, 4))
    entry = image_entry(data)
    del entry["ImageData"]["DataType"]
    write_dm(tmp_path / "n.dm4", [entry])
    with DMFile(tmp_path / "n.dm4") as dm:
        got = dm.read()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, data)
    np.testing.assert_array_equal(codec.readDM4(str(tmp_path / "n.dm4")).im[-1].imageData, data[:, ::-1])


DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
          "complex64", "complex128", "bool"]


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_data_type_both_versions_and_byte_orders(tmp_path, rng, dtype, version, byteorder):
    data = make_stack(rng, dtype, shape=(3, 5, 7)) if dtype != "bool" else rng.integers(
        0, 2, size=(3, 5, 7)).astype(bool)
    path = tmp_path / f"x.dm{version}"
    write_dm(path, [image_entry(data, scales=[0.5, 2.0, 1.5], origins=[0.0, 10.0, -4.0],
                                units=["s", "nm", "µm"])], version=version, byteorder=byteorder)
    with DMFile(path) as dm:
        assert dm.version == version and dm.byteorder == byteorder
        image = dm.main_image
        got = dm.read()
        assert got.dtype.name == np.dtype(dtype).name
        np.testing.assert_array_equal(got, data)
        assert [a.scale for a in image.axes] == pytest.approx([0.5, 2.0, 1.5])
        assert [a.offset for a in image.axes] == pytest.approx([0.0, -20.0, 6.0])
        assert [a.units for a in image.axes] == ["s", "nm", "µm"]
        np.testing.assert_array_equal(dm.read(image, 1, 3), data[1:3])
        np.testing.assert_array_equal(dm.memmap(image), data)


@pytest.mark.parametrize("shape", [(9,), (4, 6), (2, 3, 4), (2, 3, 4, 5)])
def test_spectra_images_stacks_and_spectrum_images(tmp_path, rng, shape):
    data = make_stack(rng, "float32", shape=shape)
    write_dm(tmp_path / "s.dm4", [image_entry(data, units=["eV"] + [""] * (len(shape) - 1))])
    with DMFile(tmp_path / "s.dm4") as dm:
        np.testing.assert_array_equal(dm.read(), data)
        assert dm.main_image.axes[0].units == "eV"


def test_rgba_images(tmp_path, rng):
    rgba = rng.integers(0, 256, size=(6, 5, 4)).astype(np.uint8)
    write_dm(tmp_path / "c.dm3", [image_entry(rgba, rgb=True)], version=3)
    with DMFile(tmp_path / "c.dm3") as dm:
        assert dm.main_image.is_rgb and dm.main_image.shape == (6, 5, 4)
        np.testing.assert_array_equal(dm.read(), rgba)


def test_half_plane_complex_fft(tmp_path, rng):
    image = rng.normal(size=(8, 8)).astype(np.float32)
    full = np.fft.fft2(image).astype(np.complex64)
    half = np.ascontiguousarray(full[:, :5][:, ::-1])
    entry = image_entry(full, stored=half, data_type=27)
    write_dm(tmp_path / "fft.dm4", [entry])
    with DMFile(tmp_path / "fft.dm4") as dm:
        got = dm.read()
    assert got.shape == (8, 8) and got.dtype == np.complex64
    # DigitalMicrograph keeps the half plane mirrored (as RosettaSciIO unpacks it)
    np.testing.assert_allclose(got[:, :5], half[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(got[:, 5:], np.conjugate(half[:, 1:4]), rtol=1e-6)


def test_packed_complex_is_made_hermitian(tmp_path, rng):
    n = 4
    packed = rng.normal(size=(2 * n) ** 2).astype(np.float32)
    entry = image_entry(np.zeros((2 * n, 2 * n), np.complex64), stored=packed, data_type=5)
    write_dm(tmp_path / "p.dm3", [entry], version=3)
    with DMFile(tmp_path / "p.dm3") as dm:
        got = dm.read()
    assert got.shape == (8, 8) and got.dtype == np.complex64
    assert got[n, 0] == packed[0] and got[0, 0] == packed[1]
    for i, j in ((1, 1), (2, 5), (6, 3), (0, 2)):
        assert got[i, j] == np.conjugate(got[(2 * n - i) % (2 * n), (2 * n - j) % (2 * n)])


def test_tags_strings_structs_and_several_images(tmp_path, rng):
    a, b = make_stack(rng, "int16", shape=(4, 4)), make_stack(rng, "float32", shape=(2, 3))
    tags = {"Microscope Info": {"Voltage": 300000.0, "Cs(mm)": 2.7, "Name": String("Krios")},
            "Acquisition": {"Device": {"Name": "K3", "Active Size (pixels)": (4.0, 4.0)}}}
    write_dm(tmp_path / "m.dm4", [image_entry(a, tags=tags, name="first"), image_entry(b, name="second")])
    with DMFile(tmp_path / "m.dm4") as dm:
        names = [im.name for im in dm.images]
        assert names == ["thumbnail", "first", "second"]
        first = dm.images[1]
        assert first.tags["Microscope Info"]["Name"] == "Krios"
        assert first.tags["Acquisition"]["Device"]["Active Size (pixels)"] == (4.0, 4.0)
        np.testing.assert_array_equal(dm.read(2), b)
        assert dm.main_image.index == 1
        assert dm.tags["ImageList"][2]["Name"] == "second"
    info = codec.readDM4(str(tmp_path / "m.dm4")).im[1].imageInfo
    assert info["Voltage"] == 300000.0 and info["C3"] == 2.7


def test_our_writer_agrees_with_python_mrcz_reader(tmp_path, rng):
    """The test writer is checked by an independent DM4 parser, so the two cannot share a mistake."""
    data = make_stack(rng, "uint16", shape=(3, 6, 5))
    write_dm(tmp_path / "w.dm4", [image_entry(data, scales=[1.0, 2.0, 3.0], units=["", "nm", "nm"])])
    theirs = mrcz.readDM4(str(tmp_path / "w.dm4"))
    np.testing.assert_array_equal(theirs.im[1].imageData, data[:, ::-1, :])
    assert theirs.im[1].imageInfo["DimXScale"] == pytest.approx(3.0)
    assert theirs.im[1].imageInfo["DimYUnits"].replace("\x00", "") == "nm"


def test_our_writer_reproduces_a_real_files_image_entry():
    """Writing the real file's own tree back gives the real file's data tag, byte for byte."""
    path = data_path("dm", "rsciio_2D_test-2.dm4")
    raw = path.read_bytes()
    with DMFile(path) as dm:
        image = dm.main_image
        data = dm.read()
    from .dm_writer import Writer

    (tag,) = Writer(4, "<").entry("Data", data.reshape(-1))
    assert tag in raw
    assert raw.index(tag) + len(tag) - data.nbytes == image.data.offset


def test_truncation_at_every_byte_is_a_clear_error(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(2, 3, 4))
    write_dm(tmp_path / "t.dm3", [image_entry(data, tags={"A": {"B": 1.0}})], version=3)
    raw = (tmp_path / "t.dm3").read_bytes()
    cut = tmp_path / "cut.dm3"
    for size in range(len(raw)):
        cut.write_bytes(raw[:size])
        with pytest.raises(MRCFileError) as info:
            with DMFile(cut) as dm:
                dm.read()
        assert str(cut) in str(info.value)


def test_garbled_tags_never_hang_or_crash(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(3, 4))
    write_dm(tmp_path / "g.dm4", [image_entry(data, tags={"x": {"y": {"z": 1}}})])
    raw = (tmp_path / "g.dm4").read_bytes()
    bad = tmp_path / "bad.dm4"
    for _ in range(400):
        mutated = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=rng.integers(1, 5)):
            mutated[pos] = rng.integers(0, 256)
        bad.write_bytes(bytes(mutated))
        t0 = time.perf_counter()
        try:
            with DMFile(bad) as dm:
                dm.read()
        except (ValueError, OSError) as exc:
            assert str(bad) in str(exc)
        assert time.perf_counter() - t0 < 1.0


def test_deep_nesting_is_refused(tmp_path):
    tree: dict = {"leaf": 1}
    for _ in range(200):
        tree = {"g": tree}
    from .dm_writer import Writer

    (tmp_path / "deep.dm4").write_bytes(Writer(4, "<").file(tree))
    with pytest.raises(MRCFileError, match="nested deeper"):
        DMFile(tmp_path / "deep.dm4")


def test_not_a_dm_file(tmp_path):
    (tmp_path / "x.dm4").write_bytes(b"\x00\x00\x00\x07" + bytes(40))
    with pytest.raises(MRCFileError, match="not a DigitalMicrograph file"):
        DMFile(tmp_path / "x.dm4")


def test_opening_a_large_movie_reads_no_data(tmp_path):
    """A 1 GB movie (a sparse file) opens in well under a second; its frames read on demand."""
    frames, ny, nx = 64, 2048, 4096
    path = tmp_path / "movie.dm4"
    hole = Hole(frames * ny * nx, "int16")
    shape_only = np.broadcast_to(np.zeros((), np.int16), (frames, ny, nx))
    write_dm(path, [image_entry(shape_only, stored=hole)])
    t0 = time.perf_counter()
    with DMFile(path) as dm:
        opened = time.perf_counter() - t0
        assert dm.main_image.shape == (frames, ny, nx) and dm.main_image.dtype == np.int16
        frame = dm.read(None, 40, 41)
    assert opened < 0.5, opened
    assert frame.shape == (1, ny, nx) and not frame.any()


def test_python_mrcz_tag_methods_walk_a_file():
    path = data_path("dm", "rsciio_3D_test-1.dm4")
    dm = codec.readDM4(str(path))
    found = {}
    with open(path, "rb") as f:
        dm.f = f
        f.seek(16 + 2)
        ntags = int.from_bytes(f.read(8), "big")
        for _ in range(ntags):
            kind = f.read(1)[0]
            start = f.tell()
            length = int.from_bytes(f.read(2), "big")
            name = f.read(length).decode("latin-1")
            f.seek(start)
            if kind == 20:
                found[name] = dm.parseTagDir(b"/")
            else:
                found[name] = dm.parseTag(b"/")
    dm.f = None
    assert len(found["ImageList"]) == 2
    assert found["ImageList"][1]["ImageData"]["Dimensions"] == [2, 2, 2]
