"""``napari-mrcz compress`` / ``decompress``: whole sessions, one task per file.

One task per file (:func:`napari_mrcz.codec.convert.convert`), on a
dask.distributed LocalCluster of processes when dask is installed (the
``batch`` extra), on a :class:`~concurrent.futures.ProcessPoolExecutor`
otherwise, or on an existing dask cluster (``--scheduler``). Workers read
sources and write targets themselves: the batch assumes every worker sees the
same paths (a shared filesystem). The only module of napari-mrcz that imports
dask, and only when it runs; rich (the progress bar) is optional too.
"""

from __future__ import annotations

import fnmatch
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codec.convert import SOURCE_SUFFIXES, Outcome, already_done, convert, target_name

#: What to install for dask.distributed and rich.
BATCH_EXTRA = 'pip install ".[batch]" in a napari-mrcz checkout'
#: Seconds between the progress lines printed without rich.
PLAIN_PROGRESS_EVERY = 10.0


class MissingDependencyError(RuntimeError):
    """An option needs a package that is not installed; the message says what to install."""


@dataclass
class Job:
    """One source file and its target."""

    source: Path
    target: Path
    nbytes: int


def plan(sources: Iterable[str | os.PathLike], dest: str | os.PathLike, *, compressed: bool,
         pattern: str | None = None) -> list[Job]:
    """The jobs for ``sources`` (files, or folders walked), the folder layout kept under ``dest``.

    Each target is named by :func:`~napari_mrcz.codec.convert.target_name`
    alone, whatever else is in the folder: ``SRC/a/b.dm4`` ->
    ``DEST/a/b.dm4.mrcz`` when ``compressed``, ``SRC/a/b.st.mrcz`` ->
    ``DEST/a/b.st`` when not. Hidden files are left out, and so are files
    that are another source's target (``DEST`` = ``SRC``: the outputs of an
    earlier run).

    Parameters
    ----------
    sources
        Files and folders; a folder's MRC, MRCZ and DM files are found at any depth.
    dest
        The folder the targets go under.
    compressed
        Targets for ``compress`` (MRCZ) rather than ``decompress`` (plain MRC).
    pattern
        Only files whose name matches this glob.

    Returns
    -------
    list of Job
        In the order of ``sources``, each folder's files sorted.

    Raises
    ------
    FileNotFoundError
        A source that does not exist.
    ValueError
        Two sources would be written to the same target (``x.mrc`` and
        ``x.mrcz`` decompressed into one folder); the message names both.
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
    # Writing into the source folder: the outputs of an earlier run are found as sources too.
    # A file that is another job's target and records that job's source (our stamp) is its
    # output, not a file to convert again; any other file there is the user's: a clash, below.
    by_target = {os.path.abspath(job.target): job for job in jobs
                 if os.path.abspath(job.target) != os.path.abspath(job.source)}

    def earlier_output(job: Job) -> bool:
        other = by_target.get(os.path.abspath(job.source))
        return other is not None and already_done(other.source, job.source)

    jobs = [job for job in jobs if not earlier_output(job)]
    first: dict[Path, Path] = {}
    for job in jobs:
        other = first.setdefault(job.target, job.source)
        if other != job.source:
            raise ValueError(f"{other} and {job.source} would both be written to {job.target}; "
                             "convert them into different folders")
    return jobs


def have_distributed() -> bool:
    """Whether dask.distributed can be imported (the ``batch`` extra)."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def have_rich() -> bool:
    """Whether rich can be imported (for the progress bar)."""
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


def runner(scheduler: str | None) -> str:
    """What :func:`run` runs the jobs on: ``'dask'`` (distributed) or ``'processes'`` (a process pool).

    Raises
    ------
    MissingDependencyError
        ``scheduler`` is given and dask.distributed is not installed.
    """
    if have_distributed():
        return "dask"
    if scheduler:
        raise MissingDependencyError(f"--scheduler needs dask.distributed, which is not installed: "
                                     f"{BATCH_EXTRA}")
    return "processes"


