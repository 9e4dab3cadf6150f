"""Readers for testing the fuzzer's own judgement (``tests/test_fuzz.py``), not the codec.

:func:`slow_start_and_hang` behaves like a real read on a loaded machine: its
first read in a process is slow (as napari's import is), a case made from a
seed named ``*slow*`` is slow the first time it is read anywhere, and one
made from a seed named ``*hang*`` never finishes. Seeds themselves (read to
warm up) are quick.
"""

from __future__ import annotations

import time
from pathlib import Path

_started = False


def slow_start_and_hang(path: str) -> None:
    """Read nothing; take the time a hang, a slow start or a passing slowdown would."""
    global _started
    name = Path(path).name
    if not _started:
        _started = True
        time.sleep(2.0)  # the first read in a process: imports
    if not name.startswith("case"):
        return
    if "hang" in name:
        time.sleep(3600)
    marker = Path(path).with_name(name + ".seen")
    if "slow" in name and not marker.exists():
        marker.touch()  # the machine was busy this once
        time.sleep(2.0)
