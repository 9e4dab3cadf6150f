"""One file to MRCZ (or plain MRC), verified frame by frame before it gets its name.

:func:`convert` is the unit of work of ``napari-mrcz compress`` and
``decompress``; it needs no dask and no napari. It reads the source as the
napari reader shows it (:func:`~napari_mrcz.codec.source.open_image`: DM in
file order, lengths in Å), writes ``.<name>.<random>.verify`` beside the
target one z-section at a time, decoding each section's chunk again while the
section is still in memory and comparing the two (:class:`WrittenCheck`),
then checks the file's bytes on disk against a CRC-32 of the chunks, and only
then renames it to its name (and syncs the folder). So a file under its final name is always
complete and verified; a killed task leaves at most a hidden ``.verify`` file,
removed by the next run.

A label of the output records its source (a hash of its path, size and
modification time): a re-run skips a target whose label matches its source,
reading only the target's header. MRCZ outputs also keep the source's path,
size and time in their JSON metadata (``napari_mrcz_batch``) and, for DM
sources, the calibrations and the image tags worth keeping (``dm``), with the
source's own JSON metadata. Plain MRC2014 outputs (``decompress``) have no
extended header: MRC2014 has no JSON type, and ``mrcfile.validate`` passes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from . import blosc_chunks, chunk_trailer
from .atomic import replace, temporaries
from .dm_tags import ArrayRef
from .export import (
    AXES_KEY,
    UnsupportedImageError,
    is_labels,
    json_axes,
    json_values,
    mrc_pixel_size,
    source_sections,
    stored_dtype,
    write_image,
)
from .header import HEADER_BYTES, MODE_UINT4
from .narrowing import auto_dtype, plain_mrc_dtype
from .precision import MANTISSA_BITS, PRECISION_KEY, check_keepbits, mantissa_bits
from .remote import is_url
from .source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, ImageSource, open_image
from .stack import MRCStack

PROVENANCE = "napari_mrcz_batch"
#: JSON key of an MRCZ whose int8 samples are a 4-bit (mode 101) file's, 0-15: decompress writes mode 101.
UINT4_KEY = "napari_mrcz_uint4"
#: The suffixes of plain MRC files: a decompressed file whose name ends in one keeps it.
PLAIN_MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".rec", ".ali", ".preali")
MRC_SUFFIXES = (*PLAIN_MRC_SUFFIXES, ".mrcz")
#: Suffixes the batch reads.
SOURCE_SUFFIXES = (*MRC_SUFFIXES, ".dm3", ".dm4", ".mrc.gz", ".map.gz", ".mrcs.gz", ".mrc.bz2",
                   ".map.bz2", ".mrcs.bz2")
#: DM image tags worth keeping in the output's JSON metadata.
DM_TAGS_KEPT = ("Microscope Info", "Acquisition", "DataBar", "Session Info", "EELS")


@dataclass
class Outcome:
    """What became of one file.

    ``status`` is ``'done'`` (written and verified), ``'skipped'`` (already
    done), ``'unsupported'`` (MRC cannot hold it: RGB, > 3 dimensions) or
    ``'failed'``; ``reason`` says why for the last two. ``keepbits`` is the
    rounding the file got (``None``: lossless), ``largest_error`` the
    largest relative error of any value it caused.
    """

    source: str
    target: str
    status: str
    reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    frames: int = 0
    keepbits: Any = None
    largest_error: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` output and tests."""
        return asdict(self)


