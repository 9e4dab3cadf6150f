"""The ``napari-mrcz`` command: ``info``, ``edit``, ``compress`` and ``decompress``.

A thin layer over the codec (``info``, ``edit``) and :mod:`napari_mrcz.batch`
(the others, which import dask only when they run, and run without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

import numpy as np

from ._version import __version__
from .batch import BATCH_EXTRA
from .codec.errors import MRCFileError
from .codec.precision import PRECISION_KEY
from .codec.precision import describe as describe_precision
from .codec.source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, open_image

COMPRESSORS = ["lz4", "lz4hc", "zstd", "zlib", "blosclz"]
#: JSON metadata longer than this (as one line) is shown shortened by ``info`` without ``--full``.
JSON_SHOWN_CHARS = 240


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
            "kind": {1: "spectrum", 2: "image"}.get(len(source.shape))
            or ("stack" if m.get("stack") else "volume"),
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
        out["lossy"] = describe_precision((m.get("meta") or {}).get(PRECISION_KEY))
        if "axes" in m:
            out["calibrations"] = m["axes"]
        if m.get("tags"):
            out["dm_image_tags"] = sorted(_image_tags(m["tags"]))
        if full:
            out["header"] = header
            if m.get("extended"):
                out["extended"] = m["extended"]
            if m.get("tags"):
                out["tags"] = m["tags"]
        return _plain(out)
    finally:
        source.handle.close()


def _image_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """The ImageTags of a DM file's main image (the last image that has them)."""
    found: dict[str, Any] = {}
    for image in tags.get("ImageList") or []:
        if isinstance(image, dict) and isinstance(image.get("ImageTags"), dict):
            found = image["ImageTags"]
    return found


