"""Header edits in place (codec/header_edit.py, codec/journal.py, ``napari-mrcz edit``), on real files.

The journal is tested by killing a real process (SIGKILL) at every step of
an edit, and in the middle of every write: the file opened afterwards holds
the old header or the new one, never a mixture, and its data bytes are those
it had.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mrcfile
import mrcz
import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.errors import MRCFileError
from napari_mrcz.codec.header import HEADER_BYTES, MRCHeaderWarning
from napari_mrcz.codec.header_edit import edit_header
from napari_mrcz.codec.journal import journal_path
from napari_mrcz.codec.stack import MRCStack

from .conftest import chunks_by_hand, data_path


def data_bytes(path: Path) -> str:
    """SHA-256 of everything after the header and the extended header: the data, as stored."""
    with mrcfile.open(path, permissive=True, header_only=True) as m:
        offset = HEADER_BYTES + int(m.header.nsymbt)
    return hashlib.sha256(path.read_bytes()[offset:]).hexdigest()


@pytest.fixture
def emdb(tmp_path) -> Path:
    path = tmp_path / "EMD-3197.map"
    shutil.copyfile(data_path("mrc", "emdb", "EMD-3197.map"), path)
    return path


def problems(path: Path) -> list[str]:
    """What mrcfile.validate says about a file (its first line names the file)."""
    out = io.StringIO()
    mrcfile.validate(str(path), print_file=out)
    return out.getvalue().splitlines()[1:]


def test_a_deposited_map_gets_its_pixel_size_and_microscope_in_place(emdb):
    before_data, before_values, before_problems = data_bytes(emdb), mrcfile.read(emdb), problems(emdb)
    with mrcfile.open(emdb, permissive=True) as m:
        start = (int(m.header.nxstart), int(m.header.nystart), int(m.header.nzstart))
    done = edit_header(emdb, pixelsize=13.48, voltage=300.0, C3=2.7, gain=1.0, origin=(10.0, 20.0, 30.0),
                       label="pixel size fixed")
    assert done.how == "in place"
    assert done.before["pixelsize"] == pytest.approx([11.4] * 3) and done.after["pixelsize"] == pytest.approx(
        [13.48] * 3)
    assert data_bytes(emdb) == before_data, "not one data byte changed"
    with mrcfile.open(emdb, permissive=True) as m:
        assert m.voxel_size.tolist() == pytest.approx((13.48, 13.48, 13.48))
        assert (float(m.header.origin.x), float(m.header.origin.y), float(m.header.origin.z)) == (30.0, 20.0,
                                                                                                   10.0)
        assert m.header.label[int(m.header.nlabl) - 1].decode().strip() == "pixel size fixed"
        assert (int(m.header.nxstart), int(m.header.nystart), int(m.header.nzstart)) == start, "kept"
        np.testing.assert_array_equal(m.data, before_values)
    _, meta = mrcz.readMRC(str(emdb))
    assert meta["voltage"] == pytest.approx(300.0) and meta["C3"] == pytest.approx(2.7)
    ours, our_meta = codec.readMRC(emdb)
    np.testing.assert_allclose(our_meta["pixelsize"], [13.48] * 3, rtol=1e-6)
    assert problems(emdb) == before_problems, "no new problem (EMD-3197 has nversion 0, as deposited)"


def test_zero_sampling_is_set_so_that_every_reader_sees_the_new_pixel_size(tmp_path, rng):
    """python-mrcz issue 13: MX/MY left 0, Chimera and mrcfile read 1 Å."""
    path = tmp_path / "zero_m.mrc"
    codec.writeMRC(rng.normal(size=(4, 16, 20)).astype(np.float32), path, pixelsize=[2.0, 2.0, 2.0])
    with mrcfile.open(path, mode="r+", permissive=True) as m:
        m.header.mx = m.header.my = m.header.mz = 0
    done = edit_header(path, pixelsize=(3.0, 1.5, 1.25))
    assert done.after["sampling"] == [20, 16, 4]
    with mrcfile.open(path, permissive=True) as m:
        assert (m.voxel_size.z, m.voxel_size.y, m.voxel_size.x) == pytest.approx((3.0, 1.5, 1.25))


@pytest.mark.parametrize("name", ["float32_zstd_meta.mrcz", "int16_none_meta.mrc",
                                  "float32_zstd_bigendian.mrcz"])
def test_files_python_mrcz_wrote_are_edited_and_python_mrcz_reads_the_new_values(tmp_path, name):
    path = tmp_path / name
    shutil.copyfile(data_path("mrc", "mrcz-0.6.0", name), path)
    before, data = data_bytes(path), mrcz.readMRC(str(path))[0]
    edit_header(path, pixelsize=[4.0, 2.5, 2.5], voltage=200.0, gain=2.0)
    assert data_bytes(path) == before
    again, meta = mrcz.readMRC(str(path))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(data))
    np.testing.assert_allclose(meta["pixelsize"], [4.0, 2.5, 2.5], rtol=1e-6)
    assert (meta["voltage"], meta["gain"]) == (200.0, 2.0)


def test_json_that_fits_is_rewritten_in_place_and_json_that_does_not_rewrites_the_file(tmp_path, rng):
    path = tmp_path / "meta.mrcz"
    volume = rng.normal(size=(6, 32, 32)).astype(np.float32)
    codec.writeMRC(volume, path, compressor="zstd", meta={"note": "a long note to be shortened"})
    chunks = data_bytes(path)
    done = edit_header(path, meta={"note": "short"})
    assert done.how == "in place" and path.stat().st_size == path.stat().st_size
    assert mrcz.readMRC(str(path))[1]["note"] == "short"
    assert data_bytes(path) == chunks
    done = edit_header(path, meta={"tilt_angles": list(np.linspace(-60, 60, 41))})
    assert done.how == "rewritten"
    data, meta = mrcz.readMRC(str(path))
    assert meta["note"] == "short" and len(meta["tilt_angles"]) == 41
    np.testing.assert_array_equal(np.asarray(data), volume)
    assert data_bytes(path) == chunks, "the compressed chunks copied as they are"
    with MRCStack(path) as stack:  # and their index after them, whose offsets count from the data
        assert stack._index.loaded
        assert [stack.chunk_span(i)[:2] for i in range(6)] == chunks_by_hand(path)
    assert edit_header(path, meta={"more": "x" * 10}).how == "in place", "room was left for later edits"
    assert not list(tmp_path.glob(".*")), "no temporary file or journal is left"


def test_dm_gzip_and_a_non_json_extended_header_are_refused(tmp_path):
    dm = tmp_path / "image.dm4"
    shutil.copyfile(data_path("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm4"), dm)
    before = dm.read_bytes()
    with pytest.raises(MRCFileError, match="DM3/DM4 files are read-only here: save them as MRC or MRCZ"):
        edit_header(dm, pixelsize=1.0)
    gz = tmp_path / "emd_3197.map.gz"
    shutil.copyfile(data_path("mrc", "emdb", "emd_3197.map.gz"), gz)
    with pytest.raises(MRCFileError, match="cannot be edited in place: decompress it first"):
        edit_header(gz, pixelsize=1.0)
    assert dm.read_bytes() == before
    with pytest.raises(MRCFileError, match="pixelsize must be one or three"):
        edit_header(data_path("mrc", "emdb", "EMD-3197.map"), pixelsize=[0.0, 1.0, 1.0], dry_run=True)


# -- killed mid-edit ----------------------------------------------------------------------
KILLER = r"""
import os, signal, sys, json
from napari_mrcz.codec.header_edit import edit_header

