"""Shared fixtures: the real test files in ../shared/data and small helpers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MRCZ_DATA", ROOT.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """A file of the shared test data; skips (saying why) only where the folder is absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA} (set NAPARI_MRCZ_DATA)")
    return DATA.joinpath(*parts)


def session_folder(folder: Path, files: dict[str, tuple[str, ...]]) -> Path:
    """``folder`` filled with shared files: ``{"a/b.dm4": ("dm", "x.dm4"), ...}`` (paths inside it: data)."""
    for rel, parts in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_path(*parts), folder / rel)
    return folder


def expected(folder: str) -> dict:
    """The expected.json of one data folder ({} when the data is absent, so nothing is generated)."""
    path = DATA / folder / "expected.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """Pyramids built by the tests go to a folder of the run, never to the user's cache."""
    old = os.environ.get("NAPARI_MRCZ_CACHE_DIR")
    os.environ["NAPARI_MRCZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("pyramid-cache"))
    yield
    if old is None:
        os.environ.pop("NAPARI_MRCZ_CACHE_DIR", None)
    else:
        os.environ["NAPARI_MRCZ_CACHE_DIR"] = old


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_stack(rng: np.random.Generator, dtype: str, shape=(3, 20, 24)) -> np.ndarray:
    """Random data that uses the type's range (negative values included where it has them)."""
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dt)
    if dt.kind == "f":
        return (rng.normal(size=shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


def chunks_by_hand(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of each blosc chunk of a little-endian MRCZ file, from its chunk headers read here."""
    raw = Path(path).read_bytes()
    pos, found = 1024 + int.from_bytes(raw[92:96], "little"), []  # NSYMBT: the extended header's size
    for _ in range(int.from_bytes(raw[8:12], "little")):
        cbytes = int.from_bytes(raw[pos + 12:pos + 16], "little")
        found.append((pos, cbytes))
        pos += cbytes
    return found


def open_handles() -> int:
    """Files (and other handles) this process holds open: descriptors on POSIX, handles on Windows."""
    import psutil

    me = psutil.Process()
    return me.num_handles() if os.name == "nt" else me.num_fds()


def kill_hard(process: subprocess.Popen) -> None:
    """Kill a subprocess and what it started at once, as ``kill -9`` or a power cut would.

    POSIX kills its session (start it with ``start_new_session=True``);
    Windows terminates the process and its children.
    """
    if hasattr(os, "killpg"):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for member in family:
        member.kill()
    process.kill()


def script(name: str) -> str:
    """The console script ``name`` installed beside this Python (``name.exe`` on Windows)."""
    import shutil
    import sys

    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed beside {sys.executable}"
    return found


# -- napari ------------------------------------------------------------------------------
PLUGIN = "napari-mrcz"


@pytest.fixture
def viewer(make_napari_viewer):
    """A napari viewer in a real (shown) window."""
    return make_napari_viewer(show=True)


def dock(viewer):
    """The plugin's dock widget, added to ``viewer``'s window."""
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "MRCZ metadata")
    return w


def type_into(qtbot, field, text: str) -> None:
    """Select a spin box's text, type ``text`` and press Enter, as a user does."""
    from qtpy.QtCore import Qt

    edit = field.native.lineEdit()
    field.native.setFocus()
    edit.selectAll()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    field.native.clearFocus()  # editing finished: Qt keeps a valid value


# -- servers on 127.0.0.1 for remote files (https://, s3://): see remote_servers.py ----------
from .remote_servers import _proxy_server, http_url, proxy, s3_url, served  # noqa: E402, F401
