"""Writing an image out as MRC or MRCZ, keeping what its source file said.

The napari writer (a layer) and the batch command (a file opened with
:func:`~napari_mrcz.codec.source.open_image`) both end here: the data is read
one z-section at a time, a stack stays a stack and a volume a volume, and the
source's header fields (origin, starts, labels, a volume's space group),
voltage, C3, gain and JSON metadata are written back as they were. Values a
source lacks (``None``) are written as 0, MRC's "not set".
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .dm import DMFile
from .lazy import LazyStack, LazyVolumes
from .mrc import _file_dtype, write_with_header
from .narrowing import plain_mrc_dtype
from .source import DEFAULT_SAVE_CLEVEL, DEFAULT_SAVE_COMPRESSOR, ImageSource
from .stack import MRCStack

#: Header fields of the source file written back unchanged (the axis order and cell angles of
#: data written as one array: see :func:`~napari_mrcz.codec.mrc.write_with_header`).
KEPT_FIELDS = ("origin", "nxstart", "nystart", "nzstart", "labels", "ispg", "mapc", "mapr", "maps", "cellb")
#: The JSON metadata key of a source's per-section records (FEI1/FEI2/SerialEM extended header).
EXTENDED_KEY = "napari_mrcz_extended"
#: The JSON metadata key of axes an MRC header cannot hold (energy, time ...): see :func:`json_axes`.
AXES_KEY = "napari_mrcz_axes"
#: The JSON metadata key of a file written from a napari Labels layer (a segmentation): ``true``.
LABELS_KEY = "napari_mrcz_labels"
#: The text of the label of ours (an 80-character MRC label) that says the same, in MRC and MRCZ files.
LABELS_STAMP = "labels"
LABELS_LABEL = f"napari-mrcz {LABELS_STAMP}"


class UnsupportedImageError(TypeError):
    """An image MRC cannot hold: RGB, or more than three dimensions."""


class Sections:
    """An ``(n, ny, nx)`` array-like whose z-sections are read only when the writer reaches them.

    Parameters
    ----------
    get
        ``get(i) -> ndarray``: z-section ``i``.
    n, frame_shape, dtype
        Its shape and type.
    """

    def __init__(self, get: Callable[[int], Any], n: int, frame_shape: tuple[int, ...], dtype: Any) -> None:
        self._get = get
        self.shape = (n, *frame_shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._get(int(i)))

    def frames(self) -> list[Frame]:
        """One lazy :class:`Frame` per section: written as a list, the file records a stack."""
        return [Frame(self, i) for i in range(self.shape[0])]


class Frame:
    """Section ``i`` of an array-like, read when the writer asks for it (memory stays one frame)."""

    def __init__(self, data: Any, i: int) -> None:
        self.data, self.i = data, i
        self.shape, self.dtype, self.ndim = tuple(data.shape[1:]), np.dtype(data.dtype), data.ndim - 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.data[self.i], dtype=dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):  # one section of a 3D frame (a volume): only it is read
            return np.asarray(self.data[self.i, int(key)])
        return np.asarray(self.data[self.i])[key]


def reads_the_source(data: Any, mrcz: dict) -> bool:
    """Whether ``data`` is the file ``mrcz`` describes, unchanged: its lazy frames or its read-only map.

    Not a part of it (one channel), not a transform of it (a complex file's
    amplitude), not an array in memory that may have been edited.
    """
    shape = tuple(mrcz.get("shape") or ())
    if not shape or int(np.prod(shape)) != int(np.prod(getattr(data, "shape", (0,)))):
        return False
    if isinstance(data, LazyVolumes):  # a list of multi-slice frames, as 4D
        return data._transform is None and data.shape[0] * data.shape[1] == shape[0]
    if isinstance(data, LazyStack):
        return data._transform is None and data.shape[0] == shape[0]
    return isinstance(data, np.memmap) and not data.flags.writeable and data.filename is not None \
        and os.path.samefile(data.filename, mrcz.get("source") or data.filename)


def is_labels(mrcz: dict) -> bool:
    """Whether a file holds labels (was written from a napari Labels layer): its JSON or its label says so.

    Parameters
    ----------
    mrcz
        What the file says, as ``metadata['mrcz']`` holds it (``meta``: the
        JSON metadata; ``header``: the header fields, with ``labels``).

    Returns
    -------
    bool
        ``True`` for JSON metadata with ``napari_mrcz_labels: true`` or a
        label ``napari-mrcz labels``.
    """
    if (mrcz.get("meta") or {}).get(LABELS_KEY) is True:
        return True
    return any(str(text).strip() == LABELS_LABEL for text in (mrcz.get("header") or {}).get("labels") or [])


def stored_dtype(dtype: Any, path: str | os.PathLike = "") -> np.dtype:
    """The type MRC stores data of ``dtype`` as (uint8 -> uint16, float64 -> float32 ...), native order.

    With ``path``, narrowing (float64, complex128) is logged once per type, naming that file.
    """
    return np.dtype(_file_dtype(np.dtype(dtype), None, "=", os.fspath(path))[0]).newbyteorder("=")


def mrc_pixel_size(sizes: list[float | None], stack: bool, frame_spacing: float | None) -> list[float]:
    """The (z, y, x) pixel size, in Å, an MRC header gets for axes of these sizes (Å, last two y, x).

    A volume's z is its own; a stack's or an image's is the frame spacing its
    source stated, or y. ``None`` is an axis that is not a length (an energy
    loss in eV, a time): its pixel size is left unset (0), never written as
    Å; :func:`json_axes` keeps it.
    """
    y, x = ([1.0, *sizes])[-2], sizes[-1]
    z = sizes[-3] if len(sizes) >= 3 and not stack else (frame_spacing or y)
    return [0.0 if v is None else float(v) for v in (z, y, x)]


def json_axes(labels: list[str], scales: list[float], units: list[str]) -> list[dict] | None:
    """Every axis (label, scale, units), for the JSON metadata, where one is not a length: else ``None``.

    ``units`` are ``'Å'`` for lengths (``scales`` in Å), ``''`` for pixels,
    anything else for an axis that is not a length, which an MRC header
    cannot describe (an EELS spectrum's energy axis in eV). The reader gives
    those back from the JSON (``AXES_KEY``) as the axes they were.
    """
    if all(u in ("Å", "") for u in units):
        return None
    return [{"label": str(a), "scale": float(s), "units": str(u)}
            for a, s, u in zip(labels, scales, units, strict=False)]


def source_sections(source: ImageSource, n_threads: int | None = None) -> Sections:
    """The z-sections of an opened file as the napari reader shows them, read one at a time.

    ``n_threads`` caps MRCZ decompression threads (default: the codec's).

    Raises
    ------
    UnsupportedImageError
        What MRC cannot hold: RGB, more than three dimensions.
    """
    if source.rgb:
        raise UnsupportedImageError(f"{source.path}: MRC cannot store RGB images")
    if len(source.shape) > 3:
        raise UnsupportedImageError(f"{source.path}: MRC holds at most three dimensions, "
                        f"the image has {len(source.shape)}")
    handle = source.handle
    # Sections are read from the file, never through the viewer's memory map or cache:
    # the pages of a 20 GB movie would stay resident as the map is walked.
    if isinstance(handle, MRCStack) and len(source.shape) == 3:
        return Sections(lambda i: handle.read(i, i + 1, n_threads=n_threads)[0], source.shape[0],
                        source.shape[1:], source.dtype)
    if isinstance(handle, DMFile) and len(source.shape) == 3 and not handle.main_image.is_fft:
        return Sections(lambda i: handle.read(None, i, i + 1)[0], source.shape[0], source.shape[1:],
                        source.dtype)
    read_section = getattr(handle, "read_section", None)  # an OME-Zarr's level 0
    if read_section is not None and len(source.shape) == 3:
        return Sections(read_section, source.shape[0], source.shape[1:], source.dtype)
    data = source.data
    if data.ndim == 1:
        data = data[None]
    if data.ndim == 2:
        return Sections(lambda i: data, 1, data.shape, data.dtype)
    return Sections(lambda i: data[i], data.shape[0], data.shape[1:], data.dtype)


def write_image(data: Any, path: str | os.PathLike, mrcz: dict, pixelsize: list[float], *,
                stack: bool, compressed: bool, extra_meta: dict | None = None,
                backend: str | None = None, stamp: str | None = None, dtype: str | None = None,
                unchanged: bool = False, keepbits: int | str | None = None, max_error: float = 0.01,
                check: Callable[..., None] | None = None) -> None:
    """Write ``data`` as MRCZ (``compressed``) or plain MRC with what ``mrcz`` says about its source.

    Parameters
    ----------
    data
        2D or 3D array-like, read one z-section at a time (for example :class:`Sections`).
    path
        The file to write (atomically).
    mrcz
        What the source said, as ``metadata['mrcz']`` holds it: ``voltage``,
        ``C3``, ``gain``, ``header``, ``meta``, ``slices`` and ``save``
        (compressor and clevel).
    pixelsize
        (z, y, x) in Å.
    stack
        Whether the first axis is frames (written as a list: the file says "stack").
    compressed
        MRCZ (with ``mrcz['save']``'s compressor) or plain MRC.
    extra_meta
        More JSON metadata (merged under the source's).
    backend
        ``'blosc1'`` or ``'blosc2'`` chunks (default blosc1).
    stamp
        A text to keep in a label of ours (up to 68 characters).
    dtype
        The type to store, as :func:`~napari_mrcz.codec.mrc.writeMRC`'s
        ``dtype`` (``'uint4'``: mode 101); default: the data's.
    unchanged
        ``data`` is the source's, as it was: its header statistics (DMIN,
        DMAX, DMEAN, RMS) are written back as they were, where it had them,
        else marked "not computed" as MRC2014 allows (a DM file has none;
        python-mrcz's quick ones do not describe the data). Otherwise they are
        computed while writing, in the same pass.
    keepbits, max_error
        Round float mantissas (lossy), as :func:`~napari_mrcz.codec.mrc.writeMRC` does.
    check
        Called with every section as written (see
        :func:`~napari_mrcz.codec.mrc.write_with_header`'s ``'check'``).
    """
    save = dict(mrcz.get("save") or {})
    compressor = (save.get("compressor") or DEFAULT_SAVE_COMPRESSOR) if compressed else None
    clevel = int(save.get("clevel") or DEFAULT_SAVE_CLEVEL)
    meta = {**dict(extra_meta or {}), **dict(mrcz.get("meta") or {})}
    records = mrcz.get("extended")  # FEI/SerialEM per-section records (tilt angles, dose ...)
    if records and records.get("sections") and EXTENDED_KEY not in meta:
        if compressed:  # MRCZ's extended header is its JSON: they go there, by name
            meta[EXTENDED_KEY] = {"type": records.get("type"), "sections": {
                str(name): json_values(values) for name, values in records["sections"].items()}}
        else:
            warnings.warn(f"{path}: the {records.get('type')} extended header (per-section "
                          f"{', '.join(list(records['sections'])[:4])} ...) is not written to plain MRC; "
                          "save as MRCZ to keep it (in its JSON metadata)", UserWarning, stacklevel=2)
    header = dict(mrcz.get("header") or {})
    fields = {k: header[k] for k in KEPT_FIELDS if k in header}
    if stamp:
        fields["stamp"] = stamp
    if check is not None:
        fields["check"] = check
    stats = tuple(header.get(k) for k in ("dmin", "dmax", "dmean", "rms"))
    if unchanged:  # the source's, as they were; MRC2014's "not computed" where it had none that hold
        trusted = _determined(stats) and mrcz.get("written_by") != "python-mrcz"
        fields["stats"] = stats if trusted else NOT_COMPUTED
    slices = int(mrcz.get("slices") or 0)
    if data.ndim > 3:
        frames: Any = [Frame(data, i) for i in range(data.shape[0])]
    elif stack and data.ndim == 3:
        frames = [Frame(data, i) for i in range(data.shape[0])]
    elif slices > 1 and data.ndim == 3 and data.shape[0] % slices == 0:
        frames = [Frame(_Grouped(data, slices), j) for j in range(data.shape[0] // slices)]
    else:
        frames = data
    if not compressed and dtype is None:
        dtype = plain_mrc_dtype(data, path)
    voltage, c3, gain = (mrcz.get(k) for k in ("voltage", "C3", "gain"))
    write_with_header(frames, path, fields, meta=meta or None, pixelsize=pixelsize,
                      voltage=0.0 if voltage is None else float(voltage),
                      C3=0.0 if c3 is None else float(c3), gain=0.0 if gain is None else float(gain),
                      compressor=compressor, clevel=clevel, backend=backend, dtype=dtype,
                      quickStats=False, keepbits=keepbits, max_error=max_error)


#: MRC2014's marks for statistics not computed: DMAX < DMIN, DMEAN < both, RMS < 0.
NOT_COMPUTED = (0.0, -1.0, -2.0, -1.0)


def _determined(stats: tuple) -> bool:
    """Whether a header's (DMIN, DMAX, DMEAN, RMS) describe data: not MRC2014's "not computed" marks.

    python-mrcz's quick statistics (from its first frame, RMS 0) are not:
    files python-mrcz wrote are not asked.
    """
    if None in stats or not all(np.isfinite(v) for v in stats):
        return False
    lo, hi, mean, rms = (float(v) for v in stats)
    return lo <= mean <= hi and rms >= 0 and (rms > 0 or lo == hi)


def json_values(values: Any) -> list:
    """Per-section values as JSON holds them: text decoded, numbers as numbers, NaN and inf as null."""
    array = np.asarray(values)
    if array.dtype.kind == "S":
        return [v.rstrip(b"\0 ").decode("latin-1") for v in array.ravel().tolist()]
    if array.dtype.kind == "f":
        return np.where(np.isfinite(array), array.astype(object), None).tolist()
    return array.tolist()


class _Grouped:
    """Sections grouped ``slices`` at a time: frame j is sections j*slices ... (j+1)*slices - 1."""

    def __init__(self, data: Any, slices: int) -> None:
        self.data, self.slices = data, slices
        self.shape = (data.shape[0] // slices, slices, *data.shape[1:])
        self.dtype, self.ndim = np.dtype(data.dtype), 4

        self._last: tuple[int, np.ndarray] | None = None

    def __getitem__(self, j: int | tuple) -> np.ndarray:
        if isinstance(j, tuple) and len(j) >= 2 and isinstance(j[1], (int, np.integer)):  # one section
            return np.asarray(self.data[int(j[0]) * self.slices + int(j[1])])[j[2:]]
        if isinstance(j, tuple):
            return self[j[0]][j[1:]]
        if self._last is None or self._last[0] != j:  # the writer asks for each section of a frame
            first = j * self.slices
            self._last = (j, np.stack([np.asarray(self.data[first + k]) for k in range(self.slices)]))
        return self._last[1]
