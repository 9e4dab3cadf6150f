"""A fixed-seed fuzz run over every shared file: hostile input gives a clean error, nothing else.

``make fuzz N=200000`` runs the same fuzzer longer, with a random seed.
"""

from __future__ import annotations

import os

import pytest

from .conftest import data_path
from .fuzzer import fuzz


@pytest.mark.skipif(os.name == "nt", reason="the fuzzer watches its children through selectors on pipes, "
                                             "which Windows' select() cannot wait on")
def test_3000_mutated_files_read_or_fail_cleanly(tmp_path):
    data_path()  # the seeds are the shared files
    done, defects = fuzz(3000, seed=20261124, workers=2, keep=tmp_path / "defects")
    assert done == 3000
    report = "\n".join(f"case {d.case} ({d.seed_file}; {', '.join(d.mutations)}): {d.why} [{d.kept}]"
                       for d in defects)
    assert not defects, f"{len(defects)} defects:\n{report}"
