"""Fixed-seed fuzz runs over every shared file, and over OME-Zarr folders: a clean error, nothing else.

``make fuzz N=200000`` runs the same fuzzer longer, with a random seed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_mrcz import codec
from napari_mrcz.codec.ome_zarr import have_zarr

from .conftest import data_path
from .fuzzer import fuzz

#: OME-Zarr cases of the fixed-seed run: 55-60 s on two busy cores.
ZARR_CASES = 1000
pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fuzzer watches its children through "
                                "selectors on pipes, which Windows' select() cannot wait on")


def _report(defects) -> str:
    return "\n".join(f"case {d.case} ({d.seed_file}; {', '.join(d.mutations)}): {d.why} [{d.kept}]"
                     for d in defects)


def test_3000_mutated_files_read_or_fail_cleanly(tmp_path):
    data_path()  # the seeds are the shared files
    done, defects = fuzz(3000, seed=20261124, workers=2, keep=tmp_path / "defects")
    assert done == 3000
    assert not defects, f"{len(defects)} defects:\n{_report(defects)}"


@pytest.mark.skipif(not have_zarr(), reason="OME-Zarr sources need zarr-python 3 (the zarr extra)")
def test_mutated_ome_zarr_folders_read_or_fail_cleanly(tmp_path):
    # seeds: NGFF 0.5 and 0.4 folders of ours (a 2D image, volumes of 2 levels, labels, movies) and two
    # of zarr-python's; a case damages their JSON and their chunks and shards (see tests/fuzzer.py)
    data_path()
    done, defects = fuzz(ZARR_CASES, seed=20261125, workers=2, keep=tmp_path / "defects", inputs="zarr")
    assert done == ZARR_CASES
    assert not defects, f"{len(defects)} defects:\n{_report(defects)}"


def test_a_hang_is_caught_but_a_slow_start_or_a_busy_moment_is_not(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("plain.mrc", "slow.mrc", "hang.mrc"):
        codec.writeMRC(np.zeros((2, 8, 8), np.float32), seeds / name)
    done, defects = fuzz(10, seed=7, workers=2, timeout=1.0, keep=tmp_path / "defects", data=seeds,
                         reader="tests.fuzz_targets:slow_start_and_hang")
    assert done == 10
    # every child's first read takes 2 s, twice the limit: not a defect
    assert all(d.seed_file == "hang.mrc" for d in defects), [(d.seed_file, d.why) for d in defects]
    hangs = [d for d in defects if d.why.startswith("hang")]
    assert hangs and len(hangs) == len(defects)
    assert all("and again alone" in d.why for d in hangs)
    assert all(os.path.isfile(d.kept) for d in hangs)