def run(jobs: list[Job], *, compressed: bool, compressor: str, clevel: int, backend: str | None,
        verify: bool, overwrite: bool, workers: int, scheduler: str | None,
        quiet: bool, keepbits: int | str | None = None, max_error: float = 0.01,
        dtype: str | None = None) -> list[Outcome]:
    """Convert every job on worker processes; returns one :class:`Outcome` per job, in job order.

    Parameters
    ----------
    jobs
        From :func:`plan`.
    compressed, compressor, clevel, backend, verify, overwrite, keepbits, max_error, dtype
        As for :func:`~napari_mrcz.codec.convert.convert`.
    workers
        Local worker processes (without ``scheduler``).
    scheduler
        The address of a dask.distributed scheduler to run on instead.
    quiet
        No progress display.

    Returns
    -------
    list of Outcome
        A task that died with its worker is ``failed``, with the reason.

    Raises
    ------
    MissingDependencyError
        ``scheduler`` is given and dask.distributed is not installed.
    """
    kind = runner(scheduler)
    options = {"compressed": compressed, "compressor": compressor, "clevel": clevel, "backend": backend,
               "verify": verify, "overwrite": overwrite, "keepbits": keepbits, "max_error": max_error,
               "dtype": dtype}
    if kind == "dask":
        return _run_dask(jobs, options, workers, scheduler, quiet)
    return _run_processes(jobs, options, workers, quiet)


def _failed(job: Job, exc: BaseException) -> Outcome:
    return Outcome(str(job.source), str(job.target), "failed", f"{type(exc).__name__}: {exc}", job.nbytes)


#: How many times a job may be running when a worker process dies before it is failed (as dask's
#: ``allowed-failures``): the task that killed the worker is among them, the others are retried.
ALLOWED_FAILURES = 3


