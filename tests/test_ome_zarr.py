"""OME-Zarr output: ``compress --format ome-zarr``, checked by zarr-python, ome-zarr-models and mrcfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05

from napari_mrcz import batch, codec
from napari_mrcz.codec.convert import convert, zarr_target_name
from napari_mrcz.codec.ome_zarr import ATTRS_KEY, plan_layout
from napari_mrcz.codec.source import open_image

from .conftest import data_path, session_folder
from .seri_writer import write_serialem

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_mrcz", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)


def validated(folder: Path, ngff: str):
    """The output as ome-zarr-models reads it (raises if it is not a valid NGFF image)."""
    group = zarr.open_group(folder, mode="r")
    model = (v05 if ngff == "0.5" else v04).Image.from_zarr(group)
    return group, model


def block_reduce(a: np.ndarray, factors: tuple[int, ...], how: str) -> np.ndarray:
    """Block means (float64) or maxima of ``a``, the last block of an axis holding what is left.

    Written for the test, with ``np.add.reduceat`` / ``np.maximum.reduceat``,
    apart from the codec's binning.
    """
    out = a.astype(np.float64) if how == "mean" else a
    counts = np.ones(1)
    for axis, f in enumerate(factors):
        starts = np.arange(0, a.shape[axis], f)
        ufunc = np.add if how == "mean" else np.maximum
        out = ufunc.reduceat(out, starts, axis=axis)
        sizes = np.diff(np.append(starts, a.shape[axis]))
        counts = np.multiply.outer(counts, sizes) if axis else sizes.astype(np.float64)
    return out / counts.reshape(out.shape) if how == "mean" else out


def source_array(path: Path) -> np.ndarray:
    image = open_image(path)
    try:
        if image.cache is None:
            return np.asarray(image.data)
        return np.stack([image.cache.get(i) for i in range(image.shape[0])])
    finally:
        image.handle.close()


def check_levels(group, layout_volume: bool, source: np.ndarray, labels: bool = False) -> int:
    """Every level equals the block mean (or max) of the source; returns how many levels."""
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"] if "ome" in group.attrs else \
        group.attrs["multiscales"][0]["datasets"]
    for k, dataset in enumerate(datasets):
        level = group[dataset["path"]][...]
        if k == 0:
            assert level.dtype == source.dtype.newbyteorder("<")
            np.testing.assert_array_equal(level, source)
            continue
        f = 2 ** k
        factors = ((f, f, f) if layout_volume else (1, f, f))[-source.ndim:]
        expected = block_reduce(source, factors, "max" if labels else "mean")
        assert level.shape == expected.shape
        if labels or source.dtype.kind in "iu":
            np.testing.assert_array_equal(level, np.rint(expected).astype(source.dtype) if not labels
                                          else expected)
        else:
            np.testing.assert_allclose(level, expected, rtol=2e-6, atol=1e-6 * np.abs(source).max())
    return len(datasets)


# -- real files: every kind the batch reads ----------------------------------------------
REAL = [("mrc", "emdb", "EMD-3197.map"), ("mrc", "emdb", "emd_3197.map.gz"),
        ("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"),
        ("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm3"),
        ("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"), ("mrc", "mrcz-0.6.0", "uint4_mode101.mrc")]


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
@pytest.mark.parametrize("parts", REAL, ids=lambda p: p[-1])
def test_real_files_become_valid_ome_zarr_equal_to_the_source_at_every_level(parts, ngff, tmp_path):
    source = data_path(*parts)
    target = tmp_path / zarr_target_name(source.name)
    out = convert(source, target, ome_zarr=True, ngff=ngff, levels=3)
    assert out.status == "done", out.reason
    group, model = validated(target, ngff)
    image = open_image(source)
    volume = len(image.shape) == 3 and not image.mrcz.get("stack")
    image.handle.close()
    assert check_levels(group, volume, source_array(source)) == 3
    # the scale of each level: the pixel size in Å, times its binning
    entry = (group.attrs["ome"] if ngff == "0.5" else group.attrs)["multiscales"][0]
    sizes = [float(s) for s in image.scale]
    for k, dataset in enumerate(entry["datasets"]):
        scale = dataset["coordinateTransformations"][0]["scale"]
        factors = [2 ** k if (volume or axis or len(sizes) == 2) else 1 for axis in range(len(sizes))]
        np.testing.assert_allclose(scale, [s * f for s, f in zip(sizes, factors, strict=True)], rtol=1e-6)
    assert [a["unit"] for a in entry["axes"] if a.get("type") == "space"] == ["angstrom"] * (
        len(sizes) if volume else 2)
    assert model is not None


def test_the_portal_layout_is_zarr_v2_256_chunks_lz4_and_levels_1_2_4(tmp_path):
    tomogram = (np.random.default_rng(3).normal(size=(300, 280, 270)) * 5).astype(np.float32)
    codec.writeMRC(tomogram, tmp_path / "TS_026.mrc", pixelsize=[7.84, 7.84, 7.84])
    done = cli("compress", str(tmp_path / "TS_026.mrc"), "-o", str(tmp_path / "out"), "--format", "ome-zarr",
               "--ngff", "0.4", "--workers", "1", "--json")
    assert done.returncode == 0, done.stderr
    target = tmp_path / "out" / "TS_026.zarr"
    group, _ = validated(target, "0.4")
    assert group.metadata.zarr_format == 2
    entry = group.attrs["multiscales"][0]
    assert entry["version"] == "0.4"
    assert [a["name"] for a in entry["axes"]] == ["z", "y", "x"]
    assert [group[d["path"]].shape for d in entry["datasets"]] == [(300, 280, 270), (150, 140, 135),
                                                                  (75, 70, 68)]
    meta = json.loads((target / "0" / ".zarray").read_text())
    assert meta["chunks"] == [256, 256, 256] and meta["dimension_separator"] == "/"
    assert meta["compressor"]["id"] == "blosc" and meta["compressor"]["cname"] == "lz4"
    assert meta["compressor"]["clevel"] == 5 and meta["compressor"]["shuffle"] == 1
    assert (target / "0" / "1" / "0" / "0").is_file(), "chunk keys with '/' as the portal's"
    check_levels(group, True, tomogram)


def test_ngff_05_is_sharded_zarr_v3_with_128_cubed_chunks(tmp_path):
    layout = plan_layout((600, 4096, 4096), np.float32, volume=True)
    assert layout.chunks[0] == (128, 128, 128) and layout.shards[0] == (128, 512, 512)
    assert layout.levels == 2, "4096 -> 2048 px on the largest side"
    assert layout.chunks[1] == (64, 128, 128), "each slab of 128 sections writes whole shards of level 1"
    movie = plan_layout((40, 5760, 4092), np.int8, volume=False)
    assert movie.chunks[0] == (1, 512, 512) and movie.shapes[1] == (40, 2880, 2046), "frames never binned"
    tomogram = np.arange(130 * 140 * 150, dtype=np.float32).reshape(130, 140, 150)
    codec.writeMRC(tomogram, tmp_path / "t.mrc", pixelsize=[2.0, 2.0, 2.0])
    assert convert(tmp_path / "t.mrc", tmp_path / "t.zarr", ome_zarr=True, levels=2).status == "done"
    group, _ = validated(tmp_path / "t.zarr", "0.5")
    assert group.metadata.zarr_format == 3
    assert group["0"].chunks == (128, 128, 128) and group["0"].shards == (128, 256, 256)
    assert group["0"].metadata.dimension_names == ("z", "y", "x")
    check_levels(group, True, tomogram)


def test_a_movie_is_binned_in_y_and_x_only_and_its_frames_are_not_a_length(tmp_path):
    movie = np.random.default_rng(5).poisson(2.0, size=(12, 300, 260)).astype(np.int8)
    codec.writeMRC(list(movie), tmp_path / "movie.mrcs", pixelsize=[1.0, 0.83, 0.83], compressor="zstd")
    target = tmp_path / "movie.zarr"
    assert convert(tmp_path / "movie.mrcs", target, ome_zarr=True, levels=3).status == "done"
    group, _ = validated(target, "0.5")
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert axes[0]["type"] != "space" and [a["name"] for a in axes[1:]] == ["y", "x"]
    assert check_levels(group, False, movie) == 3


def test_segmentations_are_downsampled_by_block_maximum_never_by_mean(tmp_path):
    labels = np.zeros((70, 90, 100), np.uint16)
    labels[10:30, 20:50, 30:60] = 7
    labels[40:41, 5:6, 5:6] = 300  # one voxel: still there in every level
    codec.writeMRC(labels, tmp_path / "seg.mrcz", pixelsize=[3.0, 3.0, 3.0], compressor="zstd",
                   meta={"napari_mrcz_labels": True})
    target = tmp_path / "seg.zarr"
    assert convert(tmp_path / "seg.mrcz", target, ome_zarr=True, levels=4).status == "done"
    group, _ = validated(target, "0.5")
    assert "image-label" in group.attrs["ome"]
    v05.ImageLabel.from_zarr(group)
    check_levels(group, True, labels, labels=True)
    assert set(np.unique(group["3"][...])) <= {0, 7, 300} and 300 in group["3"][...]


def test_the_header_goes_to_the_attributes_and_back_to_mrc(tmp_path):
    rng = np.random.default_rng(11)
    stack = (rng.normal(size=(5, 64, 48)) * 100).astype(np.int16)
    tilts = np.array([-30.0, -15.0, 0.0, 15.0, 30.0])
    records = {"tilt": tilts, "mag": np.full(5, 53000.0), "dose": np.linspace(1, 3, 5)}
    write_serialem(tmp_path / "tilt.st", stack, records, flags=1 | 8 | 32, pixel=2.17)
    codec.writeMRC(stack.astype(np.float32), tmp_path / "map.mrcz", pixelsize=[3.3, 1.25, 1.5], voltage=300.0,
                   C3=2.7, gain=1.05, compressor="zstd", meta={"note": "säule"})
    out = tmp_path / "zarr"
    done = cli("compress", str(tmp_path / "tilt.st"), str(tmp_path / "map.mrcz"), "-o", str(out),
               "--format", "ome-zarr", "--json")
    assert done.returncode == 0, done.stderr
    tilt_attrs = zarr.open_group(out / "tilt.zarr", mode="r").attrs[ATTRS_KEY]
    np.testing.assert_allclose(tilt_attrs["extended"]["sections"]["Tilt angle"], tilts, atol=0.01)
    assert tilt_attrs["header"]["exttyp"] == "SERI"
    assert tilt_attrs["meta"]["napari_mrcz_batch"]["source"].endswith("tilt.st")
    map_attrs = zarr.open_group(out / "map.zarr", mode="r").attrs[ATTRS_KEY]
    assert (map_attrs["voltage"], map_attrs["C3"], map_attrs["gain"]) == (300.0, 2.7, pytest.approx(1.05))
    assert map_attrs["meta"]["note"] == "säule"
    # back: decompress to MRC (mrcfile reads it), compress to MRCZ (python-mrcz reads it)
    back = cli("decompress", str(out), "-o", str(tmp_path / "mrc"), "--json")
    assert back.returncode == 0, back.stderr
    with mrcfile.open(tmp_path / "mrc" / "map.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, stack.astype(np.float32))
        assert mrc.voxel_size.tolist() == pytest.approx((1.5, 1.25, 3.3))
    assert cli("compress", str(out / "tilt.zarr"), str(out / "map.zarr"), "-o", str(tmp_path / "mrcz"),
               "--json").returncode == 0
    import mrcz

    data, header = mrcz.readMRC(str(tmp_path / "mrcz" / "map.mrcz"))
    np.testing.assert_array_equal(data, stack.astype(np.float32))
    assert (header["voltage"], header["C3"]) == (300.0, pytest.approx(2.7))
    assert header["gain"] == pytest.approx(1.05) and header["note"] == "säule"
    tilt_back = open_image(tmp_path / "mrcz" / "tilt.mrcz")
    np.testing.assert_allclose(tilt_back.mrcz["extended"]["sections"]["Tilt angle"], tilts, atol=0.01)
    assert tilt_back.scale[1:] == pytest.approx([2.17, 2.17])
    tilt_back.handle.close()


def test_a_rerun_skips_what_is_done_and_rewrites_what_changed(tmp_path):
    session = session_folder(tmp_path / "session", {
        "a/EMD-3197.map": ("mrc", "emdb", "EMD-3197.map"),
        "b/stack.dm4": ("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4")})
    out = tmp_path / "out"
    first = cli("compress", str(session), "-o", str(out), "--format", "ome-zarr", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["done"] == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.zarr")) == ["a/EMD-3197.zarr",
                                                                                 "b/stack.zarr"]
    again = json.loads(cli("compress", str(session), "-o", str(out), "--format", "ome-zarr", "--json").stdout)
    assert (again["done"], again["skipped"]) == (0, 2)
    other = json.loads(cli("compress", str(session), "-o", str(out), "--format", "ome-zarr", "--ngff", "0.4",
                           "--json").stdout)
    assert other["done"] == 2, "a 0.4 output is not the 0.5 asked before"
    os.utime(session / "a" / "EMD-3197.map", ns=(time.time_ns(), time.time_ns()))
    changed = json.loads(cli("compress", str(session), "-o", str(out), "--format", "ome-zarr",
                             "--ngff", "0.4", "--json").stdout)
    assert (changed["done"], changed["skipped"]) == (1, 1)
    assert not [p for p in out.glob("*/.*")], "no temporary folder left"


def test_a_tomogram_split_over_a_local_cluster_is_identical_to_one_workers(tmp_path):
    rng = np.random.default_rng(2)
    tomogram = np.cumsum(rng.normal(size=(520, 96, 80)), axis=0).astype(np.float32)
    codec.writeMRC(tomogram, tmp_path / "tomo.mrc", pixelsize=[4.0, 4.0, 4.0])
    options = dict(compressed=True, compressor=None, clevel=None, backend=None, verify=True, overwrite=False,
                   scheduler=None, quiet=True, ome_zarr=True, levels=3)
    [one] = batch.run(batch.plan([tmp_path / "tomo.mrc"], tmp_path / "one", compressed=True, ome_zarr=True),
                      workers=1, **options)
    [two] = batch.run(batch.plan([tmp_path / "tomo.mrc"], tmp_path / "two", compressed=True, ome_zarr=True),
                      workers=2, **options)
    assert one.status == two.status == "done", (one.reason, two.reason)
    a, b = zarr.open_group(tmp_path / "one" / "tomo.zarr"), zarr.open_group(tmp_path / "two" / "tomo.zarr")
    for k in ("0", "1", "2"):
        assert np.array_equal(a[k][...], b[k][...])
        files_a = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("c/*"))
        files_b = sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("c/*"))
        assert files_a == files_b
        for rel in files_a:
            path_a, path_b = tmp_path / "one" / rel, tmp_path / "two" / rel
            if path_a.is_file():
                assert path_a.read_bytes() == path_b.read_bytes(), rel
    assert dict(a.attrs) == dict(b.attrs)
    check_levels(b, True, tomogram)


def test_a_worker_killed_mid_file_leaves_a_complete_verified_output(tmp_path):
    rng = np.random.default_rng(4)
    tomogram = np.cumsum(rng.normal(size=(2048, 128, 128)), axis=0).astype(np.float32)  # 16 slabs
    codec.writeMRC(tomogram, tmp_path / "big.mrc", pixelsize=[4.0, 4.0, 4.0])
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        pids = list(client.run(os.getpid).values())
        out = tmp_path / "out"
        jobs = batch.plan([tmp_path / "big.mrc"], out, compressed=True, ome_zarr=True)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(outcomes=batch.run(
            jobs, compressed=True, compressor=None, clevel=None, backend=None, verify=True, overwrite=False,
            workers=2, scheduler=address, quiet=True, ome_zarr=True)))
        runner.start()
        deadline = time.monotonic() + 120
        while not any(out.glob(".big.zarr.*.part/0/c/*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not (out / "big.zarr").exists(), "killed mid-file"
        os.kill(pids[0], 9)
        runner.join(timeout=300)
    [outcome] = result["outcomes"]
    assert outcome.status == "done", outcome.reason
    group, _ = validated(out / "big.zarr", "0.5")
    check_levels(group, True, tomogram)
    assert not list(out.glob(".*"))


def test_complex_and_rgb_are_refused_naming_the_file(tmp_path):
    data = (np.arange(2 * 8 * 8) * (1 + 1j)).astype(np.complex64).reshape(2, 8, 8)
    codec.writeMRC(data, tmp_path / "c.mrc", pixelsize=[1.0, 1.0, 1.0])
    out = convert(tmp_path / "c.mrc", tmp_path / "c.zarr", ome_zarr=True)
    assert out.status == "unsupported" and "c.mrc" in out.reason and "complex" in out.reason
    out = convert(data_path("dm", "rsciio_2D_test-8.dm4"), tmp_path / "rgb.zarr", ome_zarr=True)
    assert out.status == "unsupported" and "RGB" in out.reason
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*"))


def test_a_broken_zarr_source_fails_naming_the_folder_and_the_problem(tmp_path):
    tomogram = np.arange(40 * 30 * 20, dtype=np.float32).reshape(40, 30, 20)
    codec.writeMRC(tomogram, tmp_path / "t.mrc", pixelsize=[2.0, 2.0, 2.0])
    assert convert(tmp_path / "t.mrc", tmp_path / "t.zarr", ome_zarr=True).status == "done"
    # no level 0 array
    missing = tmp_path / "missing.zarr"
    missing.mkdir()
    meta = json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())
    (missing / "zarr.json").write_text(json.dumps(meta))
    # a level 0 that claims a frame no file holds
    huge = tmp_path / "huge.zarr"
    zarr.open_group(huge, mode="w").create_array("0", shape=(2, 10**6, 10**6), dtype="f4",
                                                 chunks=(1, 256, 256))
    zarr.open_group(huge, mode="a").attrs.update(meta["attributes"])
    # a shard cut short
    cut = tmp_path / "cut.zarr"
    import shutil

    shutil.copytree(tmp_path / "t.zarr", cut)
    shard = next((cut / "0" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    shard.write_bytes(shard.read_bytes()[:100])
    for folder, problem in ((missing, "no array '0'"), (huge, "GiB")):
        info = cli("info", str(folder))
        assert info.returncode == 1 and str(folder) in info.stderr and problem in info.stderr, info.stderr
    out = convert(cut, tmp_path / "cut.mrcz")
    assert out.status == "failed" and f"{cut}: section 0 cannot be read" in out.reason, out.reason
    assert not (tmp_path / "cut.mrcz").exists()
