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

from .codec.convert import (
    SOURCE_SUFFIXES,
    Outcome,
    already_done,
    convert,
    source_size,
    target_name,
    zarr_done,
    zarr_skip,
    zarr_target_name,
)
from .codec.remote import file_name, is_url, shown
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR

#: What to install for dask.distributed and rich.
BATCH_EXTRA = 'pip install ".[batch]" in a napari-mrcz checkout'
#: Seconds between the progress lines printed without rich.
PLAIN_PROGRESS_EVERY = 10.0


class MissingDependencyError(RuntimeError):
    """An option needs a package that is not installed; the message says what to install."""


@dataclass
class Job:
    """One source file and its target (each a path, or a URL as a string)."""

    source: Path | str
    target: Path | str
    nbytes: int


def plan(sources: Iterable[str | os.PathLike], dest: str | os.PathLike, *, compressed: bool,
         pattern: str | None = None, ome_zarr: bool = False) -> list[Job]:
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
    ome_zarr
        Targets are OME-Zarr folders (:func:`~napari_mrcz.codec.convert.zarr_target_name`).

    OME-Zarr folders (``*.zarr``) are sources too, and are not walked into.

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
    remote_dest = is_url(dest)
    if remote_dest and ome_zarr:
        raise ValueError(f"{shown(os.fspath(dest))}: OME-Zarr output is written to a folder on disk, "
                         "not to a URL")
    for src in sources:
        for path, rel, nbytes in _found(src):
            name_in = file_name(path) if isinstance(path, str) else path.name
            if not (name_in.lower().endswith(SOURCE_SUFFIXES) or (isinstance(path, Path) and _is_zarr(path))):
                continue
            if pattern and not fnmatch.fnmatch(name_in, pattern):
                continue
            name = zarr_target_name(rel.name) if ome_zarr else target_name(rel.name, compressed)
            target: Path | str = (object_store_join(os.fspath(dest), rel.parent.as_posix(), name)
                                  if remote_dest else Path(dest) / rel.parent / name)
            jobs.append(Job(path, target, nbytes if nbytes is not None else source_size(path)))
    # Writing into the source folder: the outputs of an earlier run are found as sources too.
    # A file that is another job's target and records that job's source (our stamp) is its
    # output, not a file to convert again; any other file there is the user's: a clash, below.
    by_target = {_where(job.target): job for job in jobs if _where(job.target) != _where(job.source)}

    def earlier_output(job: Job) -> bool:
        other = by_target.get(_where(job.source))
        return other is not None and already_done(other.source, job.source)

    jobs = [job for job in jobs if not earlier_output(job)]
    first: dict[str, Path | str] = {}
    for job in jobs:
        other = first.setdefault(_where(job.target), job.source)
        if other != job.source:
            raise ValueError(f"{_shown(other)} and {_shown(job.source)} would both be written to "
                             f"{_shown(job.target)}; convert them into different folders")
    return jobs


def _where(path: Path | str) -> str:
    """A job's path as one key: absolute for a file, the URL as it is."""
    return path if isinstance(path, str) else os.path.abspath(path)


def _shown(path: Path | str) -> str:
    return shown(path) if isinstance(path, str) else str(path)


def _found(src: str | os.PathLike) -> list[tuple[Path | str, Path, int | None]]:
    """(source, its path below ``src``, its size if known) of a source given: a file, a folder, a URL.

    A URL ending in ``/``, or naming no object, is a folder (a key prefix) and is listed.

    Raises
    ------
    FileNotFoundError
        Nothing is there.
    """
    if is_url(src):
        url = os.fspath(src)
        from .codec import object_store

        if not url.endswith("/") and object_store.is_object_url(url) and object_store.size(url) is not None:
            return [(url, Path(file_name(url)), None)]
        if not object_store.is_object_url(url):  # http(s): one file, never a folder
            return [(url, Path(file_name(url)), None)]
        return [(found, Path(rel), size) for found, rel, size in object_store.walk(url)]
    src = Path(src)
    if src.is_dir() and not _is_zarr(src):
        return [(p, p.relative_to(src), None) for p in _walk(src)]
    if src.is_file() or _is_zarr(src):
        return [(src, Path(src.name), None)]
    raise FileNotFoundError(f"{src}: no such file or folder")