def target_name(name: str, compressed: bool) -> str:
    """The name ``compress`` (``compressed``) or ``decompress`` gives the output of a file named ``name``.

    One rule, whatever else is in the folder. ``compress`` appends ``.mrcz``
    to the whole name (``movie.dm4`` -> ``movie.dm4.mrcz``, ``tilt.st`` ->
    ``tilt.st.mrcz``, ``emd_3197.map.gz`` -> ``emd_3197.map.gz.mrcz``); a name
    ending in ``.mrcz`` is kept. ``decompress`` drops a trailing ``.mrcz`` and
    then appends ``.mrc`` unless the name ends in a plain MRC suffix
    (``tilt.st.mrcz`` -> ``tilt.st``, ``x.mrcz`` -> ``x.mrc``); any other name
    gets ``.mrc`` appended (``x.dm4`` -> ``x.dm4.mrc``), except that a plain
    MRC file keeps its name. So ``decompress`` gives back the names
    ``compress`` started from. An OME-Zarr folder's ``.zarr`` (and
    ``.ome``) become ``.mrcz`` or ``.mrc`` (``TS_026.zarr`` ->
    ``TS_026.mrcz``). Suffixes are compared ignoring case.

    Parameters
    ----------
    name
        The source's file name (no folder).
    compressed
        The name for ``compress`` (MRCZ) rather than ``decompress`` (plain MRC).

    Returns
    -------
    str
        The target's file name.
    """
    lower = name.lower()
    if lower.endswith(".zarr") and len(name) > len(".zarr"):  # an OME-Zarr: TS_026.zarr -> TS_026.mrcz
        name = name[: -len(".zarr")]
        if name.lower().endswith(".ome"):
            name = name[: -len(".ome")]
        return name + (".mrcz" if compressed else ".mrc")
    if compressed:
        return name if lower.endswith(".mrcz") else name + ".mrcz"
    if lower.endswith(".mrcz"):
        name, lower = name[: -len(".mrcz")], lower[: -len(".mrcz")]
    return name if lower.endswith(PLAIN_MRC_SUFFIXES) else name + ".mrc"


#: How long (s) an object's version, once asked, stands for the batch's records of it.
_VERSION_SECONDS = 60.0
_versions: dict[str, tuple[float, dict[str, Any]]] = {}


def remote_version(url: str) -> dict[str, Any]:
    """``size``, ``ETag`` and ``Last-Modified`` of the object at ``url`` (asked again after a minute)."""
    from .remote import RemoteFile

    now = time.monotonic()
    known = _versions.get(url)
    if known is None or now - known[0] > _VERSION_SECONDS:
        opened = RemoteFile(url)
        try:
            known = _versions[url] = (now, dict(opened.version))
        finally:
            opened.close()
    return known[1]


def provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The record of a source that a target's JSON metadata keeps (a URL's: without its secrets)."""
    if is_url(path):
        from .remote import shown

        version = remote_version(os.fspath(path))
        tags = {k: v for k, v in version.items() if k != "size"}
        return {"source": shown(os.fspath(path)), "source_size": version["size"], "source_version": tags,
                "tool": f"napari-mrcz {__version__}"}
    st = os.stat(path)
    return {"source": os.path.abspath(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "tool": f"napari-mrcz {__version__}"}


def source_stamp(path: str | os.PathLike) -> str:
    """The label text that ties a target to this very source (path, size and modification time).

    A URL's: the URL without its secrets, the size, and the ETag or Last-Modified.
    """
    record = provenance(path)
    when = record.get("source_mtime_ns", json.dumps(record.get("source_version"), sort_keys=True))
    key = f"{record['source']}\0{record['source_size']}\0{when}".encode()
    return "batch source " + hashlib.blake2b(key, digest_size=16).hexdigest()


def already_done(source: str | os.PathLike, target: str | os.PathLike, keepbits: int | str | None = None,
                 max_error: float = 0.01) -> bool:
    """Whether ``target`` exists, records this very ``source`` and has the precision asked for.

    The source is the same path, size and modification time (a label of
    ours). The precision: lossless (``keepbits=None``) finds a target with no
    rounding record but its source's; ``keepbits`` finds one rounded the same
    way (``'auto'``: with the same ``max_error``), or an integer target
    (integers are never rounded). Only headers are read. A target under its
    final name was verified before it was renamed, so this is enough.
    """
    if not (_object_exists(target) if is_url(target) else os.path.isfile(target)):
        return False
    try:
        with MRCStack(target) as stack:
            labels, kind = stack.header.labels, stack.header.dtype.kind
            record = (stack.header.json_meta or {}).get(PRECISION_KEY)
    except (ValueError, OSError):
        return False
    stamp = source_stamp(source)
    if not any(label.endswith(stamp) for label in labels):
        return False
    got = record.get("keepbits") if isinstance(record, dict) and record.get("lossy") else None
    if keepbits is None:
        return got is None or record == _precision_record(source)
    if kind not in "fc":
        return True
    if keepbits == "auto":
        return isinstance(got, list) and record.get("max_error") == max_error
    return got == keepbits


def _precision_record(path: str | os.PathLike) -> Any:
    """The rounding record an MRC/MRCZ file's JSON metadata holds (``None``: none, or not MRC)."""
    try:
        with MRCStack(path) as stack:
            return (stack.header.json_meta or {}).get(PRECISION_KEY)
    except (ValueError, OSError):
        return None


