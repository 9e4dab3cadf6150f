"""A mutational fuzzer for every reader: damaged and hostile files must give a clean error.

Every file in ``../shared/data`` is a seed, and two made here with FEI2 and
SerialEM extended headers. A case mutates one seed (bit flips,
int32 header fields set to extremes, truncation, inserted and deleted bytes,
MRCZ chunk-header fields, DM tag numbers; one to three of them stacked) and
reads the result the ways a user would: ``readMRC`` or ``readDM4``, and the
napari reader's path (``read_layers``, which opens the file and samples a frame
for contrast, then the first and the last frame of every layer).

Cases run in long-lived child processes, each capped at ``--memory`` bytes of
address space (``RLIMIT_AS``) and ``--timeout`` seconds a case, and with
Python's allocation tracing on. Outcomes:

- good: the file reads, or raises an exception that subclasses ``ValueError``
  or ``OSError`` and names the file;
- defect: any other exception, a ``MemoryError``, an error that does not name
  the file, a peak allocation beyond what the file could back (``--alloc``
  bytes plus 64 x its size), a hang (the child is killed after the time
  limit), or a crash (the child dies). Each defect's input is kept on disk.

Case ``i`` of seed ``s`` is the same mutation on every machine and in any
order, so a defect is reproduced by its numbers alone.

Usage::

    python -m tests.fuzzer --cases 200000 --seed random --keep fuzz-defects
    python -m tests.fuzzer --child      # internal: one worker process
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no address-space cap (and no runs; see tests/test_fuzz.py)
    resource = None

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MRCZ_DATA", ROOT.parent / "shared" / "data"))
SKIP = (".json", ".npz", ".md")
EXTREMES = [0, 1, -1, 2, 3, 4, 7, 16, 101, 255, 256, 1000, 1001, 2002, 3002, 6002, 999002, 0xFFFF, 1 << 16,
            1 << 20, 1 << 24, 1 << 28, (1 << 30) + 1, (1 << 31) - 1, -(1 << 31), (1 << 31) - 16]
#: Header fields of interest (byte offsets of int32s): dimensions, mode, starts, sampling, axes,
#: space group, extended header size, MRCZ fields, IMOD stamp and flags, labels.
#: What reads a case in the children: every way a user would.
READER = "tests.fuzzer:run_case"
MRC_FIELDS = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 64, 68, 72, 88, 92, 104, 128, 132, 136, 140, 144, 148,
              152, 156, 212, 220, 1024, 1028]


# ---------------------------------------------------------------------------
# Mutations (parent side)
# ---------------------------------------------------------------------------
@dataclass
class Seed:
    """One seed file and what the structured mutations need to know about it."""

    path: Path
    data: bytes
    byteorder: str = "<"
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset, format version)
    tag_markers: list[int] = field(default_factory=list)
    dm_version: int = 0


def load_seeds(folder: Path) -> list[Seed]:
    """Every readable file under ``folder``, with its chunk offsets or DM tag markers."""
    from napari_mrcz.codec import MRCStack

    seeds = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(SKIP)):
        seed = Seed(path, path.read_bytes())
        if path.suffix.lower() in (".dm3", ".dm4"):
            seed.dm_version = 4 if path.suffix.lower() == ".dm4" else 3
            seed.tag_markers = [i for i in range(len(seed.data) - 3) if seed.data[i:i + 4] == b"%%%%"]
        elif len(seed.data) >= 1024:
            seed.byteorder = ">" if seed.data[212] == 0x11 else "<"
            try:
                with MRCStack(path) as stack:
                    if stack.header.is_compressed:
                        seed.chunks = [stack.chunk_span(i)[::2] for i in range(stack.shape[0])]
            except Exception:  # a broken seed is still a seed, without chunk mutations
                pass
        seeds.append(seed)
    return seeds


def write_extended_seeds(folder: Path) -> Path:
    """Small files with per-section extended headers (FEI2 by mrcfile, SerialEM per IMOD), as seeds too."""
    import numpy as np

    from .seri_writer import write_serialem
    from .test_extended import write_fei

    folder.mkdir(parents=True, exist_ok=True)
    data = np.arange(4 * 12 * 10, dtype=np.float32).reshape(4, 12, 10)
    write_fei(folder / "fei2_tilt.mrcs", b"FEI2", data, [-30.0, -10.0, 10.0, 30.0])
    records = {"tilt": [-30.0, -10.0, 10.0, 30.0], "mag": [1000] * 4, "dose": [1.5] * 4}
    write_serialem(folder / "serialem_tilt.st", data, records, flags=1 | 8 | 32)
    return folder


def _int32(rng: random.Random) -> int:
    return rng.choice(EXTREMES) if rng.random() < 0.8 else rng.randint(-(1 << 31), (1 << 31) - 1)


def _put(buf: bytearray, offset: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if 0 <= offset <= len(buf) - size:
        struct.pack_into(fmt, buf, offset, value & ((1 << (8 * size)) - 1) if fmt[-1].isupper() else value)


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, list[str]]:
    """One to three stacked mutations of ``seed``; returns the bytes and what was done."""
    buf = bytearray(seed.data)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kinds = ["flip", "int32", "truncate", "insert", "delete"]
        if seed.chunks:
            kinds += ["chunk", "chunk", "chunk"]
        if seed.tag_markers:
            kinds += ["tag", "tag", "tag"]
        kind = rng.choice(kinds)
        n = len(buf)
        if kind == "flip" and n:
            for _ in range(rng.randint(1, 8)):
                # header bytes are where the structure is: favour them
                at = rng.randrange(min(n, 1100)) if rng.random() < 0.6 else rng.randrange(n)
                buf[at] ^= 1 << rng.randrange(8)
            done.append("flip")
        elif kind == "int32":
            at = (rng.choice(MRC_FIELDS) if rng.random() < 0.7
                  else 4 * rng.randrange(max(1, min(n, 1024) // 4)))
            value = _int32(rng)
            _put(buf, at, seed.byteorder + "i", value)
            done.append(f"int32@{at}={value}")
        elif kind == "truncate" and n:
            keep = rng.randrange(n)
            del buf[keep:]
            done.append(f"truncate@{keep}")
        elif kind == "insert":
            at = rng.randrange(n + 1)
            buf[at:at] = rng.randbytes(rng.randint(1, 64))
            done.append(f"insert@{at}")
        elif kind == "delete" and n:
            at = rng.randrange(n)
            del buf[at:at + rng.randint(1, 64)]
            done.append(f"delete@{at}")
        elif kind == "chunk":
            offset, version = rng.choice(seed.chunks)
            choice = rng.randrange(6)
            if choice < 3:  # nbytes, blocksize or cbytes
                at = offset + 4 * (choice + 1)
                value = rng.choice([0, 1, 16, 32, 0xFFFFFFFF, 0x7FFFFFFF, rng.getrandbits(32)])
                _put(buf, at, "<I", value)
            elif choice == 3:  # version, versionlz, flags or typesize
                at = offset + rng.randrange(4)
                if at < len(buf):
                    buf[at] = rng.choice([0, 1, 2, 3, 4, 5, 0x10, 0xFF, rng.getrandbits(8)])
            elif choice == 4:  # the block-offset table
                at = offset + (32 if version == 5 else 16) + 4 * rng.randrange(4)
                _put(buf, at, "<i", _int32(rng))
            else:  # bytes inside the compressed body
                at = offset + rng.randrange(16, 256)
                if at < len(buf):
                    buf[at] = rng.getrandbits(8)
            done.append(f"chunk@{offset}:{choice}")
        elif kind == "tag":
            marker = rng.choice(seed.tag_markers)
            width = 8 if seed.dm_version == 4 else 4
            word = rng.randrange(6)
            at = marker + 4 + width * word
            if rng.random() < 0.3:  # the tag's name length or a byte before the marker
                at = marker - rng.randint(1, 24)
                if 0 <= at < len(buf):
                    buf[at] = rng.getrandbits(8)
            else:
                _put(buf, at, ">q" if width == 8 else ">i", _int32(rng))
            done.append(f"tag@{at}")
    return bytes(buf), done


def case_file(seeds: list[Seed], seed: int, i: int, folder: Path) -> tuple[Path, Seed, list[str]]:
    """Write case ``i`` of run ``seed`` into ``folder``; the name keeps the seed's suffixes."""
    rng = random.Random(seed * 1_000_003 + i)
    source = rng.choice(seeds)
    data, done = mutate(source, rng)
    path = folder / f"case{i}-{source.path.name}"
    path.write_bytes(data)
    return path, source, done