def object_store_join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended (``.`` parts dropped)."""
    from .codec.object_store import join

    return join(url, *(p for p in parts if p not in ("", ".")))


def _name(path: Path | str) -> str:
    return file_name(path) if isinstance(path, str) else path.name


def _is_zarr(path: Path) -> bool:
    return path.name.lower().endswith(".zarr") and path.is_dir()


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder`` and its ``.zarr`` folders (not walked into), hidden ones left out, sorted."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(here) / d for d in dirs if d.lower().endswith(".zarr")]
        dirs[:] = [d for d in dirs if not d.lower().endswith(".zarr")]
        found += [Path(here) / f for f in files if not f.startswith(".")]
    return sorted(found)


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


def run(jobs: list[Job], *, compressed: bool, compressor: str | None, clevel: int | None,
        backend: str | None, verify: bool, overwrite: bool, workers: int, scheduler: str | None,
        quiet: bool, keepbits: int | str | None = None, max_error: float = 0.01,
        dtype: str | None = None, ome_zarr: bool = False, ngff: str = "0.5",
        levels: int | None = None) -> list[Outcome]:
    """Convert every job on worker processes; returns one :class:`Outcome` per job, in job order.

    Parameters
    ----------
    jobs
        From :func:`plan`.
    compressed, compressor, clevel, backend, verify, overwrite, keepbits, max_error, dtype
        As for :func:`~napari_mrcz.codec.convert.convert` (``compressor`` and
        ``clevel`` ``None``: the format's default).
    ome_zarr, ngff, levels
        OME-Zarr outputs, as for :func:`~napari_mrcz.codec.convert.convert`. A
        file of several slabs that is at least one worker's share of the
        session is split: one task per slab (:func:`~napari_mrcz.codec.ome_zarr.write_slab`),
        so that one huge tomogram spreads over every worker.
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
    if not ome_zarr:
        compressor = compressor or DEFAULT_SAVE_COMPRESSOR
        clevel = clevel or DEFAULT_SAVE_CLEVEL
    options = {"compressed": compressed, "compressor": compressor, "clevel": clevel, "backend": backend,
               "verify": verify, "overwrite": overwrite, "keepbits": keepbits, "max_error": max_error,
               "dtype": dtype, "ome_zarr": ome_zarr, "ngff": ngff, "levels": levels}
    if kind == "dask":
        return _run_dask(jobs, options, workers, scheduler, quiet)
    return _run_processes(jobs, options, workers, quiet)


def _failed(job: Job, exc: BaseException) -> Outcome:
    return Outcome(str(job.source), str(job.target), "failed", f"{type(exc).__name__}: {exc}", job.nbytes)


#: How many times a job may be running when a worker process dies before it is failed (as dask's
#: ``allowed-failures``): the task that killed the worker is among them, the others are retried.
ALLOWED_FAILURES = 3


@dataclass
class _Task:
    """One unit of work for a worker: a whole file, or one slab of a file split over workers."""

    job: int
    fn: Any
    args: tuple
    kwargs: dict
    nbytes: int
    name: str


class _Work:
    """The tasks of a run and how their results become one :class:`Outcome` per job.

    A job is one task (:func:`~napari_mrcz.codec.convert.convert`), or, for
    an OME-Zarr output split by slabs, one task per slab: its output is
    prepared here first and finished here once every slab is written.
    """

    def __init__(self, jobs: list[Job], options: dict[str, Any], workers: int, cores: int) -> None:
        self.jobs, self.options = jobs, options
        self.outcomes: dict[int, Outcome] = {}
        self.tasks: list[_Task] = []
        self._split: dict[int, Any] = {}
        self._slabs: dict[int, list[Any]] = {}
        self._started: dict[int, float] = {}
        total = sum(j.nbytes for j in jobs)
        for k, job in enumerate(jobs):
            prepared = self._prepare(k, job, total, workers) if options["ome_zarr"] else None
            if prepared is None:
                if k not in self.outcomes:
                    self.tasks.append(_Task(k, convert, (str(job.source), str(job.target)),
                                            {"n_threads": cores, **options}, job.nbytes, _name(job.source)))
                continue
            from .codec.ome_zarr import write_slab

            slabs = prepared.the_layout().slabs()
            self._split[k], self._slabs[k] = prepared, []
            for j, (first, end) in enumerate(slabs):
                share = job.nbytes * (end - first) // max(1, prepared.frames)
                self.tasks.append(_Task(k, write_slab, (prepared, j), {"n_threads": cores,
                                        "verify": options["verify"]}, share, f"{_name(job.source)}[{j}]"))

    def _prepare(self, k: int, job: Job, total: int, workers: int) -> Any:
        """The prepared output of a job worth splitting (``None``: one task, or already decided)."""
        from .codec import ome_zarr as omz
        from .codec.convert import prepare_zarr
        from .codec.source import open_image

        if workers < 2 or job.nbytes * workers < total:
            return None
        options = self.options
        self._started[k] = time.perf_counter()
        try:
            done = zarr_skip(job.source, job.target, options["overwrite"], options["keepbits"],
                             options["max_error"], options["ngff"])
            if done is not None:
                self.outcomes[k] = Outcome(str(job.source), str(job.target), "skipped", "", job.nbytes, done)
                return None
            opened = open_image(job.source)
            try:
                if len(opened.shape) != 3 or opened.shape[0] <= 1:
                    return None
                prepared = prepare_zarr(opened, job.target, compressor=options["compressor"],
                                        clevel=options["clevel"], keepbits=options["keepbits"],
                                        max_error=options["max_error"], ngff=options["ngff"],
                                        levels=options["levels"])
            finally:
                opened.handle.close()
        except Exception:  # noqa: BLE001 - the whole-file task reports it, as for any other file
            return None
        if len(prepared.the_layout().slabs()) < 2:
            omz.discard(prepared)
            return None
        return prepared

    def done(self, task: _Task, result: Any) -> Outcome | None:
        """Record ``task``'s result; returns its job's outcome once the job is complete."""
        k = task.job
        if k not in self._split:
            self.outcomes[k] = result
            return result
        if k in self.outcomes:  # an earlier slab failed: the job is over
            return None
        self._slabs[k].append(result)
        prepared = self._split[k]
        if len(self._slabs[k]) < len(prepared.the_layout().slabs()):
            return None
        from .codec.ome_zarr import discard, finish

        job, results = self.jobs[k], self._slabs[k]
        out = Outcome(str(job.source), str(job.target), "failed", "", job.nbytes, frames=prepared.frames,
                      keepbits=prepared.keepbits)
        try:
            out.bytes_out = finish(prepared, results)
            out.status = "done"
            out.largest_error = max((r.largest_error for r in results), default=0.0)
        except Exception as exc:  # noqa: BLE001 - reported, and the batch goes on
            discard(prepared)
            out.reason = f"{type(exc).__name__}: {exc}"
        out.seconds = time.perf_counter() - self._started[k]
        self.outcomes[k] = out
        return out

    def failed(self, task: _Task, exc: BaseException) -> Outcome | None:
        """Record that ``task`` failed; returns its job's outcome (``None``: already reported)."""
        k = task.job
        if k in self.outcomes:
            return None
        if k in self._split:
            from .codec.ome_zarr import discard

            discard(self._split[k])
        self.outcomes[k] = _failed(self.jobs[k], exc)
        return self.outcomes[k]

    def skipped(self) -> list[Outcome]:
        """Outcomes decided before any task ran (outputs already done)."""
        return [o for k, o in self.outcomes.items() if k not in self._split]


def _run_processes(jobs: list[Job], options: dict[str, Any], workers: int, quiet: bool) -> list[Outcome]:
    """The jobs on a pool of ``workers`` spawned processes (no dask needed).

    A worker that dies (killed, out of memory) breaks the pool and every task
    in it: a new pool takes the tasks that were not finished, and a task that
    was running at :data:`ALLOWED_FAILURES` deaths is failed.
    """
    if not jobs:
        return []
    workers = max(1, min(workers, len(jobs)) if not options["ome_zarr"] else workers)
    cores = max(1, (os.cpu_count() or 1) // workers)
    work = _Work(jobs, options, workers, cores)
    workers = max(1, min(workers, len(work.tasks)))
    deaths: dict[int, int] = {}
    todo = list(range(len(work.tasks)))
    with _Progress(jobs, quiet, f"{workers} worker process{'es' if workers > 1 else ''}") as progress:
        for outcome in work.skipped():
            progress.finished(outcome)
        while todo:
            todo = _one_pool(work, todo, workers, deaths, progress)
    return [work.outcomes[k] for k in range(len(jobs))]


def _one_pool(work: _Work, todo: list[int], workers: int, deaths: dict[int, int],
              progress: _Progress) -> list[int]:
    """Run tasks ``todo`` on a new pool until done or the pool breaks; returns the tasks to run again."""
    again: list[int] = []
    tasks = work.tasks
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: dict[Future, int] = {pool.submit(tasks[t].fn, *tasks[t].args, **tasks[t].kwargs): t
                                      for t in todo if tasks[t].job not in work.outcomes}
        pending, running = set(futures), set()
        broken: list[int] = []
        while pending:
            done, pending = wait_futures(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                t = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool:  # a worker died: every task of the pool ends so
                    broken.append(t)
                    continue
                except Exception as exc:  # noqa: BLE001 - reported, and the batch goes on
                    progress.ended(tasks[t], work.failed(tasks[t], exc))
                    continue
                progress.ended(tasks[t], work.done(tasks[t], result))
            running = {futures[f] for f in pending if f.running()} or running
            progress.in_flight([tasks[t].name for t in running])
        # the tasks that were running when it died count a death (all of them, if none was seen running)
        suspects = [t for t in broken if t in running] or broken
        for t in broken:
            deaths[t] = deaths.get(t, 0) + (t in suspects)
            if deaths[t] < ALLOWED_FAILURES:
                again.append(t)
            else:
                progress.ended(tasks[t], work.failed(tasks[t], RuntimeError(
                    f"its worker process died {deaths[t]} times while it ran")))
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
    try:
        n_workers = len(client.scheduler_info()["workers"])
        cores = max(1, (os.cpu_count() or 1) // max(1, n_workers))
        work = _Work(jobs, options, n_workers, cores)
        futures = {}
        for t, task in enumerate(work.tasks):
            future = client.submit(task.fn, *task.args, pure=False, key=f"mrcz-{t}-{task.name}",
                                   **task.kwargs)
            futures[future] = t
        where = f"dask ({scheduler or f'{n_workers} local workers'})"
        with _Progress(jobs, quiet, where) as progress:
            for outcome in work.skipped():
                progress.finished(outcome)
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished in this half second
                    done = set()
                for future in done:
                    task = work.tasks[futures[future]]
                    try:
                        result = future.result()
                    except Exception as exc:  # noqa: BLE001 - a worker died under this task too often
                        progress.ended(task, work.failed(task, exc))
                        continue
                    progress.ended(task, work.done(task, result))
                progress.in_flight(_processing(client, futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [work.outcomes[k] for k in range(len(jobs))]


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

    def ended(self, task: _Task, outcome: Outcome | None) -> None:
        """A task ended; ``outcome`` is its job's, if that job is complete now.

        A slab of a split file moves the bar by its share of the file; the
        file counts once its last slab is done.
        """
        whole = task.fn is convert
        self._show(task.nbytes if not whole else outcome.bytes_in if outcome is not None else 0, outcome)

    def finished(self, outcome: Outcome) -> None:
        """A job decided without a task (already done)."""
        self._show(outcome.bytes_in, outcome)

    def _show(self, advance: int, outcome: Outcome | None) -> None:
        self.nbytes += advance
        if outcome is not None:
            self.count += 1
            self.failed += outcome.status == "failed"
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, files=f"{self.count}/{self.n} files",
                            failed=f"{self.failed} failed" if self.failed else "")
        elif not self.quiet and outcome is not None and time.monotonic() - self.last >= PLAIN_PROGRESS_EVERY:
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
            max_error: float = 0.01, ome_zarr: bool = False, ngff: str = "0.5") -> list[dict[str, Any]]:
    """What a run would do with each job, without writing anything.

    Parameters
    ----------
    jobs
        From :func:`plan`.
    overwrite
        Whether targets already done would be written again.
    keepbits, max_error
        The precision asked for: a target with another is written again.
    ome_zarr, ngff
        OME-Zarr targets of this NGFF version.

    Returns
    -------
    list of dict
        ``source``, ``target``, ``bytes`` and ``action`` (``'write'`` or ``'skip'``) of each job.
    """
    def done(j: Job) -> bool:
        if ome_zarr:
            return zarr_done(j.source, j.target, keepbits, max_error, ngff)
        return already_done(j.source, j.target, keepbits, max_error)

    return [{"source": str(j.source), "target": str(j.target), "bytes": j.nbytes,
             "action": "skip" if not overwrite and done(j) else "write"} for j in jobs]
