"""Reading and saving where POSIX calls are missing (Windows): the portable path, exercised on Linux.

The tests in this file run twice: here, on whatever this system has, and in a
subprocess that removes the POSIX-only calls and gives ``os.replace``
Windows' rule (``tests/without_posix.py``). So do the codec's read,
lazy-frame and save-over tests (``test_the_portable_path_passes``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec import positioned
from napari_mrcz.codec.dm import DMFile
from napari_mrcz.codec.errors import MRCFileError
from napari_mrcz.codec.source import open_image
from napari_mrcz.codec.stack import MRCStack

from .conftest import ROOT, data_path, make_stack
from .dm_writer import image_entry, write_dm

WINDOWS_RULE = positioned.REPLACE_NEEDS_CLOSED_FILES


def test_this_run_reads_through_the_path_it_says():
    assert positioned.HAVE_PREAD == hasattr(os, "pread")
    if "tests.without_posix" in sys.modules:
        assert not positioned.HAVE_PREAD and WINDOWS_RULE
    else:
        assert WINDOWS_RULE == (os.name == "nt")


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_threads_share_one_open_file(tmp_path, rng, compressor):
    data = make_stack(rng, "float32", shape=(24, 64, 48))
    path = tmp_path / "shared.mrcz"
    codec.writeMRC(data, path, compressor=compressor)
    order = rng.permutation(np.repeat(np.arange(24), 8))
    wrong: list[int] = []
    with MRCStack(path) as stack:
        def work(part: np.ndarray) -> None:
            for i in part:
                if not np.array_equal(stack.read(i, i + 1, n_threads=1)[0], data[i]):
                    wrong.append(int(i))
        threads = [threading.Thread(target=work, args=(part,)) for part in np.array_split(order, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrong == []


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_a_file_truncated_while_open_gives_a_clear_error(tmp_path, rng, compressor):
    data = make_stack(rng, "int16", shape=(4, 64, 64))
    path = tmp_path / "short.mrcz"
    codec.writeMRC(data, path, compressor=compressor)
    with MRCStack(path) as stack:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
        np.testing.assert_array_equal(stack.read(0, 3), data[:3])
        with pytest.raises(MRCFileError, match=r"short\.mrcz.*truncated"):
            stack.read(3, 4)


def test_dm_frames_read_through_the_same_layer(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(5, 32, 24))
    path = tmp_path / "movie.dm4"
    write_dm(path, [image_entry(data)])
    with DMFile(path) as dm:
        np.testing.assert_array_equal(dm.read(dm.main_image, 1, 4), data[1:4])


@pytest.mark.parametrize("suffix", [".mrcz", ".mrc"])
def test_saving_over_a_file_being_read_lazily(tmp_path, rng, suffix):
    """A layer reads a file; a save replaces it; the layer still shows the same values.

    On POSIX the layer keeps reading the old file. Under Windows' rule our
    readers are closed for the rename and read the new file after it: another
    layout (lz4 instead of zstd) and another type (the same values as int16).
    """
    data = make_stack(rng, "int8", shape=(6, 40, 32))
    path = tmp_path / f"same{suffix}"
    codec.writeMRC(data, path, compressor="zstd" if suffix == ".mrcz" else None)
    source = open_image(path)
    if source.cache is not None:
        np.testing.assert_array_equal(source.cache.get(0), data[0])  # the file is open and in use
    codec.writeMRC(data.astype(np.int16), path, compressor="lz4" if suffix == ".mrcz" else None)
    frames = [source.cache.get(i) for i in range(6)] if source.cache is not None else source.data
    np.testing.assert_array_equal(np.asarray(frames), data)
    assert np.asarray(frames).dtype == np.int8
    with MRCStack(path) as saved:
        assert saved.dtype == np.int16  # the file did change
    if WINDOWS_RULE:
        assert source.handle._src.generation == 1  # it did close and reopen


def test_the_batch_replaces_an_output_that_is_open(tmp_path, rng):
    """Re-compressing a session while last run's output is open in a viewer (here: this process)."""
    from napari_mrcz.codec.convert import convert

    data = make_stack(rng, "int16", shape=(5, 32, 32))
    source, target = tmp_path / "movie.mrc", tmp_path / "movie.mrcz"
    codec.writeMRC(data, source)
    assert convert(source, target, compressor="zstd").status == "done"
    shown = open_image(target)
    np.testing.assert_array_equal(shown.cache.get(2), data[2])
    again = convert(source, target, compressor="lz4", overwrite=True)
    assert again.status == "done", again.reason
    np.testing.assert_array_equal([shown.cache.get(i) for i in range(5)], data)
    with MRCStack(target) as written:
        assert written.header.compressor == "lz4"