# ---------------------------------------------------------------------------
# The child: reads cases, one per line
# ---------------------------------------------------------------------------
def run_case(path: str) -> None:
    """Read one file every way a user would (raises what the readers raise)."""
    import numpy as np

    from napari_mrcz import codec
    from napari_mrcz._reader import read_layers

    if path.lower().endswith((".dm3", ".dm4")):
        dm = codec.readDM4(path)
        for image in dm.im:
            np.asarray(image.imageData).sum()
    else:
        image, _ = codec.readMRC(path)
        for frame in image if isinstance(image, list) else [image]:
            np.asarray(frame).sum()
    for data, _, _ in read_layers(path):
        if len(data.shape) >= 3:
            np.asarray(data[0]).sum()
            np.asarray(data[-1]).sum()
        else:
            np.asarray(data).sum()


def child(memory: int, alloc: int, warm: list[str], reader: str = READER) -> None:
    """Serve cases from stdin: ``{"path": ...}`` in, one JSON result line out.

    Before the first case it reads the ``warm`` files (intact seeds) the way
    cases are read, so that everything a read imports (napari, pint, dask,
    the decompressors) is loaded, then says ``{"ready": true}``: a case's
    time is the read's own, never the ~1 300 modules a first napari read
    imports. ``reader`` (``module:function``) reads a case. The objects that
    warm-up left are frozen out of the collector's reach (``gc.freeze``), so
    the collection after each case costs what the case left, not what napari
    holds.
    """
    import gc
    import importlib
    import tracemalloc
    import warnings

    import napari_mrcz._reader  # noqa: F401 - imported before the cap, as a real session has it
    from napari_mrcz.codec import blosc_chunks

    module, name = reader.split(":")
    read = getattr(importlib.import_module(module), name)
    blosc_chunks.warm()
    warnings.simplefilter("ignore")
    for path in warm:
        try:
            read(path)
        except Exception:  # noqa: BLE001 - a broken seed warms up as well as a good one
            pass
    gc.collect()
    gc.freeze()
    if resource is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    tracemalloc.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = json.loads(line)["path"]
        size = os.path.getsize(path)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result: dict = {"ok": True}
        t0 = time.perf_counter()
        try:
            read(path)
        except MemoryError as exc:  # after which this process is not to be trusted: a new one follows
            print(json.dumps({"ok": False, "why": f"MemoryError: {exc}"}), flush=True)
            return
        except (ValueError, OSError) as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            if path not in text:
                result = {"ok": False, "why": f"{type(exc).__name__} does not name the file: {exc}"}
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            result = {"ok": False, "why": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = time.perf_counter() - t0
        gc.collect()
        grown = tracemalloc.get_traced_memory()[1] - before
        if result["ok"] and grown > alloc + 64 * size:
            result = {"ok": False, "why": f"allocated {grown} bytes at once for a {size}-byte file"}
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# The parent: hands out cases, watches the children
# ---------------------------------------------------------------------------
@dataclass
class Defect:
    """One case that did not end well, and where its input is kept."""

    case: int
    seed_file: str
    mutations: list[str]
    why: str
    kept: str


class Worker:
    """One child process, warmed up before its first case, restarted after a crash or a hang."""

    def __init__(self, memory: int, alloc: int, warm: list[str], reader: str) -> None:
        self.args = [sys.executable, "-m", "tests.fuzzer", "--child", "--memory", str(memory),
                     "--alloc", str(alloc), "--reader", reader, "--warm", *warm]
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.case: tuple | None = None
        self.started = 0.0

    def start(self) -> None:
        """A new child; it takes cases once it has said it is ready."""
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.ready, self.case, self.started = False, None, time.monotonic()

    def send(self, case: tuple) -> None:
        self.case, self.started = case, time.monotonic()
        self.proc.stdin.write(json.dumps({"path": str(case[0])}) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


def warm_files(seeds: list[Seed]) -> list[str]:
    """One intact seed of each kind of file (by suffix), for the children to read before any case."""
    kinds: dict[str, str] = {}
    for seed in seeds:
        kinds.setdefault("".join(seed.path.suffixes[-2:]).lower(), str(seed.path))
    return list(kinds.values())


def fuzz(cases: int, seed: int, *, workers: int = 2, timeout: float = 20.0, memory: int = 3 << 30,
         alloc: int = 256 << 20, keep: Path | None = None, data: Path = DATA,
         progress: bool = False, startup: float = 600.0, reader: str = READER) -> tuple[int, list[Defect]]:
    """Run ``cases`` cases of run ``seed``; returns the number run and the defects.

    ``timeout`` is what one case may take in a warmed-up child. A case that
    takes longer is run again at the end, alone, in a fresh warmed-up child,
    and is a hang only if it takes longer there too: a machine busy with
    other work slows a case down, it does not make one hang. ``startup``
    bounds a child's start and warm-up. ``reader`` (``module:function``)
    reads a case in the children (default: every way a user would). Each defect's input is copied into
    ``keep`` (default: a folder named ``fuzz-defects`` in the current
    directory, made only when needed).
    """
    seeds = load_seeds(data)
    if not seeds:
        raise FileNotFoundError(f"no seed files under {data}")
    work = Path(tempfile.mkdtemp(prefix="mrcz-fuzz-"))
    seeds += load_seeds(write_extended_seeds(work / "seeds"))
    warm = warm_files(seeds)
    keep = Path(keep or "fuzz-defects")
    defects: list[Defect] = []
    suspects: list[tuple] = []  # cases that took longer than ``timeout``: run again, alone
    selector = selectors.DefaultSelector()
    next_case, done, t0 = 0, 0, time.monotonic()

    def record(case: tuple, why: str) -> None:
        path, source, mutations, i = case
        keep.mkdir(parents=True, exist_ok=True)
        kept = keep / path.name
        shutil.copyfile(path, kept)
        defects.append(Defect(i, source.path.name, mutations, why, str(kept)))

    def launch(worker: Worker) -> None:
        worker.start()
        selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)

    def retire(worker: Worker) -> None:
        if worker.proc is not None:
            selector.unregister(worker.proc.stdout)
            worker.kill()

    def give(worker: Worker) -> None:
        nonlocal next_case
        if next_case < cases:
            path, source, mutations = case_file(seeds, seed, next_case, work)
            worker.send((path, source, mutations, next_case))
            next_case += 1

    def finish(worker: Worker, result: dict | None, again: bool = False) -> None:
        """Judge the worker's case by the child's answer (``None``: the child died under it).

        ``again``: a suspected hang run again, counted already.
        """
        nonlocal done
        case, worker.case = worker.case, None
        if result is None:
            code = worker.proc.wait()
            record(case, f"crash ({signal.Signals(-code).name if code < 0 else f'exit {code}'})")
        elif not result["ok"]:
            record(case, result["why"])
        case[0].unlink(missing_ok=True)
        done += 0 if again else 1
        if progress and done % 1000 == 0:
            print(f"{done} cases, {len(defects)} defects, {done / (time.monotonic() - t0):.0f}/s",
                  flush=True)

    def serve(worker: Worker) -> None:
        """Read the worker's next line: ready, or its case's result; restart it where it ended."""
        line = worker.proc.stdout.readline()
        if not worker.ready:
            if not line:
                raise RuntimeError(f"a fuzzing child ended before it was ready: {' '.join(worker.args)}")
            worker.ready = json.loads(line).get("ready", False)
            give(worker)
            return
        result = json.loads(line) if line else None
        finish(worker, result)
        if result is None or "MemoryError" in result.get("why", ""):  # the child has ended
            retire(worker)
            if next_case < cases:
                launch(worker)
        else:
            give(worker)

    def watch(pool: list[Worker]) -> None:
        """Set aside the cases that overran ``timeout``; fail a child that never got ready."""
        nonlocal done
        now = time.monotonic()
        for worker in pool:
            if worker.proc is None:
                continue
            if not worker.ready and now - worker.started > startup:
                raise RuntimeError(f"a fuzzing child was not ready after {startup:.0f} s")
            if worker.case is not None and now - worker.started > timeout:
                suspects.append(worker.case)
                worker.case = None
                done += 1
                retire(worker)
                if next_case < cases:
                    launch(worker)

    pool = [Worker(memory, alloc, warm, reader) for _ in range(max(1, workers))]
    try:
        for worker in pool[:cases]:
            launch(worker)
        while done < cases:
            for key, _ in selector.select(timeout=0.5):
                serve(key.data)
            watch(pool)
        for worker in pool:
            if worker.proc is not None:
                selector.unregister(worker.proc.stdout)
                worker.close()
        for case in suspects:  # again, alone: the only child running
            alone = Worker(memory, alloc, warm, reader)
            pool = [alone]
            launch(alone)
            while alone.proc is not None and not alone.ready:
                for key, _ in selector.select(timeout=0.5):
                    serve(key.data)
                watch(pool)
            alone.send(case)
            while alone.case is not None:
                if selector.select(timeout=0.5):
                    line = alone.proc.stdout.readline()
                    finish(alone, json.loads(line) if line else None, again=True)
                elif time.monotonic() - alone.started > timeout:
                    record(case, f"hang (more than {timeout:.0f} s among {workers} workers, and again alone)")
                    case[0].unlink(missing_ok=True)
                    alone.case = None
            retire(alone)
    finally:
        for worker in pool:
            retire(worker)
        shutil.rmtree(work, ignore_errors=True)
    return done, defects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", default="0", help="a number, or 'random'")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take")
    ap.add_argument("--memory", type=int, default=3 << 30, help="address-space cap of a child (bytes)")
    ap.add_argument("--alloc", type=int, default=256 << 20,
                    help="peak allocation allowed beyond 64 x the file's size (bytes)")
    ap.add_argument("--keep", type=Path, default=Path("fuzz-defects"), help="where defects' inputs go")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--reader", default=READER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.memory, args.alloc, args.warm, args.reader)
        return
    seed = random.SystemRandom().randrange(1 << 31) if args.seed == "random" else int(args.seed)
    print(f"fuzzing: {args.cases} cases, seed {seed}, {args.workers} workers, seeds from {DATA}", flush=True)
    t0 = time.monotonic()
    done, defects = fuzz(args.cases, seed, workers=args.workers, timeout=args.timeout, memory=args.memory,
                         alloc=args.alloc, keep=args.keep, progress=True)
    for d in defects:
        print(f"DEFECT case {d.case} ({d.seed_file}; {', '.join(d.mutations)}): {d.why}\n  kept: {d.kept}")
    print(f"{done} cases in {time.monotonic() - t0:.0f} s, seed {seed}: {len(defects)} defects")
    sys.exit(1 if defects else 0)


if __name__ == "__main__":
    main()
