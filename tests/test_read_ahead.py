"""Sections read ahead for a pass in order (a remote file's 3D fill): in order, bounded, failures in place."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_mrcz.codec.read_ahead import ReadAhead


class Sections:
    """Sections that take a while each (a round trip), counting what is read at once."""

    def __init__(self, n: int, delay: float = 0.02, broken: int | None = None) -> None:
        self.n, self.delay, self.broken = n, delay, broken
        self.reads: list[int] = []
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, i: int) -> np.ndarray:
        with self.lock:
            self.reads.append(i)
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        if i == self.broken:
            raise OSError(f"https://example.org/t.mrc: section {i} failed")
        return np.full((4, 4), i, np.float32)


def test_sections_come_in_order_each_read_once_several_at_a_time():
    sections = Sections(40)
    ahead = ReadAhead(sections, 40, section_bytes=64, most=8)
    t0 = time.perf_counter()
    got = [int(ahead(i)[0, 0]) for i in range(40)]
    seconds = time.perf_counter() - t0
    ahead.close()
    assert got == list(range(40))
    assert sorted(sections.reads) == list(range(40)), "each section read once"
    assert 4 <= sections.most <= 8 + 1, sections.most  # in flight, and the one asked for
    assert seconds < 40 * sections.delay / 2, "the reads overlapped"


def test_what_is_held_ahead_stays_within_the_budget():
    ahead = ReadAhead(Sections(100), 100, section_bytes=10 << 20, budget_bytes=32 << 20, most=16)
    assert ahead.depth == 3
    assert ReadAhead(Sections(2), 2, section_bytes=1 << 30).depth == 1, "a huge section: one at a time"


def test_a_failure_is_raised_by_the_read_of_its_section_not_before():
    sections = Sections(10, broken=5)
    ahead = ReadAhead(sections, 10, section_bytes=64, most=4)
    for i in range(5):
        assert int(ahead(i)[0, 0]) == i
    with pytest.raises(OSError, match="section 5 failed"):
        ahead(5)
    assert int(ahead(6)[0, 0]) == 6, "the pass may go on past it"
    ahead.close()
    with pytest.raises(ValueError, match="closed"):
        ahead(7)


def test_a_jump_back_drops_the_sections_it_no_longer_needs():
    sections = Sections(30, delay=0.01)
    ahead = ReadAhead(sections, 30, section_bytes=64, most=4)
    ahead(20)
    assert int(ahead(2)[0, 0]) == 2
    ahead.close()
    assert len(sections.reads) <= 12, sections.reads
