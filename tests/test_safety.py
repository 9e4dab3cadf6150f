"""Bad input never crashes, hangs or over-allocates; a failed write never damages a file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec import MRCFileError

from .conftest import data_path, make_stack, open_handles


class Exploding:
    """An array-like whose section ``bad`` fails, as a lazy source or a full disk would."""

    def __init__(self, data: np.ndarray, bad: int, error: type[BaseException]) -> None:
        self.data, self.bad, self.error = data, bad, error
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, i):
        if i == self.bad:
            raise self.error("failed midway")
        return self.data[i]


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_a_failed_write_leaves_the_old_file_intact(tmp_path, rng, compressor, error):
    path = tmp_path / "keep.mrcz"
    codec.writeMRC(make_stack(rng, "float32"), path, compressor=compressor)
    before = path.read_bytes()
    new = make_stack(rng, "float32", shape=(6, 20, 24))
    with pytest.raises(error):
        codec.writeMRC(Exploding(new, 4, error), path, compressor=compressor)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.mrcz"], "no temporary file left behind"


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_a_failed_idx_write_is_rolled_back(tmp_path, rng, compressor):
    path = tmp_path / "keep.mrcz"
    data = make_stack(rng, "float32", shape=(4, 20, 24))
    codec.writeMRC(data, path, compressor=compressor)
    before = path.read_bytes()
    new = make_stack(rng, "float32", shape=(3, 20, 24))
    idx = 4 if compressor else 2
    with pytest.raises(KeyboardInterrupt):
        codec.writeMRC(Exploding(new, 2, KeyboardInterrupt), path, idx=idx)
    assert path.read_bytes() == before


@pytest.mark.skipif(os.name == "nt", reason="Windows files have no POSIX permission bits")
def test_new_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        codec.writeMRC(np.zeros((1, 4, 4), np.float32), tmp_path / "p.mrc")
    finally:
        os.umask(old)
    assert (tmp_path / "p.mrc").stat().st_mode & 0o777 == 0o644


def test_truncation_anywhere_gives_a_clear_error(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(4, 32, 32)) // 64
    full = tmp_path / "full.mrcz"
    codec.writeMRC(data, full, compressor="zstd", meta={"a": 1})
    raw = full.read_bytes()
    cut = tmp_path / "cut.mrcz"
    chunks_end = len(raw) - codec.chunk_trailer.nbytes(4)  # then the chunks' index
    for size in list(range(0, 1100, 37)) + list(range(1100, chunks_end, 101)):
        cut.write_bytes(raw[:size])
        with pytest.raises(MRCFileError) as info:
            codec.readMRC(cut)
        assert str(cut) in str(info.value)
    for size in range(chunks_end, len(raw), 7):  # a cut into the index: the chunks are whole, and walked
        cut.write_bytes(raw[:size])
        image, _ = codec.readMRC(cut)
        np.testing.assert_array_equal(image, data)


def test_random_corruption_reads_or_raises_value_or_os_error(tmp_path, rng):
    data = make_stack(rng, "int16", shape=(3, 32, 32)) // 64
    good = tmp_path / "good.mrcz"
    codec.writeMRC(data, good, compressor="lz4")
    raw = good.read_bytes()
    bad = tmp_path / "bad.mrcz"
    outcomes = {"read": 0, "error": 0}
    for _ in range(400):
        mutated = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=rng.integers(1, 6)):
            mutated[pos] = rng.integers(0, 256)
        bad.write_bytes(bytes(mutated))
        try:
            image, _ = codec.readMRC(bad)
        except (ValueError, OSError) as exc:
            assert str(bad) in str(exc)
            outcomes["error"] += 1
        else:
            assert image.size <= 64 * data.size
            outcomes["read"] += 1
    assert outcomes["error"] > 0 and outcomes["read"] > 0


def test_header_fields_that_would_allocate_terabytes_are_refused(tmp_path):
    header = bytearray(codec.header.build_header(
        shape=(1, 4, 4), mode=2, byteorder="<", pixelsize_A=np.ones(3), sampling=(1, 4, 4),
        ispg=0, stats=None, voltage=0, C3=0, gain=1))
    for nz, mode in ((1 << 20, 2), (1 << 28, 6002)):
        header[0:16] = np.array([1 << 14, 1 << 14, nz, mode], "<i4").tobytes()
        path = tmp_path / "big.mrcz"
        path.write_bytes(bytes(header) + bytes(4096))
        with pytest.raises(MRCFileError, match="truncated|missing"):
            codec.readMRC(path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(MRCFileError, match="directory"):
        codec.readMRC(tmp_path)
    with pytest.raises(FileNotFoundError):
        codec.readMRC(tmp_path / "nope.mrc")


def test_files_dropped_without_close_release_their_descriptors():
    """napari keeps a file open as long as its layer; a dropped layer must not leak the descriptor."""
    import gc

    from napari_mrcz.codec.source import open_image

    paths = [data_path("dm", "rsciio_2D_test-6.dm3"), data_path("mrc", "mrcz-0.6.0", "float32_zstd.mrcz"),
             data_path("mrc", "emdb", "EMD-3197.map")]
    gc.collect()
    before = open_handles()
    for _ in range(300):
        for path in paths:
            source = open_image(path)
            source.sample_frame()
            del source
    gc.collect()
    assert open_handles() <= before + 2


def test_a_lazy_mrcz_source_is_written_to_mrcz_without_deadlock(tmp_path):
    """Transcoding section by section: the writer holds blosc's settings while the source decodes.

    A fresh process, where python-blosc (not blosc2) decodes version-2 chunks: this hung before.
    """
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from napari_mrcz import codec\n"
        "from napari_mrcz.codec.export import Sections\n"
        "data = np.arange(6 * 64 * 64, dtype=np.float32).reshape(6, 64, 64)\n"
        "codec.writeMRC(data, sys.argv[1], compressor='zstd')\n"
        "stack = codec.MRCStack(sys.argv[1])\n"
        "lazy = Sections(lambda i: stack.read(i, i + 1)[0], 6, (64, 64), np.float32)\n"
        "codec.writeMRC(lazy, sys.argv[2], compressor='lz4', n_threads=2)\n"
        "print(np.array_equal(codec.readMRC(sys.argv[2])[0], data))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.mrcz"), str(tmp_path / "b.mrcz")],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def test_a_write_error_names_the_file_the_user_asked_for_not_the_temporary_file(tmp_path, rng):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    target = blocker / "out.mrc"  # its folder is a file: the temporary file cannot be made
    with pytest.raises(OSError) as caught:
        codec.writeMRC(make_stack(rng, "float32"), target)
    assert str(target) in str(caught.value) and ".part" not in str(caught.value)

    # a disk that fills up midway (a file size limit, as quotas do): the error names the target
    script = ("import resource, signal, sys, numpy as np\n"
              "from napari_mrcz import codec\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
              "try:\n"
              "    codec.writeMRC(np.zeros((8, 256, 256), np.float32), sys.argv[1])\n"
              "except OSError as exc:\n"
              "    print(exc)\n")
    full = tmp_path / "full.mrc"
    done = subprocess.run([sys.executable, "-c", script, str(full)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert str(full) in done.stdout and ".part" not in done.stdout, done.stdout
    assert "File too large" in done.stdout
    assert not full.exists() and os.listdir(tmp_path) == ["not-a-folder"], "nothing half-written is left"
