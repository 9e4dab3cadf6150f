"""Helpers shared by the benchmarks: timing, and writing a table into docs/benchmarks.md."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def best(fn: Callable[[], object], repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(fns: dict, repeat: int) -> dict:
    """Best time of each function, running them in turn so that load hits all alike."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def publish(out: Path, stem: str, section: str, results: dict, table: str) -> None:
    """Save ``results`` as ``out/stem.json``, put ``table`` in docs/benchmarks.md's ``section``, print it."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    update_docs(out.parent / "benchmarks.md", section, table)
    print(table)


def update_docs(page: Path, section: str, table: str) -> None:
    """Replace the text between ``<!-- section:start -->`` and ``<!-- section:end -->`` in ``page``."""
    if not page.is_file():
        return
    text = page.read_text()
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        page.write_text(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
