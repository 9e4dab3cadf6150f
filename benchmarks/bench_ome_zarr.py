"""OME-Zarr output: ``napari-mrcz compress --format ome-zarr`` beside mrc2omezarr 0.3 and ngff-zarr.

Data (issue 21): a float32 tomogram of a cell's edge made by
``napari_mrcz.samples.Tomogram`` (curved membrane, vesicles, ribosome-sized
particles and filaments in low-pass noise, 10 Å voxels), 1024 x 1024 x 1024
(4.3 GB), and its first 256 sections (1.1 GB) to see memory against file
size; and bench_batch's movie folder (8 int8 counting-mode movies of 24 x 4096
x 4096, 0.4 GB each), named ``.mrcs`` so that every tool takes them as stacks
of frames (binned in y and x only).

Each goes to NGFF 0.5 (Zarr v3, sharded) and 0.4 (Zarr v2, the CryoET Data
Portal's layout), three levels (1x, 2x, 4x), by

- ``napari-mrcz compress --format ome-zarr --levels 3`` (``batch.run``, as the
  command does): verified, on 2 worker processes and on 1 (the big tomogram),
  and on 2 with ``--no-verify`` (its NGFF 0.5);
- ngff-zarr (``to_ngff_image``, ``to_multiscales`` with ``itkwasm_bin_shrink``,
  a block mean like ours, and ``to_ngff_zarr``) on the source opened by
  mrcfile as a memory map, in dask chunks of our slabs, with our chunks, shards
  and blosc codec (zstd 3 in 0.5, lz4 5 in 0.4), on dask's threads;
- mrc2omezarr 0.3, its command line with its defaults (256³ chunks, blosc lz4 5
  with shuffle: the portal's), NGFF 0.4 only.

mrc2omezarr needs zarr<3 and ngff-zarr brings its own zarr engine (zarrista)
and wasmtime, so neither is installed in the project's venv: each gets a venv
of its own under ``--data`` (default ``../bench-data`` beside the checkout),
made with pip from PyPI on first use, and runs in a subprocess (ngff-zarr's
part is this file, run with ``--ngff-zarr-job``). As the machine is shared,
their processes are killed past 14 GB (less when less is free), and a run that
the small tomogram says would not fit is not started.

Reports input GB/s, CPU core-seconds per GB of input (the processes' own, this
machine is shared), the peak resident memory of the largest process (sampled
every 50 ms: a dask worker of ours, the whole process of the others), the
output's size, the speed-up of one file on 2 workers against 1, and where our
time goes (one file written in this process, phase by phase, beside blosc alone
on the same data). Writes docs/benchmarks/ome_zarr.json and .png, the
``ome_zarr`` section of docs/benchmarks.md and the projection in docs/scaling.md::

    python benchmarks/bench_ome_zarr.py                      # full size, about 12 minutes on 2 cores
    python benchmarks/bench_ome_zarr.py --sections 256 --small 128 --files 2 --no-publish  # quick
    python benchmarks/bench_ome_zarr.py --republish docs/benchmarks/ome_zarr.json  # only the docs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Pinned for reproducible comparisons; mrc2omezarr 0.3 resolves to zarr 2.18 and ome-zarr 0.11.
SIDE_VENVS = {
    "m2o": ["mrc2omezarr==0.3", "zarr==2.18.7", "ome-zarr==0.11.1", "psutil"],
    "ngff": ["ngff-zarr==0.50.0", "zarrista==0.1.0", "mrcfile>=1.5", "psutil"],
}
LEVELS = 3
VOXEL = 10.0
MOVIE_PIXEL = (1.0, 0.83, 0.83)


# --------------------------------------------------------------------------- the other tools' venvs


def side_venv(data: Path, name: str) -> Path:
    """The python of venv ``name`` under ``data``, made with pip on first use (or when the pins change)."""
    venv = data / f"venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-ome-zarr"
    want = " ".join(SIDE_VENVS[name])
    if not python.exists() or not stamp.is_file() or stamp.read_text() != want:
        print(f"making {venv} ({want}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *SIDE_VENVS[name]], check=True)
        stamp.write_text(want)
    return python


def side_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


# --------------------------------------------------------------------------- data


def _fill_planes(args: tuple) -> None:
    """Planes ``first..end`` of the sample tomogram into the MRC file at ``path`` (a worker process)."""
    import numpy as np

    from napari_mrcz import samples

    path, shape, offset, first, end = args
    volume = samples.Tomogram(*shape[:2])
    data = np.memmap(path, dtype="<f4", mode="r+", offset=offset, shape=shape)
    for i in range(first, end):
        data[i] = volume[i]
    data.flush()


def make_tomograms(folder: Path, sections: int, small: int, edge: int) -> tuple[Path, Path]:
    """The big tomogram (``sections`` x ``edge``²) and a file of its first ``small`` sections, made once."""
    import multiprocessing

    import mrcfile

    big, little = folder / f"tomogram_{sections}x{edge}.rec", folder / f"tomogram_{small}x{edge}.rec"
    stamp = folder / f".{big.name}.done"
    if not stamp.is_file():
        t0 = time.perf_counter()
        with mrcfile.new_mmap(str(big), shape=(sections, edge, edge), mrc_mode=2, overwrite=True) as mrc:
            mrc.voxel_size = VOXEL
            offset = int(mrc.data.offset) if hasattr(mrc.data, "offset") else 1024 + int(mrc.header.nsymbt)
        step = -(-sections // (4 * max(1, os.cpu_count() or 1)))
        parts = [(str(big), (sections, edge, edge), offset, z, min(sections, z + step))
                 for z in range(0, sections, step)]
        with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
            pool.map(_fill_planes, parts)
        with mrcfile.mmap(str(big), mode="r+") as mrc:
            sample = mrc.data[:: max(1, sections // 16)]
            mrc.header.dmin, mrc.header.dmax = float(sample.min()), float(sample.max())
            mrc.header.dmean, mrc.header.rms = float(sample.mean()), float(sample.std())
        stamp.write_text("")
        print(f"made {big.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    stamp_small = folder / f".{little.name}.done"
    if not stamp_small.is_file():
        with mrcfile.mmap(str(big), mode="r") as src, \
                mrcfile.new_mmap(str(little), shape=(small, edge, edge), mrc_mode=2, overwrite=True) as dst:
            for z in range(0, small, 64):
                dst.data[z:z + 64] = src.data[z:min(small, z + 64)]
            dst.voxel_size = VOXEL
            dst.header.dmin, dst.header.dmax = src.header.dmin, src.header.dmax
            dst.header.dmean, dst.header.rms = src.header.dmean, src.header.rms
        stamp_small.write_text("")
    return big, little


def make_movie_folder(folder: Path, files: int, frames: int, size: int) -> list[Path]:
    """bench_batch's movies (python-mrcz MRC files), named ``.mrcs``: stacks of frames, made once."""
    sys.path.insert(0, str(HERE))
    from bench_batch import make_movies

    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / f".{files}x{frames}x{size}.done"
    if not stamp.is_file():
        for old in folder.glob("*.mrc*"):
            old.unlink()
        for path in make_movies(folder, files, frames, size):
            path.rename(path.with_suffix(".mrcs"))
        stamp.write_text("")
    return sorted(folder.glob("*.mrcs"))


