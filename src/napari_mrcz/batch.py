"""``napari-mrcz compress`` / ``decompress``: whole sessions on dask.distributed.

One task per file (:func:`napari_mrcz.codec.convert.convert`), on a
LocalCluster of processes by default or on an existing cluster
(``--scheduler``). Workers read sources and write targets themselves: the
batch assumes every worker sees the same paths (a shared filesystem). The only
module of napari-mrcz that imports dask.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codec.convert import SOURCE_SUFFIXES, Outcome, already_done, convert, target_name


@dataclass
class Job:
    """One source file and its target."""

    source: Path
    target: Path
    nbytes: int


def plan(sources: Iterable[str | os.PathLike], dest: str | os.PathLike, *, compressed: bool,
         pattern: str | None = None) -> list[Job]:
    """The jobs for ``sources`` (files, or folders walked): ``SRC/a/b.dm4`` -> ``DEST/a/b.mrcz``.

    Names that would clash (``b.dm3`` and ``b.dm4``) keep the whole source
    name: ``b.dm3.mrcz``, ``b.dm4.mrcz``. Hidden files are left out.

    Raises
    ------
    FileNotFoundError
        A source that does not exist.
    """
    jobs: list[Job] = []
    dest = Path(dest)
    for src in map(Path, sources):
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
            pairs = [(p, p.relative_to(src)) for p in found]
        elif src.is_file():
            pairs = [(src, Path(src.name))]
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
        for path, rel in pairs:
            if not path.name.lower().endswith(SOURCE_SUFFIXES):
                continue
            if pattern and not fnmatch.fnmatch(path.name, pattern):
                continue
            target = dest / rel.parent / target_name(rel.name, compressed)
            jobs.append(Job(path, target, path.stat().st_size))
    # movie.dm3 and movie.dm4 in one folder would both become movie.mrcz: such
    # targets keep the whole source name instead (movie.dm3.mrcz, movie.dm4.mrcz).
    counts: dict[Path, int] = {}
    for job in jobs:
        counts[job.target] = counts.get(job.target, 0) + 1
    suffix = ".mrcz" if compressed else ".mrc"
    for job in jobs:
        if counts[job.target] > 1:
            job.target = job.target.with_name(job.source.name + suffix)
    return jobs


def _client(workers: int, scheduler: str | None) -> tuple[Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    # dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which turns off glibc's adaptive mmap
    # threshold: every frame-sized buffer is then mapped and page-faulted afresh, 30-40 % of the
    # time of a file here (docs/scaling.md). Our workers hold a few frames; leave malloc as it is.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def run(jobs: list[Job], *, compressed: bool, compressor: str, clevel: int, backend: str | None,
        verify: bool, overwrite: bool, workers: int, scheduler: str | None,
        quiet: bool) -> list[Outcome]:
    """Process ``jobs`` on dask workers; returns one :class:`Outcome` per job, in job order."""
    from distributed import wait

    client, cluster = _client(workers, scheduler)
    outcomes: dict[int, Outcome] = {}
    try:
        cores = max(1, (os.cpu_count() or 1) // max(1, len(client.scheduler_info()["workers"])))
        futures = {}
        for k, job in enumerate(jobs):
            future = client.submit(convert, str(job.source), str(job.target), compressed=compressed,
                                   compressor=compressor, clevel=clevel, backend=backend, verify=verify,
                                   overwrite=overwrite, n_threads=cores, pure=False,
                                   key=f"mrcz-{k}-{job.source.name}")
            futures[future] = k
        with _Progress(jobs, quiet) as progress:
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished in this half second
                    done = set()
                for future in done:
                    k = futures[future]
                    try:
                        outcomes[k] = future.result()
                    except Exception as exc:  # noqa: BLE001 - a worker died under this task too often
                        job = jobs[k]
                        outcomes[k] = Outcome(str(job.source), str(job.target), "failed",
                                              f"{type(exc).__name__}: {exc}", job.nbytes)
                    progress.finished(outcomes[k])
                progress.in_flight(_processing(client, futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [outcomes[k] for k in range(len(jobs))]


def _processing(client: Any, futures: dict) -> list[str]:
    """Names of the files workers are working on now."""
    try:
        keys = {key for tasks in client.processing().values() for key in tasks}
    except Exception:  # noqa: BLE001 - only for the progress display
        return []
    return [f.key.split("-", 2)[2] for f in futures if f.key in keys]


class _Progress:
    """An overall bar in bytes with an ETA, and the files in flight (rich); silent with --quiet."""

    def __init__(self, jobs: list[Job], quiet: bool) -> None:
        self.quiet, self.total = quiet, sum(j.nbytes for j in jobs)
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[flight]}"), console=Console(stderr=True))
            self.task = self.bar.add_task("files", total=self.total, flight="")
            self.bar.start()
        return self

    def finished(self, outcome: Outcome) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, outcome.bytes_in)
            if outcome.status == "failed":
                self.bar.console.print(f"[red]failed[/red] {outcome.source}: {outcome.reason}")

    def in_flight(self, names: list[str]) -> None:
        if self.bar is not None:
            shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
            self.bar.update(self.task, flight=shown)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def summary(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """Counts, GB in and out, the ratio and GB/s of what was written, and the failures."""
    written = [o for o in outcomes if o.status == "done"]
    gb_in = sum(o.bytes_in for o in written) / 1e9
    gb_out = sum(o.bytes_out for o in written) / 1e9
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "unsupported", "failed")}
    return {**count, "files": len(outcomes), "gb_in": gb_in, "gb_out": gb_out,
            "ratio": gb_in / gb_out if gb_out else None, "seconds": seconds,
            "gb_per_s": gb_in / seconds if seconds > 0 else None,
            "failures": [{"source": o.source, "reason": o.reason} for o in outcomes if o.status == "failed"],
            "unsupported_files": [{"source": o.source, "reason": o.reason}
                                  for o in outcomes if o.status == "unsupported"]}


def print_summary(info: dict[str, Any]) -> None:
    """The final table (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="napari-mrcz batch")
    for column in ("files", "done", "skipped", "unsupported", "failed", "GB in → GB out", "ratio", "GB/s"):
        table.add_column(column, justify="right")
    ratio = f"{info['ratio']:.2f}" if info["ratio"] else "-"
    speed = f"{info['gb_per_s']:.3g}" if info["gb_per_s"] else "-"
    table.add_row(str(info["files"]), str(info["done"]), str(info["skipped"]), str(info["unsupported"]),
                  str(info["failed"]), f"{info['gb_in']:.3f} → {info['gb_out']:.3f}", ratio, speed)
    console = Console()
    console.print(table)
    for kind, label in (("unsupported_files", "unsupported"), ("failures", "failed")):
        for item in info[kind]:
            reason = item["reason"]
            text = reason if item["source"] in reason else f"{item['source']}: {reason}"
            console.print(f"{label}: {text}", markup=False)


def dry_run(jobs: list[Job], overwrite: bool) -> list[dict[str, Any]]:
    """What a run would do with each job, without writing anything."""
    return [{"source": str(j.source), "target": str(j.target), "bytes": j.nbytes,
             "action": "skip" if not overwrite and already_done(j.source, j.target) else "write"}
            for j in jobs]
