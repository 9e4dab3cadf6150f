"""Header edits in place: pixel size, microscope values, origin, labels and JSON, without touching data.

A 20 GB tomogram that says 1.0 Å instead of 13.48 Å needs 1024 bytes
changed, not 20 GB written again. :func:`edit_header` builds the new header
from the old one (every other field kept, byte for byte), writes it through
the :mod:`.journal` (safe against a crash at any moment) and returns what
changed, as readers will see it (the new header is parsed back).

python-mrcz's JSON extended header is rewritten in place when the new JSON
fits in the space the file already has (padded with spaces, which JSON
allows); otherwise the file is rewritten atomically (temporary file, fsync,
rename) with its data bytes, the compressed chunks of an MRCZ included,
copied as they are: no decode, no encode.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import journal
from .atomic import atomic_write
from .errors import MRCFileError
from .header import HEADER_BYTES, HEADER_DTYPE, data_axes_cell, parse_header
from .remote import is_url, shown
from .stack import MRCStack

#: New room for JSON, when a file is rewritten for it: a multiple of this many bytes, so later edits fit.
JSON_ROOM = 1024
_COPY_BLOCK = 16 << 20
_FIELDS = ("pixelsize", "voltage", "C3", "gain", "origin", "labels", "sampling", "json")


@dataclass
class HeaderEdit:
    """What :func:`edit_header` did (or, for a dry run, would do) to one file.

    Attributes
    ----------
    path
        The file.
    before, after
        The values that change, as readers see them: ``pixelsize`` (z, y, x)
        Å, ``voltage`` kV, ``C3`` mm, ``gain``, ``origin`` (z, y, x) Å,
        ``labels``, ``sampling`` (MX, MY, MZ) and ``json``.
    how
        ``'in place'`` (the header bytes, through the journal),
        ``'rewritten'`` (the JSON did not fit), ``'dry run'`` or
        ``'unchanged'`` (nothing to change).
    """

    path: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    how: str = "unchanged"

    def lines(self) -> list[str]:
        """One line per changed value: ``name: before -> after``."""
        return [f"{name}: {_show(self.before[name])} -> {_show(self.after[name])}" for name in self.after]


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return ", ".join(f"{v:g}" for v in value)
    if isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 120 else text[:117] + "..."
    return f"{value:g}" if isinstance(value, float) else str(value)


def _vector(name: str, value: Any, path: str, positive: bool) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 3)
    if v.size != 3 or not np.all(np.isfinite(v)) or (positive and not np.all(v > 0)):
        need = "one or three (z, y, x) values above 0" if positive else "three finite values (z, y, x)"
        raise MRCFileError(path, f"{name} must be {need}, got {value!r}")
    return v


def _number(name: str, value: Any, path: str) -> float:
    """A finite number; at least 0 except C3 (Cs-corrected microscopes may have a negative one)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or (v < 0 and name != "C3"):
        need = "a finite number" if name == "C3" else "a number of at least 0"
        raise MRCFileError(path, f"{name} must be {need}, got {value!r}")
    return v


def _refuse_unsupported(path: str) -> None:
    if is_url(path):  # before anything is asked of the server
        raise MRCFileError(shown(path), "remote files cannot be edited in place: download the file, or "
                                        "save a local copy (napari-mrcz compress, or Save as in napari), "
                                        "and edit that")
    lower = path.lower()
    if lower.endswith((".dm3", ".dm4")):
        raise MRCFileError(path, "DM3/DM4 files are read-only here: save them as MRC or MRCZ (napari-mrcz "
                                 "compress, or Save as in napari) and edit that")
    if lower.endswith((".gz", ".bz2")):
        raise MRCFileError(path, "a gzip or bzip2 file cannot be edited in place: decompress it first "
                                 "(gunzip, bunzip2) and edit the MRC file")


def _seen(h: Any) -> dict[str, Any]:
    """The editable values of a parsed header, as readers see them."""
    raw = h.raw
    x, y, z = (float(v) for v in np.asarray(raw["origin"], dtype=np.float64))
    return {
        "pixelsize": [float(v) for v in h.pixelsize],
        "voltage": float(raw["voltage"]), "C3": float(raw["C3"]), "gain": float(raw["gain"]),
        "origin": [z, y, x],
        "labels": list(h.labels),
        "sampling": [int(raw["mx"]), int(raw["my"]), int(raw["mz"])],
        "json": h.json_meta,
    }