def _json_safe(value: Any, depth: int = 0) -> Any:
    """DM tags as JSON: arrays left in the file are dropped, bytes decoded, depth bounded."""
    if depth > 16 or isinstance(value, ArrayRef):
        return None
    if isinstance(value, dict):
        out = {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value][:1000]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def source_metadata(source: ImageSource) -> dict[str, Any]:
    """JSON metadata for MRCZ outputs, for what has no MRC field: the source, DM calibrations and tags."""
    out: dict[str, Any] = {PROVENANCE: provenance(source.path)}
    axes = json_axes(source.axis_labels, source.scale, source.units)
    if axes is not None:
        out[AXES_KEY] = axes
    if "axes" in source.mrcz:  # a DM file: its own calibrations, and the tags worth keeping
        image_tags = {}
        for image in (source.mrcz.get("tags") or {}).get("ImageList", []) or []:
            tags = image.get("ImageTags") if isinstance(image, dict) else None
            if isinstance(tags, dict):
                image_tags = tags
        out["dm"] = {"calibrations": source.mrcz["axes"],
                     "tags": {k: _json_safe(image_tags[k]) for k in DM_TAGS_KEPT if k in image_tags}}
    return out


def pixel_size(source: ImageSource) -> list[float]:
    """(z, y, x) in Å of what :func:`open_image` found (its lengths are in Å already)."""
    sizes = [float(s) if u in ("Å", "") else None for s, u in zip(source.scale, source.units, strict=False)]
    return mrc_pixel_size(sizes, bool(source.mrcz.get("stack")), source.mrcz.get("frame_spacing"))


def convert(source: str | os.PathLike, target: str | os.PathLike, *, compressed: bool = True,
            compressor: str = DEFAULT_SAVE_COMPRESSOR, clevel: int = DEFAULT_SAVE_CLEVEL,
            backend: str | None = None, verify: bool = True, overwrite: bool = False,
            n_threads: int | None = None, keepbits: int | str | None = None, max_error: float = 0.01,
            dtype: str | None = None, ome_zarr: bool = False, ngff: str = "0.5",
            levels: int | None = None) -> Outcome:
    """Write ``source`` as MRCZ (or plain MRC) at ``target``, verified; never raises for a bad file.

    Parameters
    ----------
    source, target
        The file to read and the file to write (its folder is created).
    compressed, compressor, clevel, backend
        MRCZ with this blosc compressor, or plain MRC2014.
    verify
        Check every section's chunk against the section while it is in
        memory, and the file's bytes on disk against the chunks (see
        :class:`WrittenCheck`).
    overwrite
        Replace a target even if it already records this source.
    n_threads
        blosc threads (default: all cores).
    keepbits, max_error
        Round float mantissas, as :func:`~napari_mrcz.codec.mrc.writeMRC`
        does (lossy; ``None``: lossless). Integer sources are written exactly
        as they are. Verification then checks the file against the source
        rounded the same way, and the outcome's ``largest_error`` is the
        largest relative error of any value.
    dtype
        ``'auto'``: float sources of whole numbers in the smallest integer
        mode (lossless; MRCZ only).
    ome_zarr, ngff, levels
        Write an OME-Zarr folder instead (:mod:`.ome_zarr`): NGFF ``'0.5'``
        or ``'0.4'``, with ``levels`` levels (default: down to 2048 pixels
        on the largest side; 3 for 0.4). ``compressor`` and ``clevel`` are
        then the blosc codec of its chunks.

    Returns
    -------
    Outcome
        ``failed`` with the reason for a damaged or unreadable source, a
        failed verification or a write error; ``unsupported`` for what MRC
        cannot hold.
    """
    source = os.fspath(source)
    remote_target = is_url(target)
    target = os.fspath(target) if remote_target else Path(target)
    t0 = time.perf_counter()
    out = Outcome(source if not is_url(source) else _shown(source), _shown(str(target)), "failed")
    try:
        out.bytes_in = source_size(source)
        if ome_zarr:
            if remote_target:
                raise ValueError(f"{out.target}: OME-Zarr output is written to a folder on disk, not to "
                                 "a URL")
            done = zarr_skip(source, target, overwrite, keepbits, max_error, ngff)
            if done is not None:
                out.status, out.bytes_out = "skipped", done
                return out
        else:
            if not remote_target:
                _remove_leftovers(target)
            if not overwrite and already_done(source, target, keepbits, max_error):
                out.status, out.bytes_out = "skipped", source_size(target)
                return out
        if n_threads:
            from .mrc import setDefaultThreads

            setDefaultThreads(n_threads)
        opened = open_image(source)
        try:
            if ome_zarr:
                _write_zarr(opened, target, out, compressor, clevel, verify, keepbits, max_error, ngff,
                            levels, n_threads)
            else:
                args = (compressed, compressor, clevel, backend, verify, keepbits, max_error, dtype)
                if remote_target:
                    _write_uploaded(opened, target, out, *args)
                else:
                    _write_verified(opened, target, out, *args)
        finally:
            opened.handle.close()
        out.status = "done"
    except UnsupportedImageError as exc:  # what MRC cannot hold
        out.status, out.reason = "unsupported", str(exc)
    except Exception as exc:  # noqa: BLE001 - a batch reports every file's failure and goes on
        out.reason = f"{type(exc).__name__}: {exc}"
    finally:
        out.seconds = time.perf_counter() - t0
    return out


