"""The ``napari-mrcz`` command, run as users run it: subprocesses, real dask clusters, real files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
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

from .conftest import data_path, kill_hard, script, session_folder

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
    return session_folder(tmp_path / "session", SESSION)


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
    names = {str(Path(o["target"]).relative_to(out)) for o in info["outcomes"] if o["status"] == "done"}
    assert names == {"dm/stack.dm4.mrcz", "dm/image.dm3.mrcz", "emdb/EMD-3197.map.gz.mrcz", "mrcz/meta.mrcz",
                     "mrcz/channels.mrcz", "mrcz/nibbles.mrc.mrcz"}, "the whole name and .mrcz"
    _, meta = mrcz.readMRC(str(out / "dm" / "stack.dm4.mrcz"))
    np.testing.assert_allclose(meta["pixelsize"], [40000.0, 30.0, 0.02], rtol=1e-6)
    assert meta["dm"]["calibrations"][0]["units"] == "um"
    assert not [p for p in out.rglob(".*")], "no temporary files are left"

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mrcz")}
    again = batch_json(cli("compress", str(session), "-o", str(out), "--workers", "2", "--json"))
    assert (again["done"], again["skipped"], again["failed"]) == (0, 6, 2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mrcz")} == mtimes, "done files are not rewritten"

    plain = tmp_path / "plain"
    done = cli("decompress", str(out), "-o", str(plain), "--workers", "2", "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    outcomes = batch_json(done)["outcomes"]
    assert {str(p.relative_to(plain)) for p in plain.rglob("*") if p.is_file()} == {
        "dm/stack.dm4.mrc", "dm/image.dm3.mrc", "emdb/EMD-3197.map.gz.mrc", "mrcz/meta.mrc",
        "mrcz/channels.mrc", "mrcz/nibbles.mrc"}, ".mrcz dropped; .mrc added unless the name has it"
    for outcome in outcomes:
        target, source = Path(outcome["target"]), Path(outcome["source"])
        assert outcome["status"] == "done", outcome
        if target.name == "nibbles.mrc":  # mode 101 again, which only python-mrcz reads (and writes)
            assert int.from_bytes(target.read_bytes()[12:16], "little") == 101
            original, _ = mrcz.readMRC(str(session / "mrcz" / "nibbles.mrc"))
            np.testing.assert_array_equal(mrcz.readMRC(str(target))[0], original)
            continue
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            assert mrcfile.validate(target), report.getvalue()
        with mrcfile.open(target) as mrc:
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


# -- output names: one rule, whatever else is in the folder -------------------------
NAMED = {
    "tilt.st": ("mrc", "quirks", "reference_mrcfile.mrc"),
    "tilt.ali": ("mrc", "quirks", "reference_mrcfile.mrc"),
    "tilt.rec": ("mrc", "quirks", "reference_mrcfile.mrc"),
    "EMD-3197.map": ("mrc", "emdb", "EMD-3197.map"),
    "EMD-3197.map.bz2": ("mrc", "emdb", "EMD-3197.map.bz2"),
    "emd_3197.map.gz": ("mrc", "emdb", "emd_3197.map.gz"),
    "movie.dm4": ("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4"),
    "meta.mrcz": ("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"),
}
COMPRESSED = {"tilt.st": "tilt.st.mrcz", "tilt.ali": "tilt.ali.mrcz", "tilt.rec": "tilt.rec.mrcz",
              "EMD-3197.map": "EMD-3197.map.mrcz", "EMD-3197.map.bz2": "EMD-3197.map.bz2.mrcz",
              "emd_3197.map.gz": "emd_3197.map.gz.mrcz", "movie.dm4": "movie.dm4.mrcz",
              "meta.mrcz": "meta.mrcz"}
DECOMPRESSED = {"tilt.st.mrcz": "tilt.st", "tilt.ali.mrcz": "tilt.ali", "tilt.rec.mrcz": "tilt.rec",
                "EMD-3197.map.mrcz": "EMD-3197.map", "EMD-3197.map.bz2.mrcz": "EMD-3197.map.bz2.mrc",
                "emd_3197.map.gz.mrcz": "emd_3197.map.gz.mrc", "movie.dm4.mrcz": "movie.dm4.mrc",
                "meta.mrcz": "meta.mrc"}


@pytest.mark.parametrize(("name", "compressed", "target"), [
    *((name, True, target) for name, target in COMPRESSED.items()),
    *((name, False, target) for name, target in DECOMPRESSED.items()),
    ("x.mrcz", False, "x.mrc"), ("x.dm4", False, "x.dm4.mrc"), ("x.mrcs", False, "x.mrcs"),
    ("x.preali", False, "x.preali"), ("X.MRCZ", True, "X.MRCZ"), ("X.ST.MRCZ", False, "X.ST"),
])
def test_target_name_follows_one_rule(name, compressed, target):
    from napari_mrcz.codec.convert import target_name

    assert target_name(name, compressed) == target


def targets(done: subprocess.CompletedProcess) -> dict[str, str]:
    """Source name -> target name, from --dry-run's lines."""
    assert done.returncode == 0, done.stderr
    pairs = (line.split()[1::2] for line in done.stdout.splitlines())
    return {Path(source).name: Path(target).name for source, target in pairs}