# --------------------------------------------------------------------------- the runs


def tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def usage() -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of this process and of its children that ended."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime, me.ru_minflt + kids.ru_minflt)


class MemoryCapError(RuntimeError):
    """A tool's process grew past the memory this shared machine can give it, and was killed."""


class ClientClock:
    """Time our client (this process) spends preparing and finishing split outputs (batch's serial part)."""

    def __init__(self) -> None:
        self.prepare = self.finish = 0.0
        self.files = 0

    def __enter__(self) -> ClientClock:
        from napari_mrcz.codec import convert
        from napari_mrcz.codec import ome_zarr as omz

        self._saved = (convert.prepare_zarr, omz.finish)
        prepare, finish = self._saved

        def timed_prepare(*a, **k):
            t0 = time.perf_counter()
            try:
                return prepare(*a, **k)
            finally:
                self.prepare += time.perf_counter() - t0

        def timed_finish(*a, **k):
            t0 = time.perf_counter()
            try:
                return finish(*a, **k)
            finally:
                self.finish += time.perf_counter() - t0
                self.files += 1

        convert.prepare_zarr, omz.finish = timed_prepare, timed_finish
        return self

    def __exit__(self, *exc: object) -> None:
        from napari_mrcz.codec import convert
        from napari_mrcz.codec import ome_zarr as omz

        convert.prepare_zarr, omz.finish = self._saved


def run_ours(sources: list[Path], out: Path, ngff: str, workers: int, verify: bool) -> dict:
    from napari_mrcz import batch

    jobs = batch.plan(sources, out, compressed=True, ome_zarr=True)
    with ClientClock() as clock:
        outcomes = batch.run(jobs, compressed=True, compressor=None, clevel=None, backend=None, verify=verify,
                             overwrite=True, workers=workers, scheduler=None, quiet=True, ome_zarr=True,
                             ngff=ngff, levels=LEVELS)
    bad = [f"{o.source}: {o.reason}" for o in outcomes if o.status != "done"]
    if bad:
        raise RuntimeError("; ".join(bad))
    return {"client_prepare_s": clock.prepare, "client_finish_s": clock.finish, "client_files": clock.files}


def run_m2o(python: Path, sources: list[Path], out: Path, stack: bool) -> dict:
    cli = python.parent / "mrc2omezarr"
    for src in sources:
        cmd = [str(cli), "--mrc-path", str(src), "--zarr-path", str(out / (src.stem + ".zarr"))]
        if stack:  # frames are not binned; python-mrcz's header has no voxel size it can read
            cmd += ["--is-image-stack", "--voxel-size", "1,1,1"]  # it parses integers only
        subprocess.run(cmd, check=True, capture_output=True)
    return {}


def ngff_settings(source: Path, ngff: str, stack: bool) -> dict:
    """Our layout's chunks, shards and codec for ``source``: what ngff-zarr is given."""
    from napari_mrcz.codec import ome_zarr as omz
    from napari_mrcz.codec.source import open_image

    opened = open_image(str(source))
    try:
        shape, dtype = tuple(opened.shape), opened.dtype
    finally:
        opened.handle.close()
    layout = omz.plan_layout(shape, dtype, volume=not stack, ngff=ngff, levels=LEVELS)
    return {"chunks": list(layout.chunks[0]), "shards": list(layout.shards[0]) if layout.shards else None,
            "cname": layout.compressor, "clevel": layout.clevel, "shuffle": layout.shuffle,
            "slab": layout.slab, "stack": stack,
            "pixel": list(MOVIE_PIXEL) if stack else [VOXEL] * 3}


def run_ngff(python: Path, sources: list[Path], out: Path, ngff: str, stack: bool) -> dict:
    job = {"version": ngff, "out": str(out), "sources": [str(s) for s in sources],
           **ngff_settings(sources[0], ngff, stack)}
    subprocess.run([str(python), str(Path(__file__).resolve()), "--ngff-zarr-job", json.dumps(job)],
                   check=True, capture_output=True, text=True)
    return {}


