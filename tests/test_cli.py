"""The ``napari-mrcz`` command, run as users run it: subprocesses, real dask clusters, real files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.dm import DMFile

from .conftest import data_path, kill_hard, script

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_mrcz", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def batch_json(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout)


# -- info -------------------------------------------------------------------------
def test_info_prints_what_the_header_says():
    dm = str(data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"))
    meta = str(data_path("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"))
    done = cli("info", dm, meta)
    assert done.returncode == 0, done.stderr
    assert "66 × 65 × 64 int16 (volume)" in done.stdout
    assert "z 40000 Å, y 30 Å, x 0.02 Å" in done.stdout and "scale 4 um" in done.stdout
    assert "MRCZ (zstd)" in done.stdout and "300 kV" in done.stdout and "2.7 mm" in done.stdout
    assert '"detector": "K3"' in done.stdout
    lines = cli("info", "--json", dm, meta).stdout.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["format"] == "DM4" and [a["units"] for a in first["calibrations"]] == ["um", "nm", "pm"]
    assert second["voltage_kV"] == 300.0 and second["json"]["detector"] == "K3"
    full = json.loads(cli("info", "--json", "--full", meta).stdout)
    assert full["header"]["nx"] == 20 and full["header"]["mode"] == 6002


def test_info_on_a_broken_file_names_it_and_fails():
    broken = str(data_path("mrc", "quirks", "truncated.mrc"))
    done = subprocess.run([sys.executable, "-m", "napari_mrcz", "info", broken], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and broken in done.stderr and "truncated" in done.stderr


# -- compress a session on a LocalCluster ----------------------------------------------
SESSION = {
    "dm/stack.dm4": ("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"),
    "dm/image.dm3": ("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm3"),
    "dm/rgb.dm4": ("dm", "rsciio_2D_test-8.dm4"),
    "emdb/EMD-3197.map.gz": ("mrc", "emdb", "emd_3197.map.gz"),
    "mrcz/meta.mrcz": ("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"),
    "mrcz/channels.mrcz": ("mrc", "mrcz-0.6.0", "list_slices2_zstd.mrcz"),
    "mrcz/nibbles.mrc": ("mrc", "mrcz-0.6.0", "uint4_mode101.mrc"),
    "broken/truncated.mrc": ("mrc", "quirks", "truncated.mrc"),
    "broken/not_an_mrc.mrc": ("mrc", "quirks", "not_an_mrc.mrc"),
}


@pytest.fixture
def session(tmp_path) -> Path:
    src = tmp_path / "session"
    for rel, parts in SESSION.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_path(*parts), src / rel)
    return src


def shown(source: Path) -> np.ndarray:
    """The source as the napari reader shows it, by independent readers where there is one."""
    if source.suffix in (".dm3", ".dm4"):
        with DMFile(source) as dm:
            return dm.read(dm.main_image)
    with mrcfile.open(source, permissive=True, header_only=True) as mrc:
        mrcfile_reads_it = source.suffix != ".mrcz" and int(mrc.header.mode) != 101  # 4-bit: python-mrcz
    if not mrcfile_reads_it:
        image, _ = mrcz.readMRC(str(source))
        return np.concatenate(image) if isinstance(image, list) else image
    with mrcfile.open(source, permissive=True) as mrc:
        return np.asarray(mrc.data)


def test_compress_a_session_verified_resumable_then_decompress(session, tmp_path):
    out = tmp_path / "out"
    done = cli("compress", str(session), "-o", str(out), "--workers", "2", "--json")
    assert done.returncode == 1, "two broken files: the batch fails, after doing the rest"
    info = batch_json(done)
    assert (info["done"], info["unsupported"], info["failed"]) == (6, 1, 2)
    failed = {Path(f["source"]).name: f["reason"] for f in info["failures"]}
    assert set(failed) == {"truncated.mrc", "not_an_mrc.mrc"}
    assert all(str(session) in reason for reason in failed.values())
    assert info["unsupported_files"][0]["reason"].endswith("MRC cannot store RGB images")
    for outcome in info["outcomes"]:
        if outcome["status"] != "done":
            continue
        source, target = Path(outcome["source"]), Path(outcome["target"])
        assert target.relative_to(out).parent == source.relative_to(session).parent
        theirs, meta = mrcz.readMRC(str(target))  # python-mrcz reads every output
        theirs = np.concatenate(theirs) if isinstance(theirs, list) else theirs
        want = shown(source)
        np.testing.assert_array_equal(theirs.reshape(want.shape), want, err_msg=source.name)
        assert meta["napari_mrcz_batch"]["source"] == str(source)
    _, meta = mrcz.readMRC(str(out / "dm" / "stack.mrcz"))
    np.testing.assert_allclose(meta["pixelsize"], [40000.0, 30.0, 0.02], rtol=1e-6)
    assert meta["dm"]["calibrations"][0]["units"] == "um"
    assert not [p for p in out.rglob(".*")], "no temporary files are left"

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mrcz")}
    again = batch_json(cli("compress", str(session), "-o", str(out), "--workers", "2", "--json"))
    assert (again["done"], again["skipped"], again["failed"]) == (0, 6, 2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mrcz")} == mtimes, "done files are not rewritten"

    plain = tmp_path / "plain"
    done = cli("decompress", str(out), "-o", str(plain), "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    for target in plain.rglob("*.mrc"):
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            assert mrcfile.validate(target), report.getvalue()
        with mrcfile.open(target) as mrc:
            source = out / target.relative_to(plain).with_suffix(".mrcz")
            theirs, _ = mrcz.readMRC(str(source))
            theirs = np.concatenate(theirs) if isinstance(theirs, list) else theirs
            np.testing.assert_array_equal(np.asarray(mrc.data).reshape(theirs.shape), theirs)


def test_dry_run_and_pattern_write_nothing(session, tmp_path):
    out = tmp_path / "out"
    done = cli("compress", str(session), "-o", str(out), "--dry-run", "--pattern", "*.dm?")
    assert done.returncode == 0
    assert sorted(line.split()[1] for line in done.stdout.splitlines()) == sorted(
        str(session / rel) for rel in SESSION if rel.startswith("dm/"))
    assert not out.exists()


# -- a real cluster: scheduler and workers as subprocesses, one killed mid-batch --------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def movies(tmp_path_factory) -> Path:
    """Twelve 24 x 1024 x 1024 int16 movies (48 MB each): long enough to kill something mid-batch."""
    folder = tmp_path_factory.mktemp("movies")
    rng = np.random.default_rng(7)
    frame = rng.poisson(1.0, size=(1024, 1024)).astype(np.int16)
    for k in range(12):
        movie = np.stack([np.roll(frame, 3 * j + k, axis=1) for j in range(24)])
        codec.writeMRC(list(movie), folder / f"movie_{k:02d}.mrcs", pixelsize=[1.0, 0.83, 0.83])
    return folder


def dask_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([script("dask"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.05)


def assert_outputs_verify(movies: Path, out: Path) -> None:
    for source in sorted(movies.glob("*.mrcs")):
        target = out / (source.stem + ".mrcz")
        theirs, _ = mrcz.readMRC(str(target))
        theirs = np.stack(theirs) if isinstance(theirs, list) else theirs
        with mrcfile.open(source) as mrc:
            np.testing.assert_array_equal(theirs, mrc.data, err_msg=source.name)


def test_a_scheduler_and_workers_on_127_0_0_1_finish_the_batch_when_a_worker_is_killed(movies, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = dask_process("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
    workers = [dask_process("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                            "--name", f"w{k}") for k in range(2)]
    out = tmp_path / "out"
    try:
        args = [sys.executable, "-m", "napari_mrcz", "compress", str(movies), "-o", str(out),
                "--scheduler", address, "--json"]
        command = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        wait_for(lambda: out.is_dir() and any(out.glob("movie_*.mrcz")), 120, "a first output")
        kill_hard(workers[0])  # a worker dies with tasks in flight and queued
        assert len(list(out.glob("movie_*.mrcz"))) < 12, "killed mid-batch"
        stdout, stderr = command.communicate(timeout=300)
        assert command.returncode == 0, stderr
        info = json.loads(stdout)
        # a task the dead worker finished but could not report is re-run, and finds its file done
        assert info["done"] + info["skipped"] == 12 and info["failed"] == 0
        assert_outputs_verify(movies, out)
        assert not list(out.glob(".*"))
    finally:
        for process in (*workers, scheduler):
            kill_hard(process)
            process.wait(timeout=30)


def test_killing_the_command_loses_nothing_and_a_rerun_completes(movies, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "napari_mrcz", "compress", str(movies), "-o", str(out), "--workers", "2",
            "--quiet"]
    command = subprocess.Popen(args, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.is_dir() and any(out.glob("movie_*.mrcz")), 120, "a first output")
    finally:
        kill_hard(command)  # as a power cut or kill -9 of the whole job would
        command.wait(timeout=30)
    finished = sorted(out.glob("movie_*.mrcz"))
    assert 0 < len(finished) < 12, "killed mid-batch"
    for target in finished:  # whatever has its final name is complete
        theirs, _ = mrcz.readMRC(str(target))
        with mrcfile.open(movies / (target.stem + ".mrcs")) as mrc:
            np.testing.assert_array_equal(np.stack(theirs), mrc.data)
    done = cli("compress", str(movies), "-o", str(out), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr
    info = batch_json(done)
    assert info["skipped"] == len(finished) and info["done"] == 12 - len(finished)
    assert_outputs_verify(movies, out)
    assert not list(out.glob(".*")), "the re-run removed what the killed one left"


def test_the_console_script_and_a_codec_without_dask():
    done = subprocess.run([script("napari-mrcz"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("napari-mrcz ")
    check = ("import sys, napari_mrcz.codec, napari_mrcz.cli\n"
             "print(sorted(m for m in ('dask', 'distributed', 'napari', 'qtpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", "the codec and the command line import no dask, napari or Qt"