def _brief(value: Any, depth: int = 0) -> str:
    """``value`` as compact JSON, with what is nested two levels deep elided (``…``)."""
    if isinstance(value, dict):
        if depth >= 2:
            keys = [json.dumps(k, ensure_ascii=False) + ": …" for k in list(value)[:3]]
            more = f", … ({len(value)} keys)" if len(value) > 3 else ""
            return "{" + ", ".join(keys) + more + "}"
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_brief(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        if depth >= 2 or len(value) > 4:
            return f"[… {len(value)} items]"
        return "[" + ", ".join(_brief(v, depth + 1) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 100 else text[:98] + "…\""


def _print_text(info: dict[str, Any], full: bool = False) -> None:
    print(info["file"])
    rows = [("format", info["format"] + (f" ({info['compressor']})" if info.get("compressor") else "")),
            ("shape", " × ".join(map(str, info["shape"])) + f" {info['dtype']} ({info['kind']})")]
    if "mode" in info:
        rows.append(("mode", str(info["mode"])))
    rows.append(("precision", info.get("lossy") or "lossless"))
    axes = ", ".join(f"{a['label']} {a['scale']:.6g} {a['units']}" for a in info["axes"])
    rows.append(("pixel size", axes))
    for key, label, unit in (("voltage_kV", "voltage", " kV"), ("C3_mm", "C3", " mm"), ("gain", "gain", "")):
        rows.append((label, "not set" if info[key] is None else f"{info[key]:g}{unit}"))
    if info.get("extended_header"):
        rows.append(("extended header", info["extended_header"]))
    shortened = False
    if info.get("json"):
        text = json.dumps(info["json"], ensure_ascii=False)
        if full:
            text = json.dumps(info["json"], ensure_ascii=False, indent=1)
        elif len(text) > JSON_SHOWN_CHARS:
            text, shortened = _brief(info["json"]), True
        rows.append(("JSON", text))
    for k, cal in enumerate(info.get("calibrations") or []):
        text = f"scale {cal['scale']:g} {cal['units'] or 'px'}, offset {cal['offset'] + 0.0:g}"
        rows.append((f"calibration {k}", text))
    if info.get("dm_image_tags") and not full:
        rows.append(("DM image tags", ", ".join(info["dm_image_tags"])))
        shortened = True
    for key in ("header", "extended", "tags"):
        if key in info:
            rows.append((key, json.dumps(info[key], ensure_ascii=False, indent=1)))
    for label, value in rows:
        print(f"  {label:<16} {value}")
    if shortened:
        print(f"  (shortened; all of it: napari-mrcz info --full {shlex.quote(info['file'])})")


def _failure(path: str, exc: BaseException) -> str:
    """One file's error, naming the file once; a URL's password, signature or token never shown."""
    from .codec.remote import shown

    message, name = str(exc), shown(path)
    if path != name:
        message = message.replace(path, name)
    return message if name in message else f"{name}: {message}"


def cmd_info(args: argparse.Namespace) -> int:
    """``napari-mrcz info FILE...``."""
    status = 0
    for path in args.files:
        try:
            info = describe(path, full=args.full)
        except (MRCFileError, OSError, ValueError) as exc:
            print(_failure(path, exc), file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(info, ensure_ascii=False))
        else:
            _print_text(info, full=args.full)
    return status


def cmd_batch(args: argparse.Namespace, compressed: bool) -> int:
    """``napari-mrcz compress`` and ``decompress``: 0 all done, 1 some failed, 2 nothing could start."""
    from . import batch

    try:
        ome_zarr = getattr(args, "format", "mrcz") == "ome-zarr"
        jobs = batch.plan(args.sources, args.output, compressed=compressed, pattern=args.pattern,
                          ome_zarr=ome_zarr)
    except (OSError, ValueError) as exc:  # no such file or folder, a bucket that cannot be listed
        print(f"napari-mrcz: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for item in batch.dry_run(jobs, args.overwrite, getattr(args, "keepbits", None),
                                  getattr(args, "max_error", 0.01), ome_zarr, getattr(args, "ngff", "0.5")):
            print(f"{item['action']:<5} {item['source']} -> {item['target']}")
        return 0
    try:
        runner = batch.runner(args.scheduler)
    except batch.MissingDependencyError as exc:
        print(f"napari-mrcz: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    outcomes = batch.run(jobs, compressed=compressed,
                         compressor=getattr(args, "compressor", None),
                         clevel=getattr(args, "clevel", None),
                         backend=getattr(args, "backend", None), verify=not args.no_verify,
                         overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler,
                         quiet=args.quiet, keepbits=getattr(args, "keepbits", None),
                         max_error=getattr(args, "max_error", 0.01), dtype=getattr(args, "dtype", None),
                         ome_zarr=ome_zarr, ngff=getattr(args, "ngff", "0.5"),
                         levels=getattr(args, "levels", None))
    info = batch.summary(outcomes, time.perf_counter() - t0)
    if args.json:
        print(json.dumps({**info, "runner": runner, "outcomes": [o.as_dict() for o in outcomes]}))
    elif not args.quiet:
        batch.print_summary(info, title=f"napari-mrcz {args.command}")
    return 1 if info["failed"] else 0


def _floats(n: tuple[int, ...], name: str) -> Any:
    """An argument of ``n`` comma-separated numbers (one value, or z,y,x)."""
    def parse(text: str) -> float | list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not a number") from None
        if len(values) not in n:
            raise argparse.ArgumentTypeError(f"{name}: give {' or '.join(map(str, n))} values "
                                             f"(z,y,x), got {len(values)}")
        return values[0] if len(values) == 1 else values
    return parse


def cmd_edit(args: argparse.Namespace) -> int:
    """``napari-mrcz edit FILE...``: header values changed in place (``--dry-run``: shown only)."""
    from .codec.header_edit import edit_header

    changes = {"pixelsize": args.pixel_size, "voltage": args.voltage, "C3": args.c3, "gain": args.gain,
               "origin": args.origin, "label": args.label}
    if all(v is None for v in changes.values()):
        print("napari-mrcz edit: nothing to change (give --pixel-size, --voltage, --c3, --gain, --origin "
              "or --label)", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            done = edit_header(path, dry_run=args.dry_run, **changes)
        except (MRCFileError, OSError, ValueError) as exc:
            print(_failure(path, exc), file=sys.stderr)
            status = 1
            continue
        word = {"dry run": "would change", "in place": "changed in place", "rewritten": "rewritten",
                "unchanged": "already so, unchanged"}[done.how]
        print(f"{path}: {word}")
        for line in done.lines():
            print(f"  {line}")
    return status


def _keepbits(text: str) -> int | str:
    """``--keepbits``: a whole number of mantissa bits, or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bits or 'auto'") from None
    if not 0 <= value <= 23:
        raise argparse.ArgumentTypeError(f"{value} bits: float32 has 23 mantissa bits, keep 0 to 23")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(prog="napari-mrcz", description="Inspect, edit, compress and "
                                 "decompress MRC, MRCZ and DigitalMicrograph files.")
    ap.add_argument("--version", action="version", version=f"napari-mrcz {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a header summary of each file")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    info.add_argument("--full", action="store_true",
                      help="the whole header, the decoded extended header and DM tags")
    edit = sub.add_parser("edit", help="change header values in place (like IMOD's alterheader), safely",
                          description="Change header values of MRC and MRCZ files where they lie: the "
                          "data bytes are never touched, and a journal beside the file makes the change "
                          "safe against a crash (the next open completes or restores it). DM files are "
                          "read-only.")
    edit.add_argument("files", nargs="+", metavar="FILE")
    edit.add_argument("--pixel-size", type=_floats((1, 3), "--pixel-size"), metavar="A|Z,Y,X",
                      help="pixel size in Å: one value, or z,y,x")
    edit.add_argument("--voltage", type=float, metavar="KV", help="acceleration voltage, kV")
    edit.add_argument("--c3", type=float, metavar="MM", help="spherical aberration C3, mm")
    edit.add_argument("--gain", type=float, metavar="G", help="gain, counts per electron")
    edit.add_argument("--origin", type=_floats((3,), "--origin"), metavar="Z,Y,X", help="origin in Å, z,y,x")
    edit.add_argument("--label", metavar="TEXT", help="add a text label (80 characters at most)")
    edit.add_argument("--dry-run", action="store_true",
                      help="print the values before and after; write nothing")
    names = {"compress": "SRC/a/b.dm4 -> DEST/a/b.dm4.mrcz, SRC/a/b.st -> DEST/a/b.st.mrcz (the whole "
                         "name and .mrcz; a .mrcz file keeps its name)",
             "decompress": "SRC/a/b.st.mrcz -> DEST/a/b.st, SRC/a/b.mrcz -> DEST/a/b.mrc (.mrcz dropped, "
                           ".mrc added unless the name ends in an MRC suffix; other files get .mrc added)"}
    for name, what in (("compress", "write MRCZ"), ("decompress", "write plain MRC2014")):
        p = sub.add_parser(name, help=f"{what} for every file (folders are walked), verified, resumable",
                           description=f"{what[0].upper()}{what[1:]} for every MRC, MRCZ and DM file "
                           "under SRC, under DEST with the same folder layout, each verified; run "
                           "again, it skips what is done.", epilog=f"Output names: {names[name]}.")
        p.add_argument("sources", nargs="+", metavar="SRC", help="files, and folders to walk")
        p.add_argument("-o", "--output", required=True, metavar="DEST", help="folder for the outputs")
        if name == "compress":
            p.add_argument("--format", choices=["mrcz", "ome-zarr"], default="mrcz",
                           help="write MRCZ files, or OME-Zarr folders (NAME.zarr; default: %(default)s)")
            p.add_argument("--ngff", choices=["0.5", "0.4"], default="0.5",
                           help="with --format ome-zarr: NGFF 0.5 (Zarr v3, sharded) or 0.4 (the CryoET "
                                "Data Portal's Zarr v2 layout) (default: %(default)s)")
            p.add_argument("--levels", type=int, metavar="N", default=None,
                           help="with --format ome-zarr: how many levels (default: down to 2048 pixels on "
                                "the largest side; 3 for --ngff 0.4)")
            p.add_argument("--compressor", choices=COMPRESSORS, default=None,
                           help=f"blosc compressor (default: {DEFAULT_SAVE_COMPRESSOR}; OME-Zarr: zstd, "
                                "lz4 for --ngff 0.4)")
            p.add_argument("--clevel", type=int, choices=range(1, 10), default=None,
                           metavar="1-9", help=f"compression level (default: {DEFAULT_SAVE_CLEVEL}; "
                                               "OME-Zarr: 3, 5 for --ngff 0.4)")
            p.add_argument("--backend", choices=["blosc1", "blosc2"], default=None,
                           help="chunk format (default: blosc1, which every MRCZ reader knows)")
            p.add_argument("--keepbits", type=_keepbits, metavar="N|auto", default=None,
                           help="LOSSY: round float mantissas to N bits (0-23), or per section to the "
                           "fewest within --max-error of its noise; recorded in each file (default: "
                           "lossless). Integer files are written exactly")
            p.add_argument("--max-error", type=float, default=0.01, metavar="F",
                           help="for --keepbits auto: RMS rounding error allowed, as a fraction of each "
                           "section's noise level (default: %(default)s)")
            p.add_argument("--dtype", choices=["auto"], default=None,
                           help="auto: float files of whole numbers in the smallest integer mode "
                           "(lossless; the file's mode changes)")
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="local worker processes (default: %(default)s, one per core)")
        p.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on this dask cluster (tcp://host:8786); needs the "
                       f"batch extra: {BATCH_EXTRA} (default: local worker processes)")
        p.add_argument("--pattern", metavar="GLOB", help="only files whose name matches")
        p.add_argument("--overwrite", action="store_true", help="rewrite targets that are already done")
        p.add_argument("--no-verify", action="store_true",
                       help="skip checking each chunk and the bytes on disk")
        p.add_argument("--dry-run", action="store_true", help="say what would be done")
        p.add_argument("--quiet", action="store_true", help="no progress and no table")
        p.add_argument("--json", action="store_true", help="print the summary and every outcome as JSON")
    cache = sub.add_parser("cache", help="the cache of binned levels napari's 3D view uses: size, clear")
    cache.add_argument("--clear", action="store_true", help="remove every entry")
    return ap


def cmd_cache(args: argparse.Namespace) -> int:
    """Where the pyramid cache and the remote chunk indexes are, what they hold; ``--clear`` empties both."""
    import shutil

    from .codec.chunk_index import cache_folder
    from .codec.pyramid import PyramidCache

    cache = PyramidCache()
    indexes = cache_folder()
    if args.clear:
        cache.clear()
        shutil.rmtree(indexes, ignore_errors=True)
    entries = cache.entries()
    print(f"{cache.root}: {len(entries)} entries, {cache.nbytes() / 1e9:.2f} GB "
          f"(limit {cache.limit_bytes / 1e9:.0f} GB: NAPARI_MRCZ_CACHE_GB)")
    saved = list(indexes.glob("*.json")) if indexes.is_dir() else []
    print(f"{indexes}: {len(saved)} chunk indexes of remote MRCZ files")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 all succeeded, 1 some failed, 2 bad arguments)."""
    try:
        return _run(argv)
    except BrokenPipeError:  # the reader went away (``napari-mrcz info x | head``): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's own flush at exit finds no pipe
        return 1


def _run(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    if args.command == "cache":
        return cmd_cache(args)
    if args.command == "edit":
        return cmd_edit(args)
    return cmd_batch(args, compressed=args.command == "compress")


if __name__ == "__main__":
    sys.exit(main())
