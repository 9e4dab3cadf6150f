"""A fixed-seed fuzz run over every shared file: hostile input gives a clean error, nothing else.

``make fuzz N=200000`` runs the same fuzzer longer, with a random seed.
"""

from __future__ import annotations

from .conftest import data_path
from .fuzzer import fuzz


def test_3000_mutated_files_read_or_fail_cleanly(tmp_path):
    data_path()  # the seeds are the shared files
    done, defects = fuzz(3000, seed=20261124, workers=2, keep=tmp_path / "defects")
    assert done == 3000
    report = "\n".join(f"case {d.case} ({d.seed_file}; {', '.join(d.mutations)}): {d.why} [{d.kept}]"
                       for d in defects)
    assert not defects, f"{len(defects)} defects:\n{report}"