def edit_header(path: str | os.PathLike, *, pixelsize: Any = None, voltage: float | None = None,
                C3: float | None = None, gain: float | None = None, origin: Any = None,
                label: str | None = None, meta: dict[str, Any] | None = None,
                dry_run: bool = False) -> HeaderEdit:
    """Change header values of an MRC or MRCZ file where it lies; the data bytes are never touched.

    Parameters
    ----------
    path
        The file (MRC or MRCZ; DM3/DM4 and gzip/bzip2 files are refused).
    pixelsize
        Å: one value for every axis, or (z, y, x). Where the file's MX/MY/MZ
        are 0 (python-mrcz issue 13: Chimera then reads 1 Å), plain MRC files
        get MX, MY, MZ = NX, NY, NZ (MRC2014's sampling), so every reader
        sees the new size.
    voltage, C3, gain
        kV, mm and counts per electron (0: not set).
    origin
        (z, y, x) Å, stored as MRC's ORIGIN (x, y, z).
    label
        A text label (80 characters at most) added after the others (the
        oldest goes when there are 10).
    meta
        JSON metadata keys to set (``None`` values remove a key): MRCZ and
        JSON-extended files, and files with no extended header.
    dry_run
        Work out the change and return it; write nothing.

    Returns
    -------
    HeaderEdit
        Before and after values of what changes, and how it was written.

    Raises
    ------
    MRCFileError
        A URL, a DM, gzip or unreadable file, a value out of range, or JSON for a
        file whose extended header is another kind (FEI, SerialEM).
    OSError
        The file cannot be written (it is then as it was).
    """
    path = os.fspath(path)
    _refuse_unsupported(path)
    with MRCStack(path) as stack:  # finishes an interrupted edit first
        h = stack.header
        old_header = stack._src.pread(0, HEADER_BYTES)
        old_ext = bytes(stack._src.pread(HEADER_BYTES, h.extended_bytes)) if meta is not None else b""
        size = stack._src.size
    dt = HEADER_DTYPE if h.byteorder == "<" else HEADER_DTYPE.newbyteorder(">")
    new = np.frombuffer(bytes(old_header), dtype=dt).copy()
    nz, ny, nx = h.shape
    if pixelsize is not None:
        p = _vector("pixelsize", pixelsize, path, positive=True)
        cell_axis = data_axes_cell(h.axis_order)
        n = np.array([nz, ny, nx], dtype=np.float64)
        m = np.zeros(3, dtype=np.float64)
        m[:] = np.array([new["mx"][0], new["my"][0], new["mz"][0]], dtype=np.float64)[cell_axis]
        mrcz_layout = h.is_compressed or h.written_by == "python-mrcz"
        if not mrcz_layout and np.any(m <= 0):
            m = np.where(m > 0, m, n)
            sampling = np.zeros(3, dtype=np.int64)
            sampling[cell_axis] = m
            new["mx"], new["my"], new["mz"] = (int(v) for v in sampling)
        divisor = n if mrcz_layout else m
        cella = np.array(new["cella"][0], dtype=np.float64)
        cella[cell_axis] = p * divisor
        new["cella"] = cella
    for name, value in (("voltage", voltage), ("C3", C3), ("gain", gain)):
        if value is not None:
            new[name] = _number(name, value, path)
    if origin is not None:
        z, y, x = _vector("origin", origin, path, positive=False)
        new["origin"] = (x, y, z)
    if label is not None:
        text = str(label).encode("latin-1", "replace")[:80]
        labels = [bytes(t) for t in new["label"][0][:max(0, min(10, int(new["nlabl"][0])))]]
        labels = [*labels, text][-10:]
        new["nlabl"] = len(labels)
        new["label"] = [t.ljust(80) for t in labels] + [b""] * (10 - len(labels))
    ext, rewrite = None, False
    if meta is not None:
        if h.extended_bytes and h.exttyp != b"json":
            raise MRCFileError(path, f"its extended header is {h.exttyp.decode('latin-1')!r}, not JSON: "
                                     "JSON metadata cannot be added")
        merged = {**(h.json_meta or {})}
        for key, value in meta.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        ext = json.dumps(merged, ensure_ascii=False).encode("utf-8")
        if merged == (h.json_meta or {}):
            ext = None
        elif len(ext) <= h.extended_bytes:
            ext = ext.ljust(h.extended_bytes, b" ")
        else:
            rewrite = True
            ext = ext.ljust(-(-len(ext) // JSON_ROOM) * JSON_ROOM, b" ")
            new["nsymbt"], new["exttyp"] = len(ext), b"json"
    new_header = new.tobytes()
    # the new header as readers will see it; its JSON is the new one, or the one already parsed
    parsed = parse_header(new_header, path, None, read_extended=None if ext is None else lambda _, n: ext[:n])
    if ext is None:
        parsed.json_meta = h.json_meta
    before, after = _seen(h), _seen(parsed)
    out = HeaderEdit(path)
    for name in _FIELDS:
        if before[name] != after[name]:
            out.before[name], out.after[name] = before[name], after[name]
    if not out.after:
        return out
    if dry_run:
        out.how = "dry run"
        return out
    if rewrite:
        _rewrite(path, new_header, ext, h.data_offset, size)
        out.how = "rewritten"
    else:
        regions = [(0, bytes(old_header), new_header)]
        if ext is not None:
            regions.append((HEADER_BYTES, old_ext, ext))
        journal.write_in_place(path, regions)
        out.how = "in place"
    return out


def _rewrite(path: str, header: bytes, ext: bytes, data_offset: int, size: int) -> None:
    """Write the file again with a new header and JSON, its data bytes copied as they are, verified."""
    with open(path, "rb") as src, atomic_write(path) as f:
        f.write(header)
        f.write(ext)
        src.seek(data_offset)
        crc, left = 0, size - data_offset
        while left:
            block = src.read(min(_COPY_BLOCK, left))
            if not block:
                raise MRCFileError(path, "the file became shorter while it was being rewritten")
            f.write(block)
            crc, left = zlib.crc32(block, crc), left - len(block)
        f.flush()
        f.seek(HEADER_BYTES + len(ext))
        copied, left = 0, size - data_offset
        while left:
            block = f.read(min(_COPY_BLOCK, left))
            if not block:
                break
            copied, left = zlib.crc32(block, copied), left - len(block)
        if left or copied != crc:
            raise MRCFileError(path, "the rewritten data bytes differ from the file's: the file is left "
                                     "as it was")