def _run_processes(jobs: list[Job], options: dict[str, Any], workers: int, quiet: bool) -> list[Outcome]:
    """The jobs on a pool of ``workers`` spawned processes (no dask needed).

    A worker that dies (killed, out of memory) breaks the pool and every job
    in it: a new pool takes the jobs that were not finished, and a job that
    was running at :data:`ALLOWED_FAILURES` deaths is failed.
    """
    if not jobs:
        return []
    workers = max(1, min(workers, len(jobs)))
    cores = max(1, (os.cpu_count() or 1) // workers)
    outcomes: dict[int, Outcome] = {}
    deaths: dict[int, int] = {}
    todo = list(range(len(jobs)))
    with _Progress(jobs, quiet, f"{workers} worker process{'es' if workers > 1 else ''}") as progress:
        while todo:
            todo = _one_pool(jobs, todo, options, workers, cores, outcomes, deaths, progress)
    return [outcomes[k] for k in range(len(jobs))]


def _one_pool(jobs: list[Job], todo: list[int], options: dict[str, Any], workers: int, cores: int,
              outcomes: dict[int, Outcome], deaths: dict[int, int], progress: _Progress) -> list[int]:
    """Run ``todo`` on a new pool until done or the pool breaks; returns the jobs to run again."""
    again: list[int] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: dict[Future, int] = {
            pool.submit(convert, str(jobs[k].source), str(jobs[k].target), n_threads=cores, **options): k
            for k in todo}
        pending, running = set(futures), set()
        broken: list[int] = []
        while pending:
            done, pending = wait_futures(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                k = futures[future]
                try:
                    outcomes[k] = future.result()
                except BrokenProcessPool:  # a worker died: every job of the pool ends so
                    broken.append(k)
                    continue
                except Exception as exc:  # noqa: BLE001 - reported, and the batch goes on
                    outcomes[k] = _failed(jobs[k], exc)
                progress.finished(outcomes[k])
            running = {futures[f] for f in pending if f.running()} or running
            progress.in_flight([jobs[k].source.name for k in running if k not in outcomes])
        # the jobs that were running when it died count a death (all of them, if none was seen running)
        suspects = [k for k in broken if k in running] or broken
        for k in broken:
            deaths[k] = deaths.get(k, 0) + (k in suspects)
            if deaths[k] < ALLOWED_FAILURES:
                again.append(k)
            else:
                outcomes[k] = _failed(jobs[k], RuntimeError(
                    f"its worker process died {deaths[k]} times while it ran"))
                progress.finished(outcomes[k])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(again)


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


def _run_dask(jobs: list[Job], options: dict[str, Any], workers: int, scheduler: str | None,
              quiet: bool) -> list[Outcome]:
    """The jobs on dask workers: a LocalCluster of ``workers`` processes, or the cluster at ``scheduler``."""
    from distributed import wait

    client, cluster = _client(workers, scheduler)
    outcomes: dict[int, Outcome] = {}
    try:
        n_workers = len(client.scheduler_info()["workers"])
        cores = max(1, (os.cpu_count() or 1) // max(1, n_workers))
        futures = {}
        for k, job in enumerate(jobs):
            future = client.submit(convert, str(job.source), str(job.target), n_threads=cores, pure=False,
                                   key=f"mrcz-{k}-{job.source.name}", **options)
            futures[future] = k
        where = f"dask ({scheduler or f'{n_workers} local workers'})"
        with _Progress(jobs, quiet, where) as progress:
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
                        outcomes[k] = _failed(jobs[k], exc)
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
    """Progress on stderr: a rich bar in bytes with an ETA and the files in flight, or plain lines.

    Without rich, a line says where the batch runs, and another every
    :data:`PLAIN_PROGRESS_EVERY` seconds how far it got. Failures are only
    counted here: their reasons are printed once, after the summary table.
    Silent with ``quiet``.
    """

    def __init__(self, jobs: list[Job], quiet: bool, where: str) -> None:
        self.quiet, self.where = quiet, where
        self.n, self.total = len(jobs), sum(j.nbytes for j in jobs)
        self.count = self.nbytes = self.failed = 0
        self.bar: Any = None
        self.last = 0.0

    def __enter__(self) -> _Progress:
        if self.quiet:
            return self
        if not have_rich():
            print(f"napari-mrcz: {self.n} files ({format_bytes(self.total)}) on {self.where}",
                  file=sys.stderr, flush=True)
            self.last = time.monotonic()
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(TextColumn("{task.fields[files]}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(),
                            TextColumn("[red]{task.fields[failed]}"), TextColumn("{task.fields[flight]}"),
                            console=Console(stderr=True))
        self.task = self.bar.add_task("files", total=self.total, files=f"0/{self.n} files", failed="",
                                      flight="")
        self.bar.start()
        return self

    def finished(self, outcome: Outcome) -> None:
        self.count += 1
        self.nbytes += outcome.bytes_in
        self.failed += outcome.status == "failed"
        if self.bar is not None:
            self.bar.update(self.task, advance=outcome.bytes_in, files=f"{self.count}/{self.n} files",
                            failed=f"{self.failed} failed" if self.failed else "")
        elif not self.quiet and time.monotonic() - self.last >= PLAIN_PROGRESS_EVERY:
            self.last = time.monotonic()
            share = f" ({100 * self.nbytes / self.total:.0f} %)" if self.total else ""
            print(f"napari-mrcz: {self.count}/{self.n} files, {format_bytes(self.nbytes)} of "
                  f"{format_bytes(self.total)}{share}, {self.failed} failed", file=sys.stderr, flush=True)

    def in_flight(self, names: list[str]) -> None:
        if self.bar is not None:
            shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
            self.bar.update(self.task, flight=shown)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def format_bytes(n: float, per: str = "") -> str:
    """``n`` bytes in the unit that fits: ``512 B``, ``781 kB``, ``9.30 MB``, ``1.23 GB`` (or ``/s``).

    Parameters
    ----------
    n
        A number of bytes (or bytes per second).
    per
        Appended to the unit (``'/s'``).

    Returns
    -------
    str
        Three significant digits (whole bytes below 1 kB), decimal units.
    """
    value, units = float(n), ("B", "kB", "MB", "GB", "TB", "PB")
    k = 0
    while abs(value) >= 999.5 and k < len(units) - 1:
        value, k = value / 1000, k + 1
    if k == 0:
        return f"{value:.0f} B{per}"
    digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
    return f"{value:.{digits}f} {units[k]}{per}"


def format_seconds(seconds: float) -> str:
    """A duration as people read it: ``0.42 s``, ``12 s``, ``5:07`` or ``1:02:03``.

    Parameters
    ----------
    seconds
        The duration.

    Returns
    -------
    str
        Seconds below a minute, then minutes:seconds, then hours:minutes:seconds.
    """
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def summary(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """Counts, bytes (and GB) in and out, the ratio and speed of what was written, and the failures.

    Parameters
    ----------
    outcomes
        From :func:`run`.
    seconds
        How long the run took.

    Returns
    -------
    dict
        ``done``, ``skipped``, ``unsupported``, ``failed``, ``files``;
        ``bytes_in``, ``bytes_out`` and ``gb_in``, ``gb_out`` (of the files
        written), ``ratio``, ``seconds``, ``bytes_per_s`` and ``gb_per_s``;
        ``failures`` and ``unsupported_files`` (source and reason each);
        ``lossy``, the files rounded (``keepbits``), and ``largest_error``,
        the largest relative error of any value in them.
    """
    written = [o for o in outcomes if o.status == "done"]
    bytes_in = sum(o.bytes_in for o in written)
    bytes_out = sum(o.bytes_out for o in written)
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "unsupported", "failed")}
    per_s = bytes_in / seconds if seconds > 0 else None
    lossy = [o for o in written if o.keepbits is not None]
    return {**count, "files": len(outcomes), "gb_in": bytes_in / 1e9, "gb_out": bytes_out / 1e9,
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "ratio": bytes_in / bytes_out if bytes_out else None, "seconds": seconds,
            "lossy": len(lossy), "largest_error": max((o.largest_error for o in lossy), default=0.0),
            "gb_per_s": None if per_s is None else per_s / 1e9, "bytes_per_s": per_s,
            "failures": [{"source": o.source, "reason": o.reason} for o in outcomes if o.status == "failed"],
            "unsupported_files": [{"source": o.source, "reason": o.reason}
                                  for o in outcomes if o.status == "unsupported"]}


def summary_lines(info: dict[str, Any], title: str = "napari-mrcz") -> list[str]:
    """The final table as plain text (80 columns), then one line per unsupported and failed file.

    Parameters
    ----------
    info
        From :func:`summary`.
    title
        The first line starts with it (``napari-mrcz compress``).

    Returns
    -------
    list of str
        The lines to print.
    """
    ratio = f"{info['ratio']:.3g}" if info["ratio"] else "-"
    speed = format_bytes(info["bytes_per_s"], "/s") if info["done"] and info["bytes_per_s"] else "-"
    cells = [("files", str(info["files"])), ("done", str(info["done"])), ("skipped", str(info["skipped"])),
             ("unsupported", str(info["unsupported"])), ("failed", str(info["failed"])),
             ("in", format_bytes(info["bytes_in"])), ("out", format_bytes(info["bytes_out"])),
             ("ratio", ratio), ("speed", speed)]
    widths = [max(len(head), len(value)) for head, value in cells]
    lines = [f"{title}: {info['files']} files in {format_seconds(info['seconds'])}",
             "  ".join(head.rjust(w) for (head, _), w in zip(cells, widths, strict=True)),
             "  ".join(value.rjust(w) for (_, value), w in zip(cells, widths, strict=True))]
    if info.get("lossy"):
        lines.append(f"lossy: {info['lossy']} files with rounded float mantissas, largest relative error "
                     f"{info['largest_error']:.2g}")
    for kind, label in (("unsupported_files", "unsupported"), ("failures", "failed")):
        for item in info[kind]:
            source, reason = item["source"], item["reason"]
            lines.append(f"{label}: {source}: {reason.replace(source + ': ', '', 1)}")
    return lines


def print_summary(info: dict[str, Any], title: str = "napari-mrcz") -> None:
    """Print :func:`summary_lines` on stdout.

    Parameters
    ----------
    info
        From :func:`summary`.
    title
        The first line starts with it.
    """
    print("\n".join(summary_lines(info, title)), flush=True)


def dry_run(jobs: list[Job], overwrite: bool, keepbits: int | str | None = None,
            max_error: float = 0.01) -> list[dict[str, Any]]:
    """What a run would do with each job, without writing anything.

    Parameters
    ----------
    jobs
        From :func:`plan`.
    overwrite
        Whether targets already done would be written again.
    keepbits, max_error
        The precision asked for: a target with another is written again.

    Returns
    -------
    list of dict
        ``source``, ``target``, ``bytes`` and ``action`` (``'write'`` or ``'skip'``) of each job.
    """
    return [{"source": str(j.source), "target": str(j.target), "bytes": j.nbytes,
             "action": "skip" if not overwrite and already_done(j.source, j.target, keepbits, max_error)
             else "write"}
            for j in jobs]
