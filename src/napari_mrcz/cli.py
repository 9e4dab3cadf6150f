"""The ``napari-mrcz`` command: ``info``, ``compress`` and ``decompress``.

A thin layer over the codec (``info``) and :mod:`napari_mrcz.batch` (the
others, which import dask only when they run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from ._version import __version__
from .codec.errors import MRCFileError
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, open_image

COMPRESSORS = ["lz4", "lz4hc", "zstd", "zlib", "blosclz"]


def _plain(value: Any) -> Any:
    """JSON-ready values (numpy arrays and scalars to lists and numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.rstrip(b"\0 ").decode("latin-1")
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def describe(path: str, full: bool = False) -> dict[str, Any]:
    """What ``info`` reports about one file, as a dict."""
    source = open_image(path)
    try:
        m = source.mrcz
        out: dict[str, Any] = {
            "file": path, "format": m["format"], "shape": list(source.shape),
            "dtype": np.dtype(source.dtype).name,
            "compressor": m.get("compressor"), "size_on_disk": m.get("size_on_disk"),
            "kind": "image" if len(source.shape) < 3 else ("stack" if m.get("stack") else "volume"),
            "axes": [{"label": a, "scale": s, "units": u or "px"}
                     for a, s, u in zip(source.axis_labels, source.scale, source.units, strict=False)],
            "voltage_kV": m.get("voltage"), "C3_mm": m.get("C3"), "gain": m.get("gain"),
        }
        header = m.get("header")
        if header is not None:
            out["mode"] = header["mode"]
            ext = (m.get("extended") or {}).get("type") or header["exttyp"].strip("\0 ")
            out["extended_header"] = ext or None
        out["json"] = m.get("meta") if m["format"].startswith("MRC") else None
        if "axes" in m:
            out["calibrations"] = m["axes"]
        if full:
            out["header"] = header
            if m.get("extended"):
                out["extended"] = m["extended"]
            if m.get("tags"):
                out["tags"] = m["tags"]
        return _plain(out)
    finally:
        source.handle.close()


def _print_text(info: dict[str, Any]) -> None:
    print(info["file"])
    rows = [("format", info["format"] + (f" ({info['compressor']})" if info.get("compressor") else "")),
            ("shape", " × ".join(map(str, info["shape"])) + f" {info['dtype']} ({info['kind']})")]
    if "mode" in info:
        rows.append(("mode", str(info["mode"])))
    axes = ", ".join(f"{a['label']} {a['scale']:.6g} {a['units']}" for a in info["axes"])
    rows.append(("pixel size", axes))
    for key, label, unit in (("voltage_kV", "voltage", " kV"), ("C3_mm", "C3", " mm"), ("gain", "gain", "")):
        rows.append((label, "not set" if info[key] is None else f"{info[key]:g}{unit}"))
    if info.get("extended_header"):
        rows.append(("extended header", info["extended_header"]))
    if info.get("json"):
        rows.append(("JSON", json.dumps(info["json"], ensure_ascii=False)))
    for k, cal in enumerate(info.get("calibrations") or []):
        text = f"scale {cal['scale']:g} {cal['units'] or 'px'}, offset {cal['offset'] + 0.0:g}"
        rows.append((f"calibration {k}", text))
    for key in ("header", "extended", "tags"):
        if key in info:
            rows.append((key, json.dumps(info[key], ensure_ascii=False, indent=1)))
    for label, value in rows:
        print(f"  {label:<16} {value}")


def cmd_info(args: argparse.Namespace) -> int:
    """``napari-mrcz info FILE...``."""
    status = 0
    for path in args.files:
        try:
            info = describe(path, full=args.full)
        except (MRCFileError, OSError, ValueError) as exc:
            message = str(exc)
            print(message if path in message else f"{path}: {message}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(info, ensure_ascii=False))
        else:
            _print_text(info)
    return status


def cmd_batch(args: argparse.Namespace, compressed: bool) -> int:
    """``napari-mrcz compress`` and ``decompress``."""
    from . import batch

    try:
        jobs = batch.plan(args.sources, args.output, compressed=compressed, pattern=args.pattern)
    except (FileNotFoundError, ValueError) as exc:
        print(f"napari-mrcz: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for item in batch.dry_run(jobs, args.overwrite):
            print(f"{item['action']:<5} {item['source']} -> {item['target']}")
        return 0
    t0 = time.perf_counter()
    outcomes = batch.run(jobs, compressed=compressed, compressor=args.compressor, clevel=args.clevel,
                         backend=args.backend, verify=not args.no_verify, overwrite=args.overwrite,
                         workers=args.workers, scheduler=args.scheduler, quiet=args.quiet)
    info = batch.summary(outcomes, time.perf_counter() - t0)
    if args.json:
        print(json.dumps({**info, "outcomes": [o.as_dict() for o in outcomes]}))
    elif not args.quiet:
        batch.print_summary(info)
    return 1 if info["failed"] else 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(prog="napari-mrcz", description="Inspect, compress and decompress "
                                 "MRC, MRCZ and DigitalMicrograph files.")
    ap.add_argument("--version", action="version", version=f"napari-mrcz {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a header summary of each file")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    info.add_argument("--full", action="store_true",
                      help="the whole header, the decoded extended header and DM tags")
    for name, what in (("compress", "write MRCZ"), ("decompress", "write plain MRC2014")):
        p = sub.add_parser(name, help=f"{what} for every file (folders are walked), verified, resumable")
        p.add_argument("sources", nargs="+", metavar="SRC")
        p.add_argument("-o", "--output", required=True, metavar="DEST", help="folder for the outputs")
        p.add_argument("--compressor", choices=COMPRESSORS, default=DEFAULT_SAVE_COMPRESSOR)
        p.add_argument("--clevel", type=int, choices=range(1, 10), default=DEFAULT_SAVE_CLEVEL,
                       metavar="1-9")
        p.add_argument("--backend", choices=["blosc1", "blosc2"], default=None,
                       help="chunk format (default blosc1, which every MRCZ reader knows)")
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="local worker processes (default: one per core)")
        p.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask cluster (tcp://host:8786)")
        p.add_argument("--pattern", metavar="GLOB", help="only files whose name matches")
        p.add_argument("--overwrite", action="store_true", help="rewrite targets that are already done")
        p.add_argument("--no-verify", action="store_true", help="skip decoding each output again")
        p.add_argument("--dry-run", action="store_true", help="say what would be done")
        p.add_argument("--quiet", action="store_true", help="no progress and no table")
        p.add_argument("--json", action="store_true", help="print the summary and every outcome as JSON")
    cache = sub.add_parser("cache", help="the cache of binned levels napari's 3D view uses: size, clear")
    cache.add_argument("--clear", action="store_true", help="remove every entry")
    return ap


def cmd_cache(args: argparse.Namespace) -> int:
    """Say where the pyramid cache is and what it holds; empty it with ``--clear``."""
    from .codec.pyramid import PyramidCache

    cache = PyramidCache()
    if args.clear:
        cache.clear()
    entries = cache.entries()
    print(f"{cache.root}: {len(entries)} entries, {cache.nbytes() / 1e9:.2f} GB "
          f"(limit {cache.limit_bytes / 1e9:.0f} GB: NAPARI_MRCZ_CACHE_GB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 all succeeded, 1 some failed, 2 bad arguments)."""
    args = parser().parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "cache":
        return cmd_cache(args)
    return cmd_batch(args, compressed=args.command == "compress")


if __name__ == "__main__":
    sys.exit(main())