def _shown(path: str) -> str:
    """A URL without its secrets (what outcomes and messages say); a path as it is."""
    from .remote import shown

    return shown(path) if is_url(path) else path


def _write_uploaded(opened: ImageSource, url: str, out: Outcome, *args: Any) -> None:
    """Write and verify the output in a local spool folder, then put it as the object ``url``.

    The object appears only once its upload is complete, and is checked
    (size, and a CRC-32 of its bytes read back) against the verified file.
    The spool is ``NAPARI_MRCZ_SPOOL`` or the system's temporary folder; it
    needs room for one output.
    """
    import shutil
    import tempfile

    from .object_store import upload
    from .remote import file_name

    spool = Path(tempfile.mkdtemp(prefix=".napari-mrcz-", dir=os.environ.get("NAPARI_MRCZ_SPOOL") or None))
    try:
        local = spool / file_name(url)
        _write_verified(opened, local, out, *args)
        out.bytes_out = upload(local, url, verify=args[4])
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _object_exists(url: str | os.PathLike) -> bool:
    from .object_store import size

    try:
        return size(os.fspath(url)) is not None
    except OSError:
        return False


def source_size(path: str | os.PathLike) -> int:
    """Bytes of a file, of every file in a folder (an OME-Zarr), or of the object at a URL."""
    if is_url(path):
        return int(remote_version(os.fspath(path))["size"])
    if not os.path.isdir(path):
        return os.path.getsize(path)
    from .zarr_source import folder_size

    return folder_size(path)