def test_names_do_not_depend_on_the_folder_and_decompress_gives_them_back(tmp_path):
    src = session_folder(tmp_path / "session", NAMED)
    out, plain = tmp_path / "out", tmp_path / "plain"
    assert targets(cli("compress", str(src), "-o", str(out), "--dry-run")) == COMPRESSED
    alone = targets(cli("compress", str(src / "EMD-3197.map"), "-o", str(out), "--dry-run"))
    assert alone == {"EMD-3197.map": "EMD-3197.map.mrcz"}, "the same name with or without the .bz2 beside it"

    done = cli("compress", str(src), "-o", str(out), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(COMPRESSED.values()), "IMOD's 3 files stay 3"
    done = cli("decompress", str(out), "-o", str(plain), "--workers", "2", "--json")
    assert done.returncode == 0, batch_json(done)["failures"]
    assert sorted(p.name for p in plain.iterdir()) == sorted(DECOMPRESSED.values())
    for name in ("tilt.st", "tilt.ali", "tilt.rec", "EMD-3197.map"):  # back under the name it started with
        with mrcfile.open(src / name) as original, mrcfile.open(plain / name) as back:
            np.testing.assert_array_equal(back.data, original.data)
    again = batch_json(cli("compress", str(src), "-o", str(out), "--workers", "2", "--json"))
    assert again["skipped"] == len(COMPRESSED) and again["done"] == 0, "resumable under the new names"


def test_two_sources_with_one_target_are_refused_naming_both(tmp_path):
    from napari_mrcz import batch

    src = tmp_path / "session"
    src.mkdir()
    shutil.copyfile(data_path("mrc", "quirks", "reference_mrcfile.mrc"), src / "x.mrc")
    shutil.copyfile(data_path("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"), src / "x.mrcz")
    out = tmp_path / "plain"
    with pytest.raises(ValueError, match="x.mrc and .*x.mrcz would both be written to .*x.mrc"):
        batch.plan([src], out, compressed=False)
    with pytest.raises(ValueError, match="would both be written"):  # in place: x.mrc is the user's, not ours
        batch.plan([src], src, compressed=False)
    done = cli("decompress", str(src), "-o", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(src / "x.mrc") in done.stderr and str(src / "x.mrcz") in done.stderr
    assert str(out / "x.mrc") in done.stderr
    assert not out.exists()


def test_compressing_into_the_source_folder_twice_converts_each_source_once(tmp_path):
    src = tmp_path / "session"
    src.mkdir()
    shutil.copyfile(data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"), src / "stack.dm4")
    shutil.copyfile(data_path("mrc", "emdb", "EMD-3197.map"), src / "map.map")
    first = cli("compress", str(src), "-o", str(src), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["done"] == 2
    again = cli("compress", str(src), "-o", str(src), "--json")
    assert again.returncode == 0, again.stderr
    info = json.loads(again.stdout)
    assert (info["files"], info["skipped"]) == (2, 2), "the outputs of the first run are not sources"
    assert sorted(p.name for p in src.iterdir()) == ["map.map", "map.map.mrcz", "stack.dm4",
                                                     "stack.dm4.mrcz"]


# -- what the command prints ----------------------------------------------------------
READABLE = {
    "stack.dm4": ("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"),
    "complex.dm4": ("dm", "rsciio_2D_test-13.dm4"),  # complex128: cast to complex64, with a warning
    "rgb.dm4": ("dm", "rsciio_2D_test-8.dm4"),
    "truncated.mrc": ("mrc", "quirks", "truncated.mrc"),
    "not_an_mrc.mrc": ("mrc", "quirks", "not_an_mrc.mrc"),
}


def test_the_summary_fits_80_columns_in_fitting_units_and_names_each_failure_once(tmp_path):
    src = session_folder(tmp_path / "session", READABLE)
    done = subprocess.run([sys.executable, "-m", "napari_mrcz", "compress", str(src), "-o",
                           str(tmp_path / "out"), "--workers", "1"], capture_output=True, text=True,
                          timeout=300, env={**ENV, "COLUMNS": "80"})
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    title, head, row = lines[:3]
    assert title.startswith("napari-mrcz compress: 5 files in ")
    assert all(len(line) <= 80 for line in (title, head, row)), done.stdout
    assert head.split() == ["files", "done", "skipped", "unsupported", "failed", "in", "out", "ratio",
                            "speed"], "status words whole"
    cells = dict(zip(head.split(), re.split(r"\s{2,}", row.strip()), strict=True))
    assert [cells[k] for k in ("files", "done", "unsupported", "failed")] == ["5", "2", "1", "2"]
    for key, unit in (("in", "kB"), ("out", "kB"), ("speed", "/s")):
        value, shown_unit = cells[key].split()
        assert float(value) > 0 and shown_unit.endswith(unit) and shown_unit[0] in "BkMGT", cells
    assert "0.000" not in done.stdout
    for reason in ("follow the header", "no 'MAP ' identifier"):  # once, after the table
        assert (done.stdout + done.stderr).count(reason) == 1, done.stdout + done.stderr
    assert f"failed: {src / 'truncated.mrc'}: TruncatedFileError: the header describes" in done.stdout
    assert f"unsupported: {src / 'rgb.dm4'}: MRC cannot store RGB images" in done.stdout
    assert f"Casting {src / 'complex.dm4'} to numpy.complex64" in done.stderr, done.stderr
    assert "Casting  to" not in done.stderr


def test_format_bytes_picks_the_unit_that_fits():
    from napari_mrcz.batch import format_bytes

    assert [format_bytes(n) for n in (0, 512, 781_000, 999_999, 9_300_000, 12_340_000, 1.234e9, 5.6e12)] == [
        "0 B", "512 B", "781 kB", "1.00 MB", "9.30 MB", "12.3 MB", "1.23 GB", "5.60 TB"]
    assert format_bytes(2.38e6, "/s") == "2.38 MB/s"


def test_help_shows_defaults_and_decompress_offers_no_compression_options():
    from napari_mrcz.codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR

    text = " ".join(cli("compress", "--help").stdout.split())
    assert f"blosc compressor (default: {DEFAULT_SAVE_COMPRESSOR}; OME-Zarr: zstd, lz4 for --ngff 0.4)" \
        in text
    assert f"compression level (default: {DEFAULT_SAVE_CLEVEL}; OME-Zarr: 3, 5 for --ngff 0.4)" in text
    assert f"(default: {os.cpu_count() or 1}, one per core)" in text and "(default: blosc1" in text
    assert "SRC/a/b.dm4 -> DEST/a/b.dm4.mrcz" in text
    text = cli("decompress", "--help").stdout
    assert "--workers" in text
    assert not [option for option in ("--compressor", "--clevel", "--backend") if option in text]
    done = cli("decompress", "x", "-o", "y", "--clevel", "3")
    assert done.returncode == 2 and "unrecognized arguments: --clevel" in done.stderr


def test_info_summarises_dm_tags_and_says_how_to_see_them(tmp_path):
    from napari_mrcz.codec.convert import convert

    dm = data_path("dm", "ncempy_08_carbon.dm3")
    target = tmp_path / "carbon.dm3.mrcz"
    assert convert(dm, target).status == "done"
    for path in (dm, target):
        brief = cli("info", str(path))
        assert brief.returncode == 0, brief.stderr
        assert len(brief.stdout) < 1200, brief.stdout
        assert "Indicated Magnification" not in brief.stdout and f"info --full {path}" in brief.stdout
        full = cli("info", "--full", str(path))
        assert "Indicated Magnification" in full.stdout and "shortened" not in full.stdout
    groups = "DM image tags    Acquisition, DataBar, EELS, Meta Data, Microscope Info"
    assert groups in cli("info", str(dm)).stdout
    assert '"Microscope Info": …' in cli("info", str(target)).stdout
    machine = json.loads(cli("info", "--json", str(target)).stdout)  # --json keeps everything, as before
    assert machine["json"]["dm"]["tags"]["Microscope Info"]["Indicated Magnification"] == 18500.0


def test_error_messages_give_the_units_of_their_numbers(tmp_path):
    from napari_mrcz.codec import blosc_chunks
    from napari_mrcz.codec.errors import MRCFileError
    from napari_mrcz.codec.source import open_image
    from napari_mrcz.codec.stack import MRCStack

    from .dm_writer import image_entry, write_dm

    done = cli("info", str(data_path("mrc", "quirks", "empty.mrc")))
    assert done.returncode == 1 and "an MRC header needs 1024 bytes" in done.stderr, done.stderr
    path = tmp_path / "three.mrc"
    codec.writeMRC(np.zeros((3, 4, 4), np.float32), path)
    with pytest.raises(MRCFileError, match="out of range, the file has 3 sections"):
        codec.readMRC(path, idx=5)
    whole = tmp_path / "whole.mrcz"
    codec.writeMRC(np.arange(3 * 32 * 32, dtype=np.float32).reshape(3, 32, 32), whole, compressor="zstd")
    raw = whole.read_bytes()
    with MRCStack(whole) as stack:
        offset = stack.header.data_offset
    first_chunk_end = offset + blosc_chunks.parse_chunk_header(raw[offset:offset + 16])[6]
    cut = tmp_path / "cut.mrcz"
    cut.write_bytes(raw[: first_chunk_end + 8])  # section 1's chunk header cut short
    ends = f"should start at byte {first_chunk_end}, the file ends at byte {first_chunk_end + 8}"
    with MRCStack(cut) as stack, pytest.raises(MRCFileError, match=ends):
        stack.read(1, 2)
    cut.write_bytes(raw[: offset + 20])  # 3 chunk headers need 48 bytes
    with pytest.raises(MRCFileError, match="at least 48 bytes, the file holds 20 bytes after its header"):
        open_image(cut)
    dm = tmp_path / "short.dm4"
    write_dm(dm, [image_entry(np.zeros((4, 4), np.float32), stored=np.zeros(10, np.float32), data_type=2)])
    with pytest.raises(MRCFileError, match="needs 64 bytes of data, the Data tag holds 40 bytes"):
        open_image(dm)


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
        target = out / (source.name + ".mrcz")
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
        with mrcfile.open(movies / target.stem) as mrc:  # movie_00.mrcs.mrcz: from movie_00.mrcs
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


def test_info_into_a_pipe_that_closes_early_stops_quietly():
    """``napari-mrcz info FILES | head -1``: no BrokenPipeError traceback."""
    files = [str(data_path("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"))] * 200
    info = subprocess.Popen([sys.executable, "-m", "napari_mrcz", "info", "--full", *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    info.stdout.readline()
    info.stdout.close()  # the reader goes away, as head does
    _, err = info.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert info.returncode == 1


def test_a_url_s_password_and_signature_are_never_printed():
    url = "https://someone:hunter2@127.0.0.1:9/tomo.mrc?X-Amz-Signature=deadbeef&part=1"  # nothing listens
    done = cli("info", url, timeout=120)
    assert done.returncode == 1
    assert "hunter2" not in done.stderr and "deadbeef" not in done.stderr, done.stderr
    assert "https://***@127.0.0.1:9/tomo.mrc?X-Amz-Signature=***&part=1" in done.stderr, done.stderr
