"""``napari-mrcz compress``/``decompress`` from the plain install: no dask, distributed or rich.

The command runs in a Python that sees napari-mrcz and its base dependencies
only (:mod:`tests.plain_install`), as ``pip install .`` without extras leaves
it; the worker processes it spawns inherit that.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from pathlib import Path

import mrcfile
import mrcz
import numpy as np
import pytest

from .conftest import session_folder
from .plain_install import plain_python
from .test_cli import shown

NOT_INSTALLED = ("dask", "distributed", "rich", "napari", "qtpy", "magicgui", "npe2")

FILES = {
    "dm/stack.dm4": ("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4"),
    "dm/image.dm3": ("dm", "ncempy_dmTest_float32_nonSquare_diffPixelSize.dm3"),
    "dm/rgb.dm4": ("dm", "rsciio_2D_test-8.dm4"),
    "emdb/emd_3197.map.gz": ("mrc", "emdb", "emd_3197.map.gz"),
    "mrcz/meta.mrcz": ("mrc", "mrcz-0.6.0", "float32_zstd_meta.mrcz"),
    "tilt/tilt.st": ("mrc", "quirks", "reference_mrcfile.mrc"),
    "broken/truncated.mrc": ("mrc", "quirks", "truncated.mrc"),
}


@pytest.fixture
def plain_env(tmp_path) -> tuple[list[str], dict[str, str]]:
    """A Python in which only napari-mrcz, numpy, python-blosc and platformdirs can be imported."""
    python, env = plain_python(tmp_path / "plain-install")
    for name in NOT_INSTALLED:
        check = subprocess.run([*python, "-c", f"import {name}"], capture_output=True, text=True,
                               env=env, timeout=60)
        assert check.returncode != 0 and f"No module named '{name}'" in check.stderr, name
    return python, env


@pytest.fixture
def folder(tmp_path) -> Path:
    return session_folder(tmp_path / "session", FILES)


def plain_cli(plain: tuple[list[str], dict[str, str]], *args: str) -> subprocess.CompletedProcess:
    python, env = plain
    return subprocess.run([*python, "-m", "napari_mrcz", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_compress_and_decompress_without_dask_distributed_or_rich(plain_env, folder, tmp_path):
    out = tmp_path / "out"
    done = plain_cli(plain_env, "compress", str(folder), "-o", str(out), "--workers", "2", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, "one broken file: the batch fails, after doing the rest"
    info = json.loads(done.stdout)
    assert info["runner"] == "processes"
    assert (info["done"], info["unsupported"], info["failed"]) == (5, 1, 1)
    assert Path(info["failures"][0]["source"]).name == "truncated.mrc"
    for outcome in info["outcomes"]:
        if outcome["status"] != "done":
            continue
        source, target = Path(outcome["source"]), Path(outcome["target"])
        name = source.name if source.suffix == ".mrcz" else source.name + ".mrcz"
        assert target == out / source.relative_to(folder).parent / name
        theirs, meta = mrcz.readMRC(str(target))  # verified by us, read back by python-mrcz
        want = shown(source)
        np.testing.assert_array_equal(np.asarray(theirs).reshape(want.shape), want, err_msg=source.name)
        assert meta["napari_mrcz_batch"]["source"] == str(source)
    assert not [p for p in out.rglob(".*")], "no temporary files are left"

    again = plain_cli(plain_env, "compress", str(folder), "-o", str(out), "--workers", "2")
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    table = again.stdout.splitlines()
    assert table[0].startswith("napari-mrcz compress: 7 files in ")
    assert table[1].split() == ["files", "done", "skipped", "unsupported", "failed", "in", "out", "ratio",
                                "speed"], "a plain-text table without rich"
    assert table[2].split()[:5] == ["7", "0", "5", "1", "1"], "what is done is skipped"
    assert "on 2 worker processes" in again.stderr

    plain = tmp_path / "plain"
    done = plain_cli(plain_env, "decompress", str(out), "-o", str(plain), "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    info = json.loads(done.stdout)
    assert info["runner"] == "processes" and info["done"] == 5
    names = {str(p.relative_to(plain)) for p in plain.rglob("*") if p.is_file()}
    assert names == {"dm/stack.dm4.mrc", "dm/image.dm3.mrc", "emdb/emd_3197.map.gz.mrc", "mrcz/meta.mrc",
                     "tilt/tilt.st"}
    for outcome in info["outcomes"]:
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            assert mrcfile.validate(outcome["target"]), report.getvalue()
        with mrcfile.open(outcome["target"]) as mrc:
            theirs, _ = mrcz.readMRC(outcome["source"])
            np.testing.assert_array_equal(np.asarray(mrc.data).reshape(np.shape(theirs)), theirs)


def test_scheduler_without_distributed_says_what_to_install(plain_env, folder, tmp_path):
    out = tmp_path / "out"
    done = plain_cli(plain_env, "compress", str(folder), "-o", str(out), "--scheduler", "tcp://127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert 'pip install ".[batch]"' in done.stderr and "--scheduler" in done.stderr
    assert not out.exists(), "nothing is started"


def test_a_killed_worker_process_loses_no_file(plain_env, tmp_path):
    import psutil

    movies = tmp_path / "movies"
    movies.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        mrcz.writeMRC(rng.poisson(1.0, size=(8, 2048, 2048)).astype(np.int8), str(movies / f"m{i}.mrc"))
    python, env = plain_env
    out = tmp_path / "out"
    command = subprocess.Popen([*python, "-m", "napari_mrcz", "compress", str(movies), "-o", str(out),
                                "--workers", "2", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    killed = None
    while command.poll() is None and killed is None:
        for child in psutil.Process(command.pid).children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()) and list(out.glob("*.mrcz")):
                    child.kill()  # a worker, once the batch is under way
                    killed = child.pid
                    break
            except psutil.Error:
                continue
        time.sleep(0.05)
    stdout, stderr = command.communicate(timeout=300)
    assert killed is not None, "the batch ended before a worker could be killed"
    info = json.loads(stdout)
    # the killed worker's job runs again: written again, or found done and verified if the worker
    # had renamed its file just before it died
    assert command.returncode == 0 and info["failed"] == 0, stderr
    assert info["done"] + info["skipped"] == 12 and info["skipped"] <= 1, info
    for i in range(12):
        np.testing.assert_array_equal(mrcz.readMRC(str(out / f"m{i}.mrc.mrcz"))[0],
                                      mrcz.readMRC(str(movies / f"m{i}.mrc"))[0])
    assert not list(out.glob(".*")), "no temporary file left"