def zarr_target_name(name: str) -> str:
    """The name ``compress --format ome-zarr`` gives the output of ``name``: its EM suffix becomes ``.zarr``.

    ``TS_026.mrc`` -> ``TS_026.zarr``, ``movie.dm4`` -> ``movie.zarr``,
    ``emd_3197.map.gz`` -> ``emd_3197.zarr`` (two sources that would share a
    name are refused by the batch's plan).
    """
    lower = name.lower()
    for suffix in sorted((*SOURCE_SUFFIXES, ".zarr"), key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower().endswith(".ome"):
        name = name[: -len(".ome")]
    return name + ".zarr"


def zarr_record(target: str | os.PathLike) -> tuple[str | None, dict | None]:
    """The NGFF version and our record (:data:`.ome_zarr.ATTRS_KEY`) of an OME-Zarr folder, read from JSON.

    ``(None, None)`` when it is not one of ours or cannot be read.
    """
    from .ome_zarr import ATTRS_KEY

    target = Path(target)
    try:
        if (target / "zarr.json").is_file():
            attrs = json.loads((target / "zarr.json").read_text()).get("attributes") or {}
            version = (attrs.get("ome") or {}).get("version")
        else:
            attrs = json.loads((target / ".zattrs").read_text())
            version = ((attrs.get("multiscales") or [{}])[0] or {}).get("version")
    except (OSError, ValueError, AttributeError, IndexError):
        return None, None
    record = attrs.get(ATTRS_KEY)
    return version, record if isinstance(record, dict) else None


def zarr_done(source: str | os.PathLike, target: str | os.PathLike, keepbits: int | str | None = None,
              max_error: float = 0.01, ngff: str = "0.5") -> bool:
    """Whether the OME-Zarr ``target`` exists, records this very ``source`` and has what was asked.

    Its NGFF version, and its precision as for :func:`already_done`. A folder
    under its final name was verified before it was renamed, so its metadata
    is enough.
    """
    version, record = zarr_record(target)
    if record is None or version != ngff or record.get("stamp") != source_stamp(source):
        return False
    got = record.get("precision")
    bits = got.get("keepbits") if isinstance(got, dict) and got.get("lossy") else None
    if keepbits is None:
        return bits is None
    if np.dtype(record.get("stored_dtype", "f4")).kind not in "fc":
        return True
    if keepbits == "auto":
        return isinstance(bits, list) and got.get("max_error") == max_error
    return bits == keepbits


def zarr_skip(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool,
              keepbits: int | str | None, max_error: float, ngff: str) -> int | None:
    """Remove what an interrupted run left for the OME-Zarr ``target``; its size if it is done already.

    ``None``: it is to be written (``overwrite``, or :func:`zarr_done` says no).
    """
    from .ome_zarr import remove_leftovers

    remove_leftovers(target)
    if overwrite or not zarr_done(source, target, keepbits, max_error, ngff):
        return None
    return source_size(target)


def _origin(opened: ImageSource, size: list[float]) -> tuple[float, float, float] | None:
    """(z, y, x) in Å of the first voxel: the MRC origin where set, else the start indices times the size."""
    header = opened.mrcz.get("header") or {}
    origin = header.get("origin")
    if isinstance(origin, (list, tuple)) and len(origin) == 3 and any(float(v) for v in origin):
        return float(origin[2]), float(origin[1]), float(origin[0])
    starts = [header.get(k) for k in ("nzstart", "nystart", "nxstart")]
    if all(isinstance(v, int) for v in starts) and any(starts):
        first = 0 if opened.mrcz.get("stack") else starts[0]
        return float(first) * size[0], float(starts[1]) * size[1], float(starts[2]) * size[2]
    return None


def zarr_attrs(opened: ImageSource, layout: Any, *, labels: bool = False, name: str | None = None,
               extra: dict | None = None) -> dict[str, Any]:
    """The attributes of an OME-Zarr written from ``opened``: NGFF ``multiscales``, and all the file said.

    Parameters
    ----------
    opened
        The source, as :func:`~.source.open_image` describes it.
    layout
        Its :class:`~.ome_zarr.Layout`.
    labels
        A segmentation (NGFF ``image-label`` too).
    name
        The image's name (default: the source's file name).
    extra
        More JSON metadata, merged under the source's.
    """
    from .ome_zarr import ATTRS_KEY, multiscales

    mrcz = opened.mrcz
    size = pixel_size(opened)
    origin = _origin(opened, size)
    entry = multiscales(layout, tuple(size), origin, name or os.path.basename(opened.path.rstrip("/")))
    spatial = [a for a in entry["axes"] if a.get("type") == "space"]
    for axis, unit in zip(reversed(spatial), reversed(list(opened.units)), strict=False):
        if unit != "Å":  # pixels (an uncalibrated DM image), or not a length (a DM energy axis in eV)
            axis.pop("unit", None)
            if unit:
                axis["type"] = "other"
    meta = {**dict(extra or {}), **dict(mrcz.get("meta") or {})}
    on_disk = not is_url(opened.path) and os.path.exists(opened.path)  # not a layer made in napari
    if on_disk:
        meta = {**source_metadata(opened), **meta}
    records = mrcz.get("extended")
    record = {
        "format": 1, "tool": f"napari-mrcz {__version__}",
        "stamp": source_stamp(opened.path) if on_disk else None,
        "source_format": mrcz.get("format"), "source_dtype": np.dtype(opened.dtype).name,
        "stored_dtype": np.dtype(layout.dtype).name, "labels": bool(labels), "uint4": is_uint4(opened),
        "stack": bool(mrcz.get("stack")), "slices": int(mrcz.get("slices") or 0),
        "frame_spacing": mrcz.get("frame_spacing"), "pixel_size": size,
        "voltage": mrcz.get("voltage"), "C3": mrcz.get("C3"), "gain": mrcz.get("gain"),
        "header": _json_safe(mrcz.get("header") or {}),
        "extended": {**{k: v for k, v in records.items() if k != "sections"}, "sections": {
            str(name): json_values(values) for name, values in (records.get("sections") or {}).items()}}
        if isinstance(records, dict) else None,
        "meta": _json_safe(meta),
        "axes": [{"label": str(a), "scale": float(s), "units": str(u)}
                 for a, s, u in zip(opened.axis_labels, opened.scale, opened.units, strict=False)],
        "source_precision": (mrcz.get("meta") or {}).get(PRECISION_KEY),
    }
    attrs: dict[str, Any] = {ATTRS_KEY: record}
    if layout.ngff == "0.5":
        ome: dict[str, Any] = {"version": "0.5", "multiscales": [entry]}
        if labels:
            ome["image-label"] = {"version": "0.5"}
        attrs["ome"] = ome
    else:
        attrs["multiscales"] = [{"version": "0.4", **entry}]
        if labels:
            attrs["image-label"] = {"version": "0.4"}
    return attrs


def zarr_keepbits(keepbits: int | str | None, dtype: np.dtype, labels: bool, where: str) -> int | str | None:
    """The rounding an OME-Zarr's level 0 gets: none for integers and labels, else ``keepbits`` checked.

    Raises
    ------
    UnsupportedImageError
        A rounding asked of a float type it cannot round (float64: Zarr keeps
        it as it is), or a ``keepbits`` that is neither ``'auto'`` nor a number.
    """
    if keepbits is None or labels or dtype.kind != "f":
        return None  # integers are exact already; labels are never rounded
    bits = MANTISSA_BITS.get(dtype.name)
    if bits is None:
        raise UnsupportedImageError(f"{where}: the precision asked ({keepbits!r} mantissa bits) rounds "
                                    f"float32 and float16; this image is {dtype.name}: convert it to "
                                    "float32, or write it lossless")
    if isinstance(keepbits, (int, np.integer)) and not isinstance(keepbits, bool):
        return min(max(int(keepbits), 0), bits)
    if keepbits != "auto":
        raise UnsupportedImageError(f"{where}: keepbits must be 'auto' or a whole number, not {keepbits!r}")
    return keepbits


def prepare_zarr(opened: ImageSource, target: str | os.PathLike, *, compressor: str | None = None,
                 clevel: int | None = None, keepbits: int | str | None = None, max_error: float = 0.01,
                 ngff: str = "0.5", levels: int | None = None, labels: bool | None = None,
                 dtype: Any = None, name: str | None = None, extra: dict | None = None) -> Any:
    """Plan and create the OME-Zarr output of ``opened``: returns its :class:`~.ome_zarr.Prepared`.

    The slabs are then written by :func:`~.ome_zarr.write_slab` (here, or
    by workers that open the source themselves) and the output named by
    :func:`~.ome_zarr.finish`.

    Parameters
    ----------
    opened
        The source (a file, or a layer's data described as one: ``path`` ``''``).
    target
        The output folder.
    compressor, clevel, keepbits, max_error, ngff, levels
        As for :func:`convert`.
    labels
        A segmentation (default: what the file says, :func:`~.export.is_labels`).
    dtype
        The type to store (default: the source's; 4-bit samples as uint8).
    name, extra
        As for :func:`zarr_attrs`.

    Raises
    ------
    UnsupportedImageError
        RGB, complex, 1D or more than 3 dimensions, a rounding of float64.
    """
    from . import ome_zarr as omz

    where = opened.path or os.fspath(target)
    if opened.rgb:
        raise UnsupportedImageError(f"{where}: RGB images are not written to OME-Zarr by napari-mrcz")
    if len(opened.shape) not in (2, 3):
        raise UnsupportedImageError(f"{where}: OME-Zarr output takes 2D and 3D images, "
                                    f"not {len(opened.shape)}D")
    if labels is None:
        labels = is_labels(opened.mrcz)
    dtype = omz.output_dtype(dtype if dtype is not None else np.uint8 if is_uint4(opened) else opened.dtype,
                             where)
    keepbits = zarr_keepbits(keepbits, dtype, labels, where)
    volume = len(opened.shape) == 3 and not opened.mrcz.get("stack")
    layout = omz.plan_layout(opened.shape, dtype, volume=volume, labels=labels, ngff=ngff, levels=levels,
                             compressor=compressor, clevel=clevel)
    attrs = zarr_attrs(opened, layout, labels=labels, name=name, extra=extra)
    prepared = omz.prepare(where, target, layout, attrs, keepbits=keepbits, max_error=max_error)
    prepared.frames = opened.shape[0] if len(opened.shape) == 3 else 1
    return prepared


def _write_zarr(opened: ImageSource, target: Path, out: Outcome, compressor: str | None, clevel: int | None,
                verify: bool, keepbits: int | str | None, max_error: float, ngff: str, levels: int | None,
                n_threads: int | None) -> None:
    from . import ome_zarr as omz

    prepared = prepare_zarr(opened, target, compressor=compressor, clevel=clevel, keepbits=keepbits,
                            max_error=max_error, ngff=ngff, levels=levels)
    out.keepbits, out.frames = prepared.keepbits, prepared.frames
    sections = source_sections(opened, n_threads)
    out.bytes_out, results = omz.write_all(prepared, sections.__getitem__, n_threads, verify)
    out.largest_error = max((r.largest_error for r in results), default=0.0)


def _remove_leftovers(target: Path) -> None:
    """Remove what an interrupted run left for this target: ``.verify`` files and their ``.part`` files."""
    # exactly the names _write_verified gives: the .verify files of x.map are not those of x.map.bz2.mrc
    folder, verify_files = target.parent, f".{glob.escape(target.name)}.{'[0-9a-f]' * 8}.verify"
    if folder.is_dir():
        for stale in [*folder.glob(verify_files), *temporaries(folder, verify_files)]:
            stale.unlink(missing_ok=True)


def is_uint4(opened: ImageSource) -> bool:
    """Whether the file holds 4-bit samples: MRC mode 101, or an MRCZ of ours made from such a file."""
    mode = (opened.mrcz.get("header") or {}).get("mode")
    return (mode is not None and int(mode) % 1000 == MODE_UINT4) or bool((opened.mrcz.get("meta") or {})
                                                                          .get(UINT4_KEY))


def _write_verified(opened: ImageSource, target: Path, out: Outcome, compressed: bool, compressor: str,
                    clevel: int, backend: str | None, verify: bool, keepbits: int | str | None = None,
                    max_error: float = 0.01, auto: str | None = None) -> None:
    # 4-bit samples stay 4-bit: mode 101 in plain MRC; int8 in MRCZ (MRCZ cannot pack nibbles; python-mrcz
    # says "use int8"), marked in the JSON so that decompress writes mode 101 again.
    # 32-bit integers in plain MRC: the standard mode that holds them (plain_mrc_dtype, a first pass);
    # with --dtype auto, float data of whole numbers in an integer mode (auto_dtype, a first pass).
    uint4 = is_uint4(opened)
    if uint4:
        write_dtype: str | None = "int8" if compressed else "uint4"
    elif not compressed:
        write_dtype = plain_mrc_dtype(source_sections(opened), opened.path)
    elif auto == "auto":
        first = source_sections(opened)
        write_dtype = auto_dtype(opened.dtype, len(first), first.__getitem__)
    else:
        write_dtype = None
    dtype = (np.dtype("u1" if write_dtype == "uint4" else write_dtype) if write_dtype
             else stored_dtype(opened.dtype, opened.path))
    if keepbits is not None and (write_dtype is not None or dtype.kind not in "fc"):
        keepbits = None  # integers (or whole numbers stored as such) are exact already
    elif isinstance(keepbits, int):  # --keepbits 12 keeps all 10 bits of a float16 file
        keepbits = min(keepbits, mantissa_bits(dtype))
    check_keepbits(keepbits, dtype)
    out.keepbits = keepbits

    sections = source_sections(opened)
    check = WrittenCheck(compressed, verify, out)
    out.frames = len(sections)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.verify")
    mrcz = {**opened.mrcz, "save": {"compressor": compressor, "clevel": clevel}}
    if not compressed:
        mrcz["meta"] = {}  # plain MRC2014 has no place for JSON
    stack = bool(opened.mrcz.get("stack"))
    try:
        extra = source_metadata(opened) if compressed else None
        if extra is not None and uint4:
            extra[UINT4_KEY] = True
        write_image(sections, temporary, mrcz, pixel_size(opened), stack=stack, compressed=compressed,
                    extra_meta=extra, backend=backend, stamp=source_stamp(opened.path), dtype=write_dtype,
                    unchanged=keepbits is None, keepbits=keepbits, max_error=max_error, check=check)
        if verify:
            check.on_disk(temporary, len(sections), source=opened.path)
        replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    out.bytes_out = target.stat().st_size


class VerificationError(ValueError):
    """A written file does not decode to what its source holds."""


class WrittenCheck:
    """Verification of a written file, section by section, while each section is still in memory.

    As the writer makes each section's chunk, :meth:`__call__` decodes the
    chunk again and compares it with the section it was made from (the
    source's, as stored: cast, or rounded with ``keepbits``), and keeps a
    CRC-32 of the chunk. :meth:`on_disk` then reads the file's data bytes
    once, compressed, and compares their CRC-32s: so the file under its final
    name holds, byte for byte, chunks that decode to the source. (The data is
    never decoded from the file nor hashed in full: one decode in memory, one
    CRC of the compressed bytes.) With ``keepbits`` it also takes the largest
    relative error of the rounding into ``out.largest_error``.
    """

    def __init__(self, compressed: bool, verify: bool, out: Outcome) -> None:
        self.compressed, self.verify, self.out = compressed, verify, out
        self.crcs: dict[int, tuple[int, int]] = {}
        self.problems: list[int] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def _buffer(self, nbytes: int) -> np.ndarray:
        """The decode buffer of the calling thread (one per writer thread, reused: no page faults)."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size != nbytes:
            buffer = self._local.buffer = np.empty(nbytes, dtype=np.uint8)
        return buffer

    def __call__(self, i: int, payload: Any, section: np.ndarray, unrounded: np.ndarray | None) -> None:
        """Check section ``i``'s chunk ``payload`` against ``section`` (a writer thread calls it)."""
        if unrounded is not None:
            self._largest_error(section, unrounded)
        if not self.verify:
            return
        if self.compressed:
            expected = np.ascontiguousarray(section).reshape(-1).view(np.uint8)
            decoded = self._buffer(expected.size)
            blosc_chunks.decompress_into(payload, decoded, payload[0], 1)
            same = same_bytes(decoded, expected)
        else:
            same = True  # the section's own bytes
        with self._lock:
            self.crcs[i] = (zlib.crc32(payload), len(payload))
            if not same:
                self.problems.append(i)

    def _largest_error(self, rounded: np.ndarray, exact: np.ndarray) -> None:
        exact = exact.reshape(-1)
        rounded = rounded.reshape(-1).astype(exact.dtype, copy=False)
        nonzero = exact != 0
        if not nonzero.any():
            return
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            error = np.abs(rounded[nonzero] - exact[nonzero]) / np.abs(exact[nonzero])
        finite = error[np.isfinite(error)]
        if finite.size:
            with self._lock:
                self.out.largest_error = max(self.out.largest_error, float(finite.max()))

    def on_disk(self, path: Path, n: int, source: str) -> None:
        """Check the written file: its header, its data bytes against the chunks' CRC-32s, the chunks' index.

        Raises
        ------
        VerificationError
            A section that decoded to something else, a header that does not
            describe ``n`` sections, bytes on disk that are not the chunks, or
            an MRCZ file whose trailing index (:mod:`.chunk_trailer`) is not theirs.
        """
        if self.problems:
            raise VerificationError(f"{path}: section {min(self.problems)} does not decode to "
                                    f"{source}'s section {min(self.problems)}")
        with MRCStack(path) as stack:
            if stack.shape[0] != n or len(self.crcs) != n:
                raise VerificationError(f"{path}: {stack.shape[0]} sections written, {n} in {source}")
            start = HEADER_BYTES + stack.header.extended_bytes
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            for i in range(n):
                crc, size = self.crcs[i]
                if _crc_of(f, size) != crc:
                    raise VerificationError(f"{path}: the bytes on disk of section {i} are not what was "
                                            f"written from {source}'s section {i}")
            trailer = chunk_trailer.encode([self.crcs[i][1] for i in range(n)]) if self.compressed else b""
            if f.read(len(trailer) + 1) != trailer:
                raise VerificationError(f"{path}: what follows the last section is not "
                                        + ("the chunks' index" if self.compressed else "nothing"))


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two byte arrays are equal (compared 8 bytes at a time where they can be: 10x faster)."""
    if a.size != b.size:
        return False
    wide = a.size // 8 * 8
    return (np.array_equal(a[:wide].view(np.uint64), b[:wide].view(np.uint64))
            and np.array_equal(a[wide:], b[wide:]))


def _crc_of(f: Any, size: int, block: int = 16 << 20) -> int:
    """CRC-32 of the next ``size`` bytes of ``f``, read in blocks."""
    crc, left = 0, size
    while left:
        data = f.read(min(block, left))
        if not data:
            return -1  # the file ends early
        crc, left = zlib.crc32(data, crc), left - len(data)
    return crc