def ngff_zarr_job(spec: dict) -> None:
    """Run in ngff-zarr's venv: every source of ``spec`` to OME-Zarr, as a user of ngff-zarr would."""
    import dask.array as da
    import mrcfile
    import ngff_zarr as nz

    version, stack = spec["version"], spec["stack"]
    dims = ("t", "y", "x") if stack else ("z", "y", "x")
    chunks = dict(zip(dims, spec["chunks"], strict=True))
    factors = [{"y": 2 ** k, "x": 2 ** k} if stack else 2 ** k for k in range(1, LEVELS)]
    for src in spec["sources"]:
        with mrcfile.mmap(src, mode="r", permissive=True) as mrc:
            data = mrc.data
            arr = da.from_array(data, chunks=(spec["slab"], *data.shape[1:]))
            units = {d: "angstrom" for d in dims if d != "t"}
            image = nz.to_ngff_image(arr, dims=dims, scale=dict(zip(dims, spec["pixel"], strict=True)),
                                     axes_units=units, name=Path(src).stem)
            multiscales = nz.to_multiscales(image, scale_factors=factors, chunks=chunks,
                                            method=nz.Methods.ITKWASM_BIN_SHRINK)
            itemsize = data.dtype.itemsize
            if version == "0.5":
                per_shard = {d: s // c for d, s, c in zip(dims, spec["shards"], spec["chunks"], strict=True)}
                codec = {"name": "blosc", "configuration": {"cname": spec["cname"], "clevel": spec["clevel"],
                                                            "shuffle": spec["shuffle"], "typesize": itemsize,
                                                            "blocksize": 0}}
                kwargs = {"chunks_per_shard": per_shard, "compressors": [codec]}
            else:
                kwargs = {"compressor": {"id": "blosc", "cname": spec["cname"], "clevel": spec["clevel"],
                                         "shuffle": 1 if spec["shuffle"] == "shuffle" else 0, "blocksize": 0}}
            nz.to_ngff_zarr(str(Path(spec["out"]) / (Path(src).stem + ".zarr")), multiscales,
                            version=version, **kwargs)


def measure(name: str, fn, out: Path, in_bytes: int, cap: float | None, per_file: float) -> dict:
    """Run ``fn(out)`` once: wall time, CPU, peak RSS of the largest child process, output size, sync."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.sync()  # the previous run's writeback is not charged here
    from bench_batch import PeakRSS

    with PeakRSS(include_self=False, cap=cap) as watch:
        u0, t0 = usage(), time.perf_counter()
        try:
            extra = fn(out) or {}
        except subprocess.CalledProcessError:
            if watch.killed:
                raise MemoryCapError(f"killed at {watch.killed / 1e9:.1f} GB of memory "
                                     f"({watch.killed / per_file:.0f}x the input file) after "
                                     f"{time.perf_counter() - t0:.0f} s") from None
            raise
        seconds = time.perf_counter() - t0
        u1 = usage()
    t1 = time.perf_counter()
    os.sync()  # what the others leave to the kernel (ours has synced every file already)
    sync = time.perf_counter() - t1
    user, system, faults = (b - a for a, b in zip(u0, u1, strict=True))
    result = {"seconds": seconds, "cpu_s": user + system, "user_s": user, "sys_s": system,
              "minor_faults": faults, "peak_rss": watch.peak, "out_bytes": tree_size(out),
              "in_bytes": in_bytes, "sync_s": sync, **extra}
    print(f"  {name:<50} {in_bytes / seconds / 1e9:6.3f} GB/s  "
          f"{(user + system) / in_bytes * 1e9:5.1f} core-s/GB "
          f"(sys {system / in_bytes * 1e9:4.1f})  peak {watch.peak / 1e6:6.0f} MB  "
          f"out {result['out_bytes'] / 1e9:5.2f} GB  (+{sync:.1f} s sync)", flush=True)
    return result


def describe(folder: Path) -> dict:
    """Level 0 of an OME-Zarr folder as written: its dtype, chunks, shards and codec, from its JSON."""
    if (folder / "zarr.json").is_file():
        root = json.loads((folder / "zarr.json").read_text())["attributes"]
        ms = (root.get("ome") or root)["multiscales"][0]
        meta = json.loads((folder / ms["datasets"][0]["path"] / "zarr.json").read_text())
        outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs, shards, chunks = meta["codecs"], None, outer
        if codecs[0]["name"] == "sharding_indexed":
            shards, chunks = outer, codecs[0]["configuration"]["chunk_shape"]
            codecs = codecs[0]["configuration"]["codecs"]
        blosc = next((c["configuration"] for c in codecs if c["name"] == "blosc"), None)
        codec = f"blosc {blosc['cname']} {blosc['clevel']} {blosc['shuffle']}" if blosc else \
            "+".join(c["name"] for c in codecs)
        return {"zarr": 3, "ngff": (root.get("ome") or {}).get("version"), "levels": len(ms["datasets"]),
                "dtype": meta["data_type"], "chunks": chunks, "shards": shards, "codec": codec,
                "path": ms["datasets"][0]["path"]}
    attrs = json.loads((folder / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    meta = json.loads((folder / ms["datasets"][0]["path"] / ".zarray").read_text())
    comp = meta.get("compressor") or {}
    shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(comp.get("shuffle"), "")
    return {"zarr": 2, "ngff": ms.get("version"), "levels": len(ms["datasets"]),
            "dtype": str(meta["dtype"]), "chunks": meta["chunks"], "shards": None,
            "codec": f"{comp.get('id')} {comp.get('cname')} {comp.get('clevel')} {shuffle}",
            "path": ms["datasets"][0]["path"]}


def check_level0(folder: Path, source: Path) -> bool:
    """Whether level 0's first and last sections are the source's, value for value."""
    import mrcfile
    import numpy as np
    import zarr

    info = describe(folder)
    array = zarr.open_array(str(folder / info["path"]), mode="r")
    with mrcfile.mmap(str(source), mode="r", permissive=True) as mrc:
        n = mrc.data.shape[0]
        return all(np.array_equal(np.asarray(array[i]), np.asarray(mrc.data[i])) for i in (0, n - 1))


# --------------------------------------------------------------------------- where our time goes


def breakdown(source: Path, ngff: str, tmp: Path) -> dict:
    """One file written and verified in this process on one thread (a one-core worker), phase by phase.

    CPU seconds (user and system, all threads) of each step of our writer,
    found by wrapping its functions (those this version has): reading the
    source's sections, block sums for the coarser levels, compressing the
    chunks, verification's decode and comparison in memory, the files
    (write, fsync, read back for the CRC-32), the final sync and rename, and
    the rest (copies into the slab, padding, allocation). Beside blosc alone
    compressing and decoding level 0's data in level 0's chunks on one thread:
    what no writer can beat.
    """
    import numpy as np

    from napari_mrcz.codec import blosc_chunks, convert
    from napari_mrcz.codec import ome_zarr as omz
    from napari_mrcz.codec.export import source_sections
    from napari_mrcz.codec.source import open_image

    try:
        from napari_mrcz.codec import zarr_chunks
        writer = zarr_chunks.ChunkWriter
    except (ImportError, AttributeError):
        writer = None
    hooks = {"block sums (levels 1, 2)": (omz._LevelPlanes, "add"),
             "compress chunks": (writer, "_encode"),
             "verify: decode in memory": (blosc_chunks, "decompress_into"),
             "verify: compare": (convert, "same_bytes"),
             "files: write, fsync, read back + CRC": (writer, "_write_file"),
             "finish (sync, rename)": (omz, "finish")}
    hooks = {k: v for k, v in hooks.items() if v[0] is not None and hasattr(*v)}
    phases = dict.fromkeys(["read source sections", *hooks], 0.0)
    system = dict.fromkeys(phases, 0.0)

    def timed(name: str, fn):
        def wrapper(*a, **k):
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            try:
                return fn(*a, **k)
            finally:
                u1 = resource.getrusage(resource.RUSAGE_SELF)
                phases[name] += u1.ru_utime - u0.ru_utime
                system[name] += u1.ru_stime - u0.ru_stime
        return wrapper

    target = tmp / "breakdown.zarr"
    opened = open_image(str(source))
    saved = {name: getattr(*where) for name, where in hooks.items()}
    try:
        prepared = convert.prepare_zarr(opened, target, ngff=ngff, levels=LEVELS)
        read = timed("read source sections", source_sections(opened, 1).__getitem__)
        for name, fn in saved.items():
            setattr(*hooks[name], timed(name, fn))
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        c0, t0 = time.process_time(), time.perf_counter()
        omz.write_all(prepared, read, 1, True)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for name, fn in saved.items():
            setattr(*hooks[name], fn)
        opened.handle.close()
        shutil.rmtree(target, ignore_errors=True)
    if "compress chunks" in phases:  # it holds verification's decode and compare: count those once
        for times in (phases, system):
            times["compress chunks"] -= times.get("verify: decode in memory", 0.0) + \
                times.get("verify: compare", 0.0)
    sys_s, faults = usage1.ru_stime - usage0.ru_stime, usage1.ru_minflt - usage0.ru_minflt
    layout = prepared.the_layout()
    gb = source.stat().st_size / 1e9
    user = usage1.ru_utime - usage0.ru_utime
    per_gb = {k: v / gb for k, v in phases.items()}
    per_gb["other (copies, padding, allocation)"] = max(0.0, user - sum(phases.values())) / gb
    system_per_gb = {k: v / gb for k, v in system.items()}
    # blosc alone: level 0's first slab, in level 0's chunks, one thread
    import blosc
    import mrcfile

    with mrcfile.mmap(str(source), mode="r") as mrc:
        cz, cy, cx = layout.chunks[0]
        depth = min(mrc.data.shape[0], layout.slab, 128)
        block = np.ascontiguousarray(mrc.data[:depth])
    pieces = [np.ascontiguousarray(block[z:z + cz, y:y + cy, x:x + cx]) for z in range(0, depth, cz)
              for y in range(0, block.shape[1], cy) for x in range(0, block.shape[2], cx)]
    shuffle = {"noshuffle": blosc.NOSHUFFLE, "shuffle": blosc.SHUFFLE, "bitshuffle": blosc.BITSHUFFLE}
    threads = blosc.set_nthreads(1)
    try:
        c0 = time.process_time()
        encoded = [blosc.compress(p, typesize=p.dtype.itemsize, clevel=layout.clevel,
                                  shuffle=shuffle[layout.shuffle], cname=layout.compressor) for p in pieces]
        encode = time.process_time() - c0
        c0 = time.process_time()
        for e in encoded:
            blosc.decompress(e)
        decode = time.process_time() - c0
    finally:
        blosc.set_nthreads(threads)
    block_gb = block.nbytes / 1e9
    written = sum(math.prod(s) for s in layout.shapes) / math.prod(layout.shapes[0])
    return {"ngff": ngff, "in_bytes": int(gb * 1e9), "cpu_s": cpu, "wall_s": wall, "sys_s": sys_s,
            "user_s": user, "minor_faults": faults, "system_per_gb": system_per_gb,
            "per_gb": per_gb, "blosc_encode_per_gb": encode / block_gb * written,
            "blosc_decode_per_gb": decode / block_gb * written,
            "codec": f"{layout.compressor} {layout.clevel} {layout.shuffle}", "bytes_written_per_in": written}


# --------------------------------------------------------------------------- the whole run


def wait_until_quiet(limit_s: float = 1200, every_s: float = 30) -> bool:
    """Wait until no other test or benchmark runs (``pgrep -f 'pytest|bench_'``); False if still busy."""
    import psutil

    me = psutil.Process()
    mine = {me.pid, *(p.pid for p in me.parents())}  # this run and what started it (make, a shell)
    t0 = time.perf_counter()
    while True:
        out = subprocess.run(["pgrep", "-f", "pytest|bench_"], capture_output=True, text=True).stdout.split()
        others = [p for p in out if int(p) not in mine | {c.pid for c in me.children(recursive=True)}]
        if not others:
            return True
        if time.perf_counter() - t0 > limit_s:
            return False
        print(f"waiting for {len(others)} other test/benchmark processes ...", flush=True)
        time.sleep(every_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("NAPARI_MRCZ_BENCH_DATA",
                                                                      ROOT.parent / "bench-data")),
                    help="sources, outputs and the other tools' venvs (not in the repository)")
    ap.add_argument("--sections", type=int, default=1024, help="the big tomogram's sections (4.3 GB)")
    ap.add_argument("--small", type=int, default=256, help="the small tomogram's sections (1.1 GB)")
    ap.add_argument("--edge", type=int, default=1024, help="the tomograms' y and x")
    ap.add_argument("--files", type=int, default=8, help="movies in the folder")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--parts", default="tomogram,movies,breakdown")
    ap.add_argument("--keep-data", action="store_true", help="keep the sources for the next run")
    ap.add_argument("--no-publish", action="store_true", help="print only; leave the docs alone")
    ap.add_argument("--wait", action="store_true", help="first wait (up to 20 min) until no other "
                    "pytest or bench_ process runs")
    ap.add_argument("--republish", type=Path, metavar="JSON", help="only rewrite the docs from the "
                    "figures of an earlier run (its docs/benchmarks/ome_zarr.json)")
    ap.add_argument("--ngff-zarr-job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ngff_zarr_job:
        ngff_zarr_job(json.loads(args.ngff_zarr_job))
        return
    if args.republish:
        publish(json.loads(args.republish.read_text()))
        return
    import mrcfile
    import numpy as np
    import psutil

    data = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    m2o, ngff = side_venv(data, "m2o"), side_venv(data, "ngff")
    versions = {"mrc2omezarr": side_version(m2o, "mrc2omezarr"), "ngff-zarr": side_version(ngff, "ngff-zarr"),
                "zarrista": side_version(ngff, "zarrista")}
    import zarr

    from napari_mrcz._version import __version__
    versions.update({"napari-mrcz": __version__, "zarr (ours)": zarr.__version__})
    quiet = wait_until_quiet() if args.wait else None
    parts = set(args.parts.split(","))
    t_start = time.perf_counter()
    runs: list[dict] = []
    out = data / "out"
    made: list[Path] = []

    def one(label: str, kind: str, ngff_v: str, tool: str, fn, sources: list[Path], check: Path,
            workers: int | None = None, verify: bool | None = None, predicted: float | None = None) -> None:
        in_bytes = sum(s.stat().st_size for s in sources)
        row = {"data": label, "kind": kind, "ngff": ngff_v, "tool": tool, "workers": workers,
               "verify": verify, "files": len(sources)}
        if predicted is not None and psutil.virtual_memory().available < 1.2 * predicted + 1e9:
            row["skipped"] = (f"not run: it would need about {predicted / 1e9:.0f} GB of memory "
                              f"({psutil.virtual_memory().available / 1e9:.0f} GB available)")
            print(f"  {tool}: {row['skipped']}", flush=True)
            runs.append(row)
            return
        name = f"{tool}{'' if workers is None else f', {workers} worker' + ('s' if workers > 1 else '')}" \
               f"{'' if verify in (None, True) else ', --no-verify'}"
        cap = None if tool == "napari-mrcz" else max(2e9, min(14e9, psutil.virtual_memory().available - 5e9))
        try:
            row.update(measure(f"{label} NGFF {ngff_v} {name}", fn, out, in_bytes, cap,
                               in_bytes / len(sources)))
            folder = out / (check.stem + ".zarr")
            row["layout"] = describe(folder)
            row["level0_equal"] = check_level0(folder, check)
        except MemoryCapError as exc:
            row["skipped"] = f"{exc}: not finished"
            print(f"  {name}: {row['skipped']}", flush=True)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            detail = (str(getattr(exc, "stderr", "") or "").strip().splitlines() or [str(exc)])[-1]
            row["skipped"] = f"failed: {type(exc).__name__}: {detail}"
            print(f"  {name}: {row['skipped']}", flush=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        runs.append(row)

    def peak_ratio(tool: str, label: str, ngff_v: str) -> float | None:
        for r in runs:
            if r["tool"] == tool and r["data"] == label and r["ngff"] == ngff_v and "peak_rss" in r:
                return r["peak_rss"] / r["in_bytes"]
        return None

    def tomogram_runs(one, path: Path, label: str, first: bool, small_label: str) -> None:
        print(f"{label} float32, {path.stat().st_size / 1e9:.2f} GB:", flush=True)
        size = path.stat().st_size
        for v in ("0.5", "0.4"):
            for w, verify in ((2, True), (1, True), (2, False)):
                if first and (w, verify) != (2, True):
                    continue  # the small file is for memory against size; speed-up and costs on the big one
                if v == "0.4" and not verify:
                    continue  # what verification costs is seen in 0.5
                one(label, "tomogram", v, "napari-mrcz", lambda o, w=w, vf=verify, v=v:
                    run_ours([path], o, v, w, vf), [path], path, w, verify)
            ratio = None if first else peak_ratio("ngff-zarr", small_label, v)
            one(label, "tomogram", v, "ngff-zarr", lambda o, v=v: run_ngff(ngff, [path], o, v, False),
                [path], path, predicted=None if ratio is None else ratio * size)
        ratio = None if first else peak_ratio("mrc2omezarr", small_label, "0.4")
        one(label, "tomogram", "0.4", "mrc2omezarr", lambda o: run_m2o(m2o, [path], o, False), [path], path,
            predicted=None if ratio is None else ratio * size)

    tomos = data / "tomograms"
    tomos.mkdir(exist_ok=True)
    breakdowns = []
    if "tomogram" in parts or "breakdown" in parts:
        big, little = make_tomograms(tomos, args.sections, args.small, args.edge)
        made += [big, little]
        shutil.rmtree(tomos / "breakdown.zarr", ignore_errors=True)
    if "tomogram" in parts:
        tiny = tomos / "start_up_16x64.rec"  # what starting the batch costs, whatever the data
        with mrcfile.new(str(tiny), overwrite=True) as mrc:
            mrc.set_data(np.zeros((16, 64, 64), np.float32))
            mrc.voxel_size = VOXEL
        one("a 256 kB tomogram (start-up alone)", "start-up", "0.5", "napari-mrcz",
            lambda o: run_ours([tiny], o, "0.5", 2, True), [tiny], tiny, 2, True)
        tiny.unlink()
        sizes = [(little, f"tomogram {args.small}x{args.edge}x{args.edge}"),
                 (big, f"tomogram {args.sections}x{args.edge}x{args.edge}")]
        for path, label in sizes:
            tomogram_runs(one, path, label, first=path is little, small_label=sizes[0][1])
    if "movies" in parts:
        folder = data / "movies"
        movies = make_movie_folder(folder, args.files, args.frames, args.size)
        made.append(folder)
        label = f"{args.files} movies {args.frames}x{args.size}x{args.size}"
        print(f"{label} int8, {sum(m.stat().st_size for m in movies) / 1e9:.2f} GB:", flush=True)
        for v in ("0.5", "0.4"):
            one(label, "movies", v, "napari-mrcz", lambda o, v=v: run_ours([folder], o, v, 2, True), movies,
                movies[0], 2, True)
            one(label, "movies", v, "ngff-zarr", lambda o, v=v: run_ngff(ngff, movies, o, v, True), movies,
                movies[0])
        one(label, "movies", "0.4", "mrc2omezarr", lambda o: run_m2o(m2o, movies, o, True), movies, movies[0])
    if "breakdown" in parts:
        print("where our time goes (one file, this process, one thread):", flush=True)
        for v in ("0.5", "0.4"):
            b = breakdown(little, v, tomos)
            breakdowns.append(b)
            print(f"  NGFF {v}: {b['cpu_s'] / b['in_bytes'] * 1e9:.1f} core-s/GB: " + ", ".join(
                f"{k} {s:.2f}" for k, s in b["per_gb"].items()) + f"; blosc alone encode "
                f"{b['blosc_encode_per_gb']:.2f}, decode {b['blosc_decode_per_gb']:.2f}", flush=True)
    elapsed = time.perf_counter() - t_start
    results = {"cores": os.cpu_count(), "memory_GB": psutil.virtual_memory().total / 1e9,
               "versions": versions, "quiet_machine": quiet, "elapsed_s": elapsed, "runs": runs,
               "breakdown": breakdowns,
               "args": {k: str(v) for k, v in vars(args).items() if k != "ngff_zarr_job"}}
    if args.no_publish:
        (data / "ome_zarr.json").write_text(json.dumps(results, indent=1))  # for --republish
        print("\n" + report(results) + "\n\n" + projection(results))
    else:
        publish(results)
    if not args.keep_data:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                (path.parent / f".{path.name}.done").unlink(missing_ok=True)
    print(f"\n{elapsed / 60:.1f} min", flush=True)


# --------------------------------------------------------------------------- the report


def publish(results: dict) -> None:
    """Save ``results`` as docs/benchmarks/ome_zarr.json, write the tables, the projection and the plot."""
    sys.path.insert(0, str(HERE))
    from _common import update_docs

    docs = ROOT / "docs"
    (docs / "benchmarks").mkdir(exist_ok=True)
    (docs / "benchmarks" / "ome_zarr.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print("\n" + text)
    update_docs(docs / "benchmarks.md", "ome_zarr", text)
    projection_text = projection(results)
    if projection_text:
        print("\n" + projection_text)
        update_docs(docs / "scaling.md", "ome-zarr-projection", projection_text)
    try:
        plot(results, docs / "benchmarks" / "ome_zarr.png")
    except ImportError:
        pass


def _gbps(r: dict) -> float:
    return r["in_bytes"] / r["seconds"] / 1e9


def _dtype(name: str) -> str:
    """A dtype's plain name (Zarr v2 says ``|i1``, which a Markdown table would split)."""
    try:
        import numpy as np

        return np.dtype(name).name
    except TypeError:
        return str(name).replace("|", "")


def _shape(v) -> str:
    return "x".join(map(str, v)) if v else "-"


def _who(r: dict) -> str:
    if r["tool"] != "napari-mrcz":
        return r["tool"]
    return (f"napari-mrcz, {r['workers']} worker{'s' if r['workers'] > 1 else ''}"
            f"{'' if r['verify'] else ', --no-verify'}")


def find(results: dict, **where) -> dict | None:
    for r in results["runs"]:
        if all(r.get(k) == v for k, v in where.items()) and "seconds" in r:
            return r
    return None


def report(results: dict) -> str:
    runs = results["runs"]
    lines = [f"{results['cores']} cores, {results['memory_GB']:.0f} GB; one run each, sources in the page "
             "cache; levels 1x, 2x, 4x for all. GB/s of input (MRC bytes) from start to return; 'synced' "
             "adds the `sync` the others leave to the kernel (ours fsyncs every file before it returns). "
             "x ours: the row's speed over napari-mrcz's (verified, 2 workers) on the same data. "
             "CPU: core-s (user + system, of which system in brackets) of the tool's processes per GB of "
             "input. Peak RSS: the largest process (for napari-mrcz a worker, for the others their one "
             "process), sampled every 50 ms; the others run under a memory cap, as this machine is shared. "
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".", "",
             "| data | NGFF | tool | GB/s | GB/s synced | **x ours** | CPU core-s/GB | peak RSS | "
             "RSS / input file | output | level 0 as written |", "|---" * 11 + "|"]
    for r in runs:
        if r["kind"] == "start-up":
            continue
        if "seconds" not in r:
            lines.append(f"| {r['data']} | {r['ngff']} | {_who(r)} | - | - | - | - | - | - | - | "
                         f"{r['skipped']} |")
            continue
        ours = find(results, data=r["data"], ngff=r["ngff"], tool="napari-mrcz", workers=2, verify=True)
        per_file = r["in_bytes"] / r["files"]
        lay = r["layout"]
        where = f"{_dtype(lay['dtype'])}, chunks {_shape(lay['chunks'])}" + \
            (f" in shards {_shape(lay['shards'])}" if lay["shards"] else "") + f", {lay['codec']}" + \
            ("" if r.get("level0_equal") else ", **level 0 differs from the source**")
        x = ours["seconds"] / r["seconds"] if ours else float("nan")
        gb = r["in_bytes"] / 1e9
        lines.append(f"| {r['data']} | {r['ngff']} | {_who(r)} | {_gbps(r):.3f} | "
                     f"{gb / (r['seconds'] + r['sync_s']):.3f} | **{x:.2f}** | "
                     f"{r['cpu_s'] / gb:.1f} ({r['sys_s'] / gb:.1f}) | {r['peak_rss'] / 1e6:.0f} MB | "
                     f"{r['peak_rss'] / per_file:.2f} | {r['out_bytes'] / 1e9:.2f} GB "
                     f"({r['in_bytes'] / r['out_bytes']:.2f}x) | {where} |")
    start = next((r for r in runs if r["kind"] == "start-up" and "seconds" in r), None)
    if start:
        lines += ["", f"Start-up: the same command on a {start['in_bytes'] / 1e3:.0f} kB tomogram (a "
                  f"LocalCluster of 2 workers started, the file planned, written, verified and named, the "
                  f"cluster closed) takes {start['seconds']:.1f} s and {start['cpu_s']:.1f} core-s, in every "
                  f"napari-mrcz row above; an idle worker peaks at {start['peak_rss'] / 1e6:.0f} MB."]
    lines += ["", "| one file on 2 workers against 1 (napari-mrcz, verified) | NGFF 0.5 | NGFF 0.4 |",
              "|---|---|---|"]
    for label in dict.fromkeys(r["data"] for r in runs if r["kind"] == "tomogram"):
        cells = []
        for v in ("0.5", "0.4"):
            one, two = (find(results, data=label, ngff=v, tool="napari-mrcz", workers=w, verify=True)
                        for w in (1, 2))
            cells.append(f"**{one['seconds'] / two['seconds']:.2f}x** ({one['seconds']:.1f} s -> "
                         f"{two['seconds']:.1f} s)" if one and two else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    if results["breakdown"]:
        bd = results["breakdown"]
        names = list(bd[0]["per_gb"])
        lines += ["", f"Where our time goes: one file ({bd[0]['in_bytes'] / 1e9:.1f} GB) written in this "
                  "process on one thread, from timers around our writer's functions: user CPU core-s per "
                  "GB of input by phase, and the kernel's time (system) for all phases together, with the "
                  "phases where most of it falls (page faults on fresh memory, copies into and out of the "
                  "page cache, fsync; it varies 2-3x between runs on this VM). 'blosc alone' compresses and "
                  "decodes level 0's data in level 0's chunks on one thread, scaled to every level's bytes ("
                  + ", ".join(f"{b['bytes_written_per_in']:.3f}x the input" for b in bd[:1]) + "): no "
                  "writer can do with less.", "",
                  "| NGFF | codec | user + system | " + " | ".join(names)
                  + " | system | blosc alone: encode | decode |", "|---" * (len(names) + 6) + "|"]
        for b in bd:
            gb = b["in_bytes"] / 1e9
            top = sorted((b.get("system_per_gb") or {}).items(), key=lambda kv: -kv[1])[:2]
            lines.append(f"| {b['ngff']} | {b['codec']} | {b['cpu_s'] / gb:.2f} | "
                         + " | ".join(f"{b['per_gb'][k]:.2f}" for k in names)
                         + f" | {b['sys_s'] / gb:.2f} ({b['minor_faults'] / gb / 1e3:.0f}k page faults/GB; "
                         + ", ".join(f"{k.split(':')[0]} {v:.1f}" for k, v in top)
                         + f") | {b['blosc_encode_per_gb']:.2f} | {b['blosc_decode_per_gb']:.2f} |")
    if results.get("quiet_machine") is False:
        lines += ["", "Other tests or benchmarks were running on the machine during this run."]
    return "\n".join(lines)


def projection(results: dict) -> str:
    """A 500-tomogram deposition on 8, 64 and 512 one-core workers, from the measured rates."""
    big = max((r for r in results["runs"] if r["kind"] == "tomogram" and "seconds" in r),
              key=lambda r: r["in_bytes"], default=None)
    if big is None:
        return ""
    label = big["data"]
    lines = []
    rows = []
    for v in ("0.5", "0.4"):
        two = find(results, data=label, ngff=v, tool="napari-mrcz", workers=2, verify=True)
        if not two:
            continue
        size = two["in_bytes"]
        per_core_wall = _gbps(two) / results["cores"]
        per_core_cpu = two["in_bytes"] / two["cpu_s"] / 1e9
        moved = 1 + 2 * two["out_bytes"] / size  # source read once, the output written and read back
        files = max(1, two.get("client_files", 0))
        client = (two.get("client_prepare_s", 0.0) / files, two.get("client_finish_s", 0.0) / files)
        rows.append((v, size, per_core_wall, per_core_cpu, moved, client, two))
    if not rows:
        return ""
    n, total_gb = 500, 500 * rows[0][1] / 1e9
    lines.append(f"500 tomograms of {rows[0][1] / 1e9:.1f} GB ({label}, float32), {total_gb / 1e3:.2f} TB "
                 "of input, written as OME-Zarr with 3 levels, verified. From the run above, per one-core "
                 "worker (a 2-worker run's input rate over its 2 cores; its CPU time alone would allow "
                 "more): " + "; ".join(f"NGFF {v} {pc:.3f} GB/s ({cpu:.3f} from CPU time)"
                                       for v, _, pc, cpu, *_ in rows) +
                 ". Each GB of input moves about " + " / ".join(f"{m:.2f}" for *_, m, _, _ in rows) +
                 " GB through shared storage (the source read once, the output written and read back to "
                 "verify; the readback often from the page cache). A file is split into slab tasks only "
                 "when it is at least one worker's share of the batch (here: 512 workers, not 8 or 64); "
                 "the client then plans it and finishes it (metadata, sync, rename) itself, one file "
                 "after another: " + "; ".join(f"NGFF {v}: {p:.2f} s to plan, {f:.2f} s to finish"
                                               for v, *_, (p, f), _ in rows) +
                 " per file here. Whole-file tasks do that on their worker, in parallel.")
    lines += ["", "| NGFF | workers | compute (GB/s of input) | storage at 10 GB/s | storage at 50 GB/s | "
              "time (10 GB/s storage) | time (50 GB/s) |", "|---|---|---|---|---|---|---|"]
    for v, _size, pc, _, moved, client, _ in rows:
        for w in (8, 64, 512):
            compute = w * pc
            cells, times = [], []
            for bw in (10.0, 50.0):
                limit = bw / moved
                rate = min(compute, limit)
                cells.append(f"{'compute' if compute <= limit else 'storage'}-bound: {rate:.1f} GB/s")
                prepare, finish = client
                if w >= n:  # split: every file planned in the client before any task starts, finished there
                    seconds = n * prepare + max(total_gb / rate, n * finish)
                else:  # whole files: planning and finishing are part of each worker's task
                    seconds = total_gb / rate + n * (prepare + finish) / w
                seconds *= math.ceil(n / w) / (n / w) if w < n else 1.0  # the last round of whole files
                times.append(_duration(seconds))
            lines.append(f"| {v} | {w} | {compute:.1f} | {cells[0]} | {cells[1]} | {times[0]} | {times[1]} |")
    m2o = find(results, data=label, tool="mrc2omezarr") or next(
        (r for r in results["runs"]
         if r["tool"] == "mrc2omezarr" and r["kind"] == "tomogram" and "seconds" in r),
        None)
    ngz = find(results, data=label, ngff="0.5", tool="ngff-zarr")
    notes = []
    if ngz:
        notes.append(f"ngff-zarr at its measured {_gbps(ngz) / results['cores']:.3f} GB/s per core and "
                     f"{ngz['peak_rss'] / 1e9:.1f} GB per process would take "
                     f"{_duration(total_gb / (8 * _gbps(ngz) / results['cores']))} on 8 cores")
    if m2o:
        notes.append(f"mrc2omezarr holds {m2o['peak_rss'] / m2o['in_bytes']:.1f}x its input in memory "
                     f"({m2o['peak_rss'] / m2o['in_bytes'] * rows[0][1] / 1e9:.0f} GB for one "
                     f"{rows[0][1] / 1e9:.1f} GB tomogram), so a node runs one at a time")
    if notes:
        lines += ["", "For comparison: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _short(runs: list[dict], data: str) -> str:
    r = next(r for r in runs if r["data"] == data)
    name = "tomogram" if r["kind"] == "tomogram" else f"{r['files']} movies"
    return f"{name}\n{r['in_bytes'] / 1e9:.1f} GB"


def plot(results: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [r for r in results["runs"] if "seconds" in r and r["kind"] != "start-up" and
            (r["tool"] != "napari-mrcz" or (r["workers"] == 2 and r["verify"]))]
    groups = list(dict.fromkeys((r["data"], r["ngff"]) for r in runs))
    tools = ["napari-mrcz", "ngff-zarr", "mrc2omezarr"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    x = np.arange(len(groups))
    width = 0.8 / len(tools)
    for ax, key, unit in ((axes[0], "gbps", "GB/s of input"), (axes[1], "rss", "peak RSS, GB")):
        for k, tool in enumerate(tools):
            values = []
            for data, v in groups:
                r = next((r for r in runs if (r["data"], r["ngff"], r["tool"]) == (data, v, tool)), None)
                if r is None:
                    values.append(0)
                elif key == "gbps":
                    values.append(_gbps(r))
                else:
                    values.append(r["peak_rss"] / 1e9)
            ax.bar(x + k * width, values, width, label=tool)
        ax.set_xticks(x + 0.4 - width / 2, [_short(runs, d) + f"\nNGFF {v}" for d, v in groups], fontsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    axes[0].set_title("throughput (napari-mrcz verified, 2 workers)")
    axes[1].set_title("memory of the largest process")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
