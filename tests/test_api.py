"""The codec's public surface: python-mrcz 0.6.0's names, signatures and defaults."""

from __future__ import annotations

import inspect
import subprocess
import sys
from concurrent.futures import Future

import mrcz
import numpy as np
import pytest

from napari_mrcz import codec

from .conftest import make_stack

SAME_SIGNATURE = ["readMRC", "writeMRC", "readMRCHeader", "writeMRCHeader", "defaultHeader",
                  "setDefaultThreads"]


#: Our additions, after all of python-mrcz's arguments and with defaults that change nothing.
EXTENSIONS = {"writeMRC": {"keepbits": None, "max_error": 0.01}}


@pytest.mark.parametrize("name", SAME_SIGNATURE)
def test_signature_is_python_mrczs(name):
    ours = inspect.signature(getattr(codec, name)).parameters
    theirs = inspect.signature(getattr(mrcz, name)).parameters
    extra = EXTENSIONS.get(name, {})
    assert list(ours) == list(theirs) + list(extra), "python-mrcz's arguments, in order, then ours"
    assert {k: ours[k].default for k in extra} == extra, "lossless unless asked"
    for key, param in theirs.items():
        assert ours[key].default == param.default, key
        assert ours[key].kind == param.kind, key


@pytest.mark.parametrize("name", [n for n in mrcz.__all__ if n != "test"])
def test_every_python_mrcz_name_exists(name):
    assert hasattr(codec, name)


@pytest.mark.parametrize("alias, name", [
    ("read_mrc", "readMRC"), ("write_mrc", "writeMRC"), ("async_read_mrc", "asyncReadMRC"),
    ("async_write_mrc", "asyncWriteMRC"), ("read_mrc_header", "readMRCHeader"),
    ("write_mrc_header", "writeMRCHeader"), ("default_header", "defaultHeader"),
    ("set_default_threads", "setDefaultThreads"), ("read_dm4", "readDM4"),
    ("async_read_dm4", "asyncReadDM4")])
def test_snake_case_aliases_are_the_same_objects(alias, name):
    assert getattr(codec, alias) is getattr(codec, name)


def test_flags_and_tables():
    assert codec.BLOSC_PRESENT and codec.CAN_COMPRESS
    assert codec.BLOSC2_PRESENT is True  # the test environment installs the blosc2 extra
    for key, mode in mrcz.ioMRC.REVERSE_CCPEM_ENUM.items():
        assert codec.REVERSE_CCPEM_ENUM[key] == mode
    assert codec.REVERSE_CCPEM_ENUM["float16"] == 12
    assert codec.REVERSE_COMPRESSOR_ENUM["lz4hc"] == 3
    assert isinstance(codec.__version__, str) and codec.__version__[0].isdigit()


def test_default_header_has_python_mrczs_keys():
    assert set(codec.defaultHeader()) == set(mrcz.defaultHeader())


def test_header_only_read_matches_full_read(tmp_path):
    path = tmp_path / "h.mrcz"
    codec.writeMRC(np.ones((3, 8, 8), np.float32), path, compressor="zstd", meta={"k": "v"})
    header, slices = codec.readMRCHeader(path)
    _, meta = codec.readMRC(path)
    assert slices == 0
    assert header.keys() == meta.keys() and header["k"] == "v"
    theirs, their_slices = mrcz.readMRCHeader(str(path))
    assert set(theirs) <= set(header) and their_slices == slices


def test_write_header_with_a_python_mrcz_header_dict(tmp_path):
    header = mrcz.defaultHeader()
    header.update(dimensions=np.array([2, 4, 6]), dtype="float32", pixelunits="\\AA",
                  pixelsize=[3.0, 2.0, 1.0], meta={"x": 1})
    with open(tmp_path / "h.mrc", "wb") as f:
        ext = codec.writeMRCHeader(f, header, 0)
        f.write(np.arange(48, dtype=np.float32).tobytes())
    assert ext == len(b'{"x": 1}')
    image, meta = mrcz.readMRC(str(tmp_path / "h.mrc"))
    np.testing.assert_array_equal(image, np.arange(48, dtype=np.float32).reshape(2, 4, 6))
    np.testing.assert_allclose(meta["pixelsize"], [3.0, 2.0, 1.0], rtol=1e-6)
    assert meta["x"] == 1


def test_async_read_and_write_return_futures(tmp_path):
    data = np.arange(2 * 16 * 16, dtype=np.int16).reshape(2, 16, 16)
    future = codec.asyncWriteMRC(data, tmp_path / "a.mrcz", compressor="zstd")
    assert isinstance(future, Future)
    assert future.result(timeout=30) is None
    future = codec.asyncReadMRC(tmp_path / "a.mrcz")
    assert isinstance(future, Future)
    image, meta = future.result(timeout=30)
    np.testing.assert_array_equal(image, data)
    failing = codec.asyncReadMRC(tmp_path / "missing.mrc")
    with pytest.raises(FileNotFoundError):
        failing.result(timeout=30)


def test_set_default_threads_is_used(tmp_path):
    from napari_mrcz.codec import blosc_chunks

    before = blosc_chunks.DEFAULT_N_THREADS
    try:
        codec.setDefaultThreads(1)
        assert blosc_chunks.threads(None) == 1
    finally:
        codec.setDefaultThreads(before)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_codec_imports_fast_and_without_napari_or_qt():
    code = (
        "import sys, time\nimport numpy\n"
        "t = time.perf_counter()\nimport napari_mrcz.codec\nt = time.perf_counter() - t\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui', 'vispy', 'blosc2')]\n"
        "print(t, bad)")
    best = min(float(_run(code).stdout.split()[0]) for _ in range(3))
    assert best < 0.3, best
    assert _run(code).stdout.split(maxsplit=1)[1].strip() == "[]"


def test_the_shipped_self_test_passes():
    result = _run("import sys\nfrom napari_mrcz import codec\nsys.exit(codec.test(verbosity=0))")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_blosc2_present_switch_is_read_at_every_call(tmp_path, rng):
    """python-mrcz's ioMRC.BLOSC2_PRESENT: False decodes with c-blosc1 only, as there."""
    from napari_mrcz.codec import ioMRC

    data = make_stack(rng, "float32", shape=(3, 16, 12))
    codec.writeMRC(data, tmp_path / "v2.mrcz", compressor="zstd")
    codec.writeMRC(data, tmp_path / "v5.mrcz", compressor="zstd", backend="blosc2")
    assert ioMRC.BLOSC2_PRESENT
    try:
        ioMRC.BLOSC2_PRESENT = False
        assert not ioMRC.BLOSC2_PRESENT
        np.testing.assert_array_equal(codec.readMRC(tmp_path / "v2.mrcz")[0], data)
        with pytest.raises(codec.MRCFileError, match=r"v5\.mrcz.*python-blosc2.*switched off"):
            codec.readMRC(tmp_path / "v5.mrcz")
    finally:
        ioMRC.BLOSC2_PRESENT = True
    np.testing.assert_array_equal(codec.readMRC(tmp_path / "v5.mrcz")[0], data)