def test_a_file_replaced_by_another_shape_is_not_misread(tmp_path, rng):
    data = make_stack(rng, "float32", shape=(4, 16, 16))
    path = tmp_path / "changed.mrcz"
    codec.writeMRC(data, path, compressor="zstd")
    with MRCStack(path) as stack:
        stack.read(0, 1)
        codec.writeMRC(np.zeros((2, 8, 8), np.float32), path, compressor="zstd")
        if WINDOWS_RULE:  # the old file is gone: say so rather than show the new one as the old
            with pytest.raises(MRCFileError, match=r"changed\.mrcz.*replaced.*open it again"):
                stack.read(0, 4)
        else:  # POSIX: the old file lives on while open
            np.testing.assert_array_equal(stack.read(0, 4), data)


@pytest.mark.parametrize("name", ["UPPER.MRC", "Mixed.Mrcz", "Tomo.REC", "Movie.DM4"])
def test_extensions_match_whatever_their_case(tmp_path, rng, name):
    from npe2 import PluginManager

    from napari_mrcz._reader import napari_get_reader

    plugins = PluginManager.instance()
    plugins.discover()
    data = make_stack(rng, "int16", shape=(3, 16, 16))
    upper, lower = tmp_path / name, tmp_path / "lower" / name.lower()
    lower.parent.mkdir()
    if name.endswith(".DM4"):
        write_dm(upper, [image_entry(data)])
    else:
        codec.writeMRC(data, upper, compressor="zstd" if name.endswith(".Mrcz") else None)
    lower.write_bytes(upper.read_bytes())
    opened = []
    for path in (upper, lower):
        offered = [r.command for r in plugins.iter_compatible_readers([str(path)])]
        assert "napari-mrcz.get_reader" in offered  # what napari asks when a file is dropped
        reader = napari_get_reader(str(path))
        assert reader is not None, path
        ((layer_data, attributes, _),) = reader(str(path))
        np.testing.assert_array_equal(np.asarray(layer_data), data)
        attributes.pop("name")
        attributes["metadata"]["mrcz"].pop("source")
        opened.append(attributes)
    assert repr(opened[0]) == repr(opened[1])  # the same layer: the case of the name changes nothing
    if name.endswith(".REC"):
        assert opened[0]["axis_labels"][0] == "z"


# The codec's read, lazy-frame and save-over tests, again on the portable path.
PORTABLE_RUNS = {
    "this file": ["tests/test_portable.py", "-k", "not portable_path_passes"],
    "shared files": ["tests/test_reference_files.py"],
    "python-mrcz's own suite": ["tests/test_python_mrcz_suite.py"],
    "DM": ["tests/test_dm.py"],
    "lazy frames": ["tests/test_lazy.py"],
    "round trips": ["tests/test_roundtrip.py"],
    "safety": ["tests/test_safety.py"],
    "napari save over": ["tests/test_napari.py", "-k", "saving_over or save_and_reopen"],
}


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(),
                    reason="the Windows emulation asks Linux's /proc which files are open")
@pytest.mark.parametrize("run", PORTABLE_RUNS)
def test_the_portable_path_passes(run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    data_path()  # the shared files, for the runs that read them
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.without_posix", "-p", "no:cacheprovider",
         *PORTABLE_RUNS[run]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert "portable path: removed pread, preadv" in out
    assert result.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0, out[-2000:]
    assert not re.search(r"\d+ (failed|error|skipped)", out), out[-6000:]
