"""Maps stored in another axis order (MAPC, MAPR, MAPS), as EMDB's crystallographic EMD-3001 (3, 1, 2).

Each data axis must get the spacing of the cell axis it runs along, and a
map saved again (from napari, or by ``napari-mrcz compress``/``decompress``)
must mean what the original meant. What a file means is computed here from
MRC2014 alone, with mrcfile's header layout and numpy (and python-mrcz for the
data of MRCZ files), not by napari-mrcz: the map in the standard a, b, c
order, the spacing and start of each cell axis, the cell angles, the origin
and the space group.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.convert import convert
from napari_mrcz.codec.source import open_image

from .conftest import PLUGIN

#: EMD-3001's cell (a, b, c, Å), sampling (MX, MY, MZ), angles and axis order.
CELL = (17.93, 4.71, 33.03)
SAMPLING = (40, 12, 72)
ANGLES = (90.0, 94.326, 90.0)
EMD_3001 = (3, 1, 2)
PERMUTATIONS = list(itertools.permutations((1, 2, 3)))


def permuted_map(path: Path, order: tuple[int, int, int], seed: int = 3001) -> np.ndarray:
    """A float32 map like EMD-3001, written by mrcfile with columns, rows, sections along ``order``.

    Returns the data in file order (sections, rows, columns).
    """
    mapc, mapr, maps = order
    shape = (SAMPLING[maps - 1], SAMPLING[mapr - 1], SAMPLING[mapc - 1])
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(data)
        h = mrc.header
        h.mapc, h.mapr, h.maps = order
        h.mx, h.my, h.mz = SAMPLING
        h.cella = CELL
        h.cellb = ANGLES
        h.nxstart, h.nystart, h.nzstart = -5, 3, 7
        h.origin = (1.5, -2.0, 3.25)
        h.ispg = 5  # C2, monoclinic as the cell
    return data


def header(path: Path) -> np.void:
    """The 1024-byte header as mrcfile lays it out (our files are little-endian)."""
    return np.fromfile(path, dtype=mrcfile.dtypes.HEADER_DTYPE, count=1)[0]


def meaning(path: Path) -> dict:
    """What the map in ``path`` means by MRC2014: the map in standard (Z, Y, X) order and its geometry.

    MRCZ files are read by python-mrcz (data in file order) and their cell
    is divided by the dimensions, as python-mrcz writes it, where M is 0.
    """
    h = header(path)
    if str(path).endswith(".mrcz"):
        data = mrcz.readMRC(str(path))[0]
    else:
        with mrcfile.open(str(path), permissive=False) as mrc:
            data = np.array(mrc.data)
    order = (int(h["mapc"]), int(h["mapr"]), int(h["maps"]))
    along = (order[2], order[1], order[0])  # the cell axis (1 X, 2 Y, 3 Z) of sections, rows, columns
    standard = np.transpose(data, [along.index(3), along.index(2), along.index(1)])
    n_cell = np.zeros(3)  # the number of samples along X, Y, Z
    start = [0, 0, 0]
    for axis, n, first in zip(along, data.shape, (h["nzstart"], h["nystart"], h["nxstart"]), strict=True):
        n_cell[axis - 1], start[axis - 1] = n, int(first)
    m = np.array([h["mx"], h["my"], h["mz"]], dtype=float)
    cella = np.array([h["cella"]["x"], h["cella"]["y"], h["cella"]["z"]], dtype=float)
    return {"map": standard, "spacing": cella / np.where(m > 0, m, n_cell), "start": start,
            "angles": (float(h["cellb"]["alpha"]), float(h["cellb"]["beta"]), float(h["cellb"]["gamma"])),
            "origin": (float(h["origin"]["x"]), float(h["origin"]["y"]), float(h["origin"]["z"])),
            "ispg": int(h["ispg"])}


def assert_same_meaning(path: Path, original: Path) -> None:
    got, want = meaning(path), meaning(original)
    np.testing.assert_array_equal(got["map"], want["map"], err_msg=f"{path.name}: another map")
    np.testing.assert_allclose(got["spacing"], want["spacing"], rtol=1e-6, err_msg=f"{path.name}: spacing")
    for key in ("start", "angles", "origin", "ispg"):
        assert got[key] == want[key], f"{path.name}: {key}"
    h = header(path)
    assert (h["mapc"], h["mapr"], h["maps"]) == tuple(header(original)[k] for k in ("mapc", "mapr", "maps"))


def spacing_of_data_axes(order: tuple[int, int, int]) -> list[float]:
    """The spacing (Å) of sections, rows and columns: that of the cell axis each runs along."""
    mapc, mapr, maps = order
    return [CELL[k - 1] / SAMPLING[k - 1] for k in (maps, mapr, mapc)]


def test_emd_3001_order_gives_each_axis_its_own_spacing(tmp_path):
    path = tmp_path / "emd_3001_like.map"
    permuted_map(path, EMD_3001)
    assert mrcfile.validate(str(path))
    source = open_image(path)
    # columns along c, rows along a, sections along b
    np.testing.assert_allclose(source.scale, [0.3925, 0.44825, 0.45875], rtol=1e-6)
    assert source.axis_labels == ["y", "x", "z"], "each axis named after the cell axis it runs along"
    _, meta = codec.readMRC(path)
    np.testing.assert_allclose(meta["pixelsize"], [0.3925, 0.44825, 0.45875], rtol=1e-6)


@pytest.mark.parametrize("order", PERMUTATIONS, ids=["".join(map(str, o)) for o in PERMUTATIONS])
def test_every_axis_order_opens_with_the_spacing_of_each_data_axis(tmp_path, order):
    path = tmp_path / "map.map"
    data = permuted_map(path, order)
    source = open_image(path)
    np.testing.assert_allclose(source.scale, spacing_of_data_axes(order), rtol=1e-6)
    assert source.axis_labels == ["xyz"[k - 1] for k in (order[2], order[1], order[0])]
    np.testing.assert_array_equal(np.asarray(source.data), data)  # in the file's order


@pytest.mark.parametrize("order", PERMUTATIONS, ids=["".join(map(str, o)) for o in PERMUTATIONS])
def test_compress_then_decompress_keeps_what_the_map_means(tmp_path, order):
    source = tmp_path / "map.map"
    permuted_map(source, order)
    packed = convert(source, tmp_path / "map.map.mrcz", compressed=True)
    assert packed.status == "done", packed.reason
    assert_same_meaning(Path(packed.target), source)
    plain = convert(packed.target, tmp_path / "back" / "map.map", compressed=False)
    assert plain.status == "done", plain.reason
    assert_same_meaning(Path(plain.target), source)
    assert mrcfile.validate(plain.target)


def test_the_batch_command_keeps_emd_3001s_axis_order(tmp_path):
    session = tmp_path / "session"
    session.mkdir()
    permuted_map(session / "emd_3001_like.map", EMD_3001)
    for command, src, out in (("compress", session, tmp_path / "packed"),
                              ("decompress", tmp_path / "packed", tmp_path / "plain")):
        done = subprocess.run([sys.executable, "-m", "napari_mrcz", command, str(src), "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert_same_meaning(tmp_path / "packed" / "emd_3001_like.map.mrcz", session / "emd_3001_like.map")
    assert_same_meaning(tmp_path / "plain" / "emd_3001_like.map", session / "emd_3001_like.map")


def test_appending_sections_grows_the_cell_axis_the_sections_run_along(tmp_path, rng):
    path = tmp_path / "map.map"
    data = permuted_map(path, EMD_3001)  # sections along b
    more = rng.normal(size=(3, *data.shape[1:])).astype(np.float32)
    codec.writeMRC(more, path, idx=data.shape[0])
    with mrcfile.open(str(path)) as mrc:
        np.testing.assert_array_equal(mrc.data, np.concatenate([data, more]))
        h = mrc.header
        assert (h.mapc, h.mapr, h.maps) == EMD_3001
        assert (int(h.mx), int(h.my), int(h.mz)) == (40, 15, 72), "b sampled 3 more times"
        np.testing.assert_allclose(mrc.voxel_size.tolist(), np.array(CELL) / SAMPLING, rtol=1e-6)
    np.testing.assert_allclose(open_image(path).scale, spacing_of_data_axes(EMD_3001), rtol=1e-6)


# -- napari ---------------------------------------------------------------------------
@pytest.mark.parametrize("order", [EMD_3001, (2, 1, 3)], ids=["emd-3001 312", "odd 213"])
@pytest.mark.parametrize("suffix", [".map", ".mrcz"])
def test_a_permuted_map_in_napari_has_each_axis_spacing_and_saves_what_it_means(viewer, tmp_path, order,
                                                                                suffix):
    source = tmp_path / "emd.map"
    data = permuted_map(source, order)
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, spacing_of_data_axes(order), rtol=1e-6)
    assert [str(u) for u in layer.units] == ["angstrom"] * 3
    assert tuple(layer.axis_labels) == tuple("xyz"[k - 1] for k in (order[2], order[1], order[0]))

    saved = tmp_path / f"saved{suffix}"
    layer.save(str(saved), plugin=PLUGIN)
    assert_same_meaning(saved, source)
    if suffix == ".map":
        assert mrcfile.validate(str(saved))

    (again,) = viewer.open(str(saved), plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, layer.scale, rtol=1e-6)
    assert tuple(again.axis_labels) == tuple(layer.axis_labels)
    np.testing.assert_array_equal(np.asarray(again.data), data)


def test_a_standard_order_map_is_saved_in_standard_order(viewer, tmp_path):
    source = tmp_path / "std.map"
    permuted_map(source, (1, 2, 3))
    (layer,) = viewer.open(str(source), plugin=PLUGIN)
    assert tuple(layer.axis_labels) == ("z", "y", "x")
    np.testing.assert_allclose(layer.scale, np.array(CELL[::-1]) / SAMPLING[::-1], rtol=1e-6)
    layer.save(str(tmp_path / "saved.map"), plugin=PLUGIN)
    h = header(tmp_path / "saved.map")
    assert (h["mapc"], h["mapr"], h["maps"]) == (1, 2, 3)
    assert_same_meaning(tmp_path / "saved.map", source)