path, kill_at, half = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "half"
changes = json.loads(sys.argv[4])
calls = 0

def hooked(name, real):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            if half and name in ("write", "pwrite"):  # a torn write: half of the bytes, then the end
                data = bytes(args[1])
                real(args[0], data[: len(data) // 2], *args[2:])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

for name in ("write", "pwrite", "fsync", "unlink", "replace", "rename"):
    setattr(os, name, hooked(name, getattr(os, name)))
edit_header(path, **changes)
print(calls, flush=True)
"""

EDITS = {
    "header": {"pixelsize": 13.48, "voltage": 300.0, "label": "edited"},
    "header and JSON in place": {"pixelsize": 2.5, "meta": {"note": "y"}},
    "JSON that does not fit": {"pixelsize": 2.5, "meta": {"note": "z" * 5000}},
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_process_killed_at_any_step_leaves_the_old_header_or_the_new_never_a_mixture(tmp_path, rng, edit):
    original = tmp_path / "original.mrcz"
    codec.writeMRC(rng.normal(size=(4, 64, 64)).astype(np.float32), original, compressor="zstd",
                   meta={"note": "x" * 40})
    reference = tmp_path / "reference.mrcz"
    shutil.copyfile(original, reference)
    edit_header(reference, **EDITS[edit])
    old, new = original.read_bytes(), reference.read_bytes()
    old_data, new_data = data_bytes(original), data_bytes(reference)
    assert old_data == new_data
    seen = {"old": 0, "new": 0}
    kill_at, finished = 1, False
    while not finished:
        for half in ("whole", "half"):
            path = tmp_path / f"killed-{kill_at}-{half}.mrcz"
            shutil.copyfile(original, path)
            done = subprocess.run([sys.executable, "-c", KILLER, str(path), str(kill_at), half,
                                   json.dumps(EDITS[edit])], capture_output=True, text=True, timeout=120)
            finished = finished or done.returncode == 0
            assert done.returncode in (0, -9), done.stderr
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data, _ = codec.readMRC(path)  # opening finishes the edit or restores the header
            assert not journal_path(path).exists()
            state = path.read_bytes()
            assert state in (old, new), f"killed at call {kill_at} ({half}): a mixture"
            seen["old" if state == old else "new"] += 1
            if done.returncode == -9 and journal_path(path).exists() is False and caught:
                assert any(("restored" in str(w.message) or "completed" in str(w.message)
                            or "before it began" in str(w.message)) for w in caught
                           if issubclass(w.category, MRCHeaderWarning))
            assert data_bytes(path) == old_data
            path.unlink()
        kill_at += 1
        assert kill_at < 60, "the edit makes a bounded number of calls"
    assert seen["old"] and seen["new"], seen
    assert not list(tmp_path.glob(".*journal")), "no journal is left"


def test_a_journal_left_by_a_killed_edit_is_reported_when_the_file_is_opened(tmp_path, rng):
    path = tmp_path / "tomogram.mrc"
    codec.writeMRC(rng.normal(size=(3, 32, 32)).astype(np.float32), path, pixelsize=[1.0, 1.0, 1.0])
    old = path.read_bytes()
    # killed at the 3rd call: the journal is written and synced, the header not yet overwritten
    done = subprocess.run([sys.executable, "-c", KILLER, str(path), "3", "whole",
                           json.dumps({"pixelsize": 5.0})], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9 and journal_path(path).exists(), done.stderr
    said = r"tomogram.mrc: an interrupted header edit was (restored|completed)"
    with pytest.warns(MRCHeaderWarning, match=said):
        _, meta = codec.readMRC(path)
    assert not journal_path(path).exists()
    assert path.read_bytes() == old and meta["pixelsize"].tolist() == [1.0, 1.0, 1.0]


def test_a_damaged_or_hostile_journal_never_writes_into_the_file(tmp_path, rng):
    path = tmp_path / "map.mrc"
    codec.writeMRC(rng.normal(size=(2, 16, 16)).astype(np.float32), path, pixelsize=[1.0, 1.0, 1.0])
    before = path.read_bytes()
    journal_path(path).write_bytes(rng.bytes(300))  # not a journal (a cut-off one looks the same)
    with pytest.warns(MRCHeaderWarning, match="interrupted before it began; the file is unchanged"):
        codec.readMRC(path)
    assert path.read_bytes() == before and not journal_path(path).exists()
    from napari_mrcz.codec.journal import _encode

    journal_path(path).write_bytes(_encode(len(before), [(len(before) - 10, b"x" * 20, b"y" * 20)]))
    with pytest.raises(MRCFileError, match="is not a journal of an edit of this file"):
        codec.readMRC(path)
    assert path.read_bytes() == before, "a region past the end is never written"


# -- the command line ------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_mrcz", *args], capture_output=True, text=True,
                          timeout=120)


def test_edit_on_the_command_line_dry_run_first(emdb, tmp_path):
    before = emdb.read_bytes()
    shown = cli("edit", str(emdb), "--pixel-size", "13.48", "--voltage", "300", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "would change" in shown.stdout
    assert "pixelsize: 11.4, 11.4, 11.4 -> 13.48, 13.48, 13.48" in shown.stdout
    assert "voltage: 0 -> 300" in shown.stdout
    assert emdb.read_bytes() == before, "a dry run writes nothing"
    done = cli("edit", str(emdb), "--pixel-size", "4,3,3", "--origin", "1,2,3", "--c3", "2.7",
               "--gain", "1.5", "--label", "fixed")
    assert done.returncode == 0 and "changed in place" in done.stdout, done.stderr
    with mrcfile.open(emdb, permissive=True) as m:
        assert (m.voxel_size.z, m.voxel_size.y, m.voxel_size.x) == pytest.approx((4.0, 3.0, 3.0))
    dm = tmp_path / "x.dm3"
    shutil.copyfile(data_path("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm3"), dm)
    refused = cli("edit", str(dm), "--gain", "2")
    assert refused.returncode == 1 and str(dm) in refused.stderr and "read-only" in refused.stderr
    assert cli("edit", str(emdb)).returncode == 2, "nothing to change"
    assert cli("edit", str(emdb), "--pixel-size", "1,2").returncode == 2
