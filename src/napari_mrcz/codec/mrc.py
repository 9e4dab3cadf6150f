"""python-mrcz's MRC/MRCZ API: ``readMRC``, ``writeMRC`` and their helpers.

Names, argument order, defaults and ``meta`` keys are those of python-mrcz
0.6.0. Where we depart from it (more modes, ``idx`` on compressed files,
MRC2014-valid plain files, atomic writes, clear errors) ``docs/format.md``
says so and why.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from typing import Any, BinaryIO

import numpy as np

from . import blosc_chunks, chunk_trailer
from .atomic import atomic_write
from .errors import MRCFileError
from .header import (
    HEADER_BYTES,
    MODE_UINT4,
    MRC_COMP_RATIO,
    REVERSE_CCPEM_ENUM,
    REVERSE_COMPRESSOR_ENUM,
    angstrom_per_unit,
    axis_order,
    build_header,
    data_axes_cell,
)
from .narrowing import auto_dtype
from .precision import PRECISION_KEY, Rounding
from .remote import is_url
from .stack import MRCStack

logger = logging.getLogger("napari_mrcz.codec")

DEFAULT_HEADER_LEN = HEADER_BYTES
_LABEL_VERSION = "0.6.0"  # the python-mrcz format generation our files follow
_WARNED: set[str] = set()
_asyncExecutor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrcz-async")  # noqa: N816


def _label() -> bytes:
    from . import __version__

    return f"MRCZ{_LABEL_VERSION} napari-mrcz {__version__}".encode("ascii")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def _frame_range(idx: int | Sequence[int] | None, nz: int, path: str) -> tuple[int, int]:
    """python-mrcz's ``idx``: one z-section, or ``(first, last)`` with both included."""
    if idx is None:
        return 0, nz
    if np.isscalar(idx):
        first = last = int(idx)  # type: ignore[arg-type]
    else:
        first, last = (int(v) for v in idx)  # type: ignore[union-attr]
    first = first + nz if first < 0 else first
    last = last + nz if last < 0 else last
    if not 0 <= first < nz:
        raise MRCFileError(path, f"idx {idx}: section {first} is out of range, the file has {nz} sections")
    if not first <= last < nz:
        raise MRCFileError(path, f"idx {idx}: last section {last} is out of range {first}..{nz - 1}")
    return first, last + 1


def readMRC(MRCfilename: str | os.PathLike, idx: int | tuple[int, int] | None = None,
            endian: str = "le", pixelunits: str = "\\AA", fileConvention: str = "ccpem",
            useMemmap: bool = False, n_threads: int | None = None,
            slices: int | None = None) -> tuple[np.ndarray | list[np.ndarray], dict]:
    r"""Read an MRC or MRCZ file into a numpy array and a ``meta`` dict.

    Parameters
    ----------
    MRCfilename
        The file: ``.mrc``, ``.mrcz``, ``.mrcs``, ``.map`` ... also gzip or
        bzip2 compressed; or its URL (``https://``, ``s3://``), read by Range
        requests (see :mod:`napari_mrcz.codec.remote`).
    idx
        One z-section, or ``(first, last)`` with both included (as python-mrcz
        does); negative values count from the end. Works on compressed files
        too, reading only those sections' chunks.
    endian
        Ignored for reading: the byte order is detected from the file.
    pixelunits
        Units of ``meta['pixelsize']``: ``'\\AA'``, ``'nm'``, ``'\\mum'`` or ``'pm'``.
    fileConvention
        ``'ccpem'`` (MRC2014, IMOD) or ``'eman2'``.
    useMemmap
        Return a copy-on-write ``numpy.memmap`` of a plain file (compressed
        files are decoded as usual).
    n_threads
        Threads for blosc decompression (default: all cores).
    slices
        z-sections per frame. ``None`` takes it from the file (python-mrcz's
        MZ convention in MRCZ files, 0 for files from other programs); with
        ``slices > 0`` a list of ``(slices, ny, nx)`` frames is returned.

    Returns
    -------
    image : numpy.ndarray or list of numpy.ndarray
        The data (singleton axes squeezed), or a list of frames.
    meta : dict
        Header fields (``pixelsize`` in z, y, x, ``pixelunits``, ``voltage``,
        ``C3``, ``gain``, ``compressor``, ``dtype``, ``dimensions`` ...) with the
        JSON extended header's keys merged in.

    Raises
    ------
    MRCFileError
        The file is damaged, truncated or not MRC; the message says how.

    """
    angstrom_per_unit(pixelunits)
    with MRCStack(MRCfilename, fileConvention=fileConvention, slices=slices,
                  n_threads=n_threads, background_index=False) as stack:  # read once: no walk behind it
        start, stop = _frame_range(idx, stack.shape[0], stack.path)
        image = stack.memmap(start, stop) if useMemmap else stack.read(start, stop)
        meta = stack.meta(pixelunits)
        slices = stack.header.slices
    if idx is not None:
        meta["dimensions"][0] = stop - start
        return np.squeeze(image), meta
    if slices > 0:
        frames = [image[j:j + slices] for j in range(0, image.shape[0] - slices + 1, slices)]
        return ([f[0] for f in frames] if slices == 1 else frames), meta
    return np.squeeze(image), meta


def readMRCHeader(MRCfilename: str | os.PathLike, slices: int | None = None, endian: str = "le",
                  fileConvention: str = "ccpem", pixelunits: str = "\\AA") -> tuple[dict, int]:
    r"""Read only the header of an MRC/MRCZ file.

    Parameters
    ----------
    MRCfilename, slices, endian, fileConvention, pixelunits
        As for :func:`readMRC`.

    Returns
    -------
    header : dict
        As ``meta`` from :func:`readMRC`.
    slices : int
        z-sections per frame.

    """
    angstrom_per_unit(pixelunits)
    with MRCStack(MRCfilename, fileConvention=fileConvention, slices=slices,
                  background_index=False) as stack:
        return stack.meta(pixelunits), stack.header.slices


def _setAsyncWorkers(N_workers: int) -> None:
    """Set how many background threads serve the async functions (python-mrcz's; default 1).

    Parameters
    ----------
    N_workers
        Number of threads, at least 1.

    """
    if N_workers <= 0:
        raise ValueError("N_workers must be greater than 0")
    _asyncExecutor._max_workers = int(N_workers)
    _asyncExecutor._adjust_thread_count()


def asyncReadMRC(*args: Any, **kwargs: Any) -> Future:
    """Run :func:`readMRC` in a background thread.

    Returns
    -------
    concurrent.futures.Future
        ``future.result()`` gives ``(image, meta)``.

    """
    return _asyncExecutor.submit(readMRC, *args, **kwargs)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
class _Sections:
    """The z-sections of whatever the caller passed: an array-like or a list of frames."""

    def __init__(self, data: Any, path: str) -> None:
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError(f"{path}: nothing to write, the list of frames is empty")
            first = np.asarray(data[0]) if not hasattr(data[0], "ndim") else data[0]
            if first.ndim not in (2, 3):
                raise ValueError(f"{path}: a list of frames must hold 2D or 3D arrays")
            for j, frame in enumerate(data):
                if tuple(frame.shape) != tuple(first.shape):
                    raise ValueError(f"{path}: frame {j} has shape {frame.shape}, expected {first.shape}")
            self.slices = 1 if first.ndim == 2 else int(first.shape[0])
            self.frames = list(data)
            per = self.slices
            self.get: Callable[[int], Any] = (
                (lambda i: self.frames[i]) if first.ndim == 2
                else (lambda i: self.frames[i // per][i % per]))
            self.shape = (len(data) * per,) + tuple(first.shape[-2:])
            dtypes = {np.dtype(f.dtype) for f in data}
            self.dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
        else:
            if not hasattr(data, "shape"):
                data = np.asarray(data)
            if data.ndim == 2:
                data = data[None]
            if data.ndim != 3:
                raise ValueError(f"{path}: can only write 2D or 3D data, got shape {data.shape}")
            self.slices = 0
            self.array = data
            self.get = lambda i: self.array[i]
            self.shape = tuple(int(n) for n in data.shape)
            self.dtype = np.dtype(data.dtype)

    def section(self, i: int, dtype: np.dtype) -> np.ndarray:
        """Section ``i`` as a C-contiguous array of ``dtype`` (a view where possible)."""
        return np.ascontiguousarray(np.asarray(self.get(i)), dtype=dtype)


def _file_dtype(in_dtype: np.dtype, dtype: Any, byteorder: str, path: str) -> tuple[np.dtype, int]:
    """The stored sample type and MRC mode for data of ``in_dtype``."""
    if isinstance(dtype, str) and dtype.strip("<>|=") == "uint4":
        return np.dtype("u1"), MODE_UINT4
    target = np.dtype(in_dtype if dtype is None else dtype)
    name = target.name
    if name in ("float64", "complex128"):
        narrow = "float32" if name == "float64" else "complex64"
        if path and name not in _WARNED:  # a path to name: not a question of stored_dtype() alone
            logger.warning("Casting %s to numpy.%s; further warnings suppressed.", path, narrow)
            _WARNED.add(name)
        target = np.dtype(narrow)
    elif name in ("uint8", "bool"):
        target = np.dtype("uint16")  # as mrcfile does: mode 6 holds every value
    if target.name not in REVERSE_CCPEM_ENUM:
        raise TypeError(f"{path}: MRC cannot store {target.name} data; cast it to one of "
                        "int8, int16, uint16, int32, uint32, float16, float32, complex64")
    mode = REVERSE_CCPEM_ENUM[target.name]
    return (target if target.itemsize == 1 else target.newbyteorder(byteorder)), mode


def _pixelsize_A(pixelsize: Any, pixelunits: str) -> np.ndarray:
    """python-mrcz's pixelsize argument (1, 2 or 3 values) as Å in z, y, x."""
    size = np.atleast_1d(np.asarray(pixelsize, dtype=np.float64)).ravel() * angstrom_per_unit(pixelunits)
    if size.size == 1:
        return np.repeat(size, 3)
    if size.size == 2:
        return np.array([10.0, size[0], size[1]])
    if size.size == 3:
        return size
    raise ValueError(f"pixelsize must have 1, 2 or 3 elements, got {size.size}")


def _to_json(value: Any) -> Any:
    if hasattr(value, "serialize"):
        return value.serialize()
    if hasattr(value, "__array_interface__"):
        return value.tolist()
    if isinstance(value, Enum):
        return f"Enum.{value.__class__.__name__}.{value.name}"
    raise TypeError(f"cannot store {type(value).__name__} in the JSON extended header")


def _json_bytes(meta: dict | None) -> bytes:
    if not isinstance(meta, dict):
        return b""
    return json.dumps(meta, default=_to_json, ensure_ascii=False).encode("utf-8")


class _Stats:
    """Min, max, mean and RMS deviation, accumulated section by section, as MRC2014 readers check them.

    Real data gets all four, exactly (float64 sums). Complex data gets the RMS
    deviation of the complex values, sqrt(mean |x - mean|^2), and no
    min/max/mean (marked undetermined): they have no order in float32 fields,
    and this is what mrcfile writes and checks. float16 data gets min, max and
    mean but RMS -1 (undetermined): readers check it in half precision, where
    the sum of squares overflows for all but the smallest images.

    :meth:`add` may be called from several threads, for any sections in any
    order: each section's sums are kept by its number and added up in order,
    so the result does not depend on which thread was first. Sums are taken
    in strips of :data:`STATS_STRIP` values (float64 temporaries of that size
    only).
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.complex = np.dtype(dtype).kind == "c"
        self.half = np.dtype(dtype).kind == "f" and np.dtype(dtype).itemsize == 2
        self.parts: dict[int, tuple[int, float, float, complex, float]] = {}
        self._lock = threading.Lock()

    def add(self, section: np.ndarray, i: int | None = None) -> None:
        part = _section_sums(section, self.complex)
        with self._lock:
            self.parts[len(self.parts) if i is None else i] = part

    def result(self) -> tuple[float, float, float, float]:
        n, total, squares, lo, hi = 0, 0.0 + 0.0j, 0.0, np.inf, -np.inf
        for k in sorted(self.parts):
            count, low, high, s, sq = self.parts[k]
            n, total, squares = n + count, total + s, squares + sq
            lo, hi = min(lo, low), max(hi, high)
        mean = total / n if n else 0.0
        rms = float(np.sqrt(max(squares / n - abs(mean) ** 2, 0.0))) if n else 0.0
        if self.complex:
            return 0.0, -1.0, -2.0, rms
        return float(lo), float(hi), float(mean.real), -1.0 if self.half else rms


#: Bytes after an MRCZ file's chunks (our trailer) that a failed append puts back; more is not kept.
KEEP_AFTER = 64 << 20
#: Values summed at a time by :class:`_Stats` (float64 temporaries of this size).
STATS_STRIP = 1 << 16


def _section_sums(section: np.ndarray, complex_: bool) -> tuple[int, float, float, complex, float]:
    """(count, min, max, sum, sum of squares) of one section, sums in float64 (or exact integers)."""
    flat = np.ascontiguousarray(section).reshape(-1)
    dt = flat.dtype.newbyteorder("=")
    flat = flat.astype(dt, copy=False)
    if flat.size == 0:
        return 0, np.inf, -np.inf, 0.0, 0.0
    total, squares, lo, hi = 0.0 + 0.0j, 0.0, np.inf, -np.inf
    if not complex_:
        lo, hi = float(flat.min()), float(flat.max())
    for start in range(0, flat.size, STATS_STRIP):
        strip = flat[start:start + STATS_STRIP]
        if complex_:
            total += complex(strip.sum(dtype=np.complex128))
            squares += float(np.square(strip.real, dtype=np.float64).sum()
                             + np.square(strip.imag, dtype=np.float64).sum())
        else:  # (integer sums are exact in float64 below 2**53)
            wide = strip.astype(np.float64)
            total += float(wide.sum())
            squares += float(np.dot(wide, wide))
    return flat.size, lo, hi, total, squares


def _pack_uint4(section: np.ndarray) -> np.ndarray:
    if section.size and (section.min() < 0 or section.max() > 15):
        raise ValueError("uint4 (mode 101) holds only 0..15; the data has values outside")
    values = section.astype(np.uint8)
    ny, nx = values.shape
    packed = np.zeros((ny, (nx + 1) // 2), dtype=np.uint8)
    packed[:] = values[:, 0::2]
    packed[:, : nx // 2] |= values[:, 1::2] << 4
    return packed


class _SectionWriter:
    """Streams z-sections to a file: plain, or one blosc chunk each.

    Worker threads convert (and compress) sections while this thread writes the
    finished ones in order, at most ``2 x workers`` sections ahead.
    """

    def __init__(self, f: BinaryIO, file_dtype: np.dtype, mode: int,
                 compress: blosc_chunks.Compressor | None, stats: _Stats | None,
                 n_threads: int = 1, rounding: Rounding | None = None,
                 check: Callable[..., None] | None = None) -> None:
        self.f, self.file_dtype, self.mode = f, file_dtype, mode
        self.compress, self.stats, self.n_threads = compress, stats, n_threads
        self.rounding, self.check = rounding, check
        self.packed_bytes = 0
        self.chunk_sizes: list[int] = []  # of the chunks written (MRCZ), for the file's trailer

    def _encode(self, sections: _Sections, i: int) -> tuple[Any, np.ndarray]:
        before = None
        if self.rounding is not None:  # rounded in native order (a copy), then in the file's
            before = sections.section(i, self.file_dtype.newbyteorder("="))
            section = self.rounding.apply(i, before).astype(self.file_dtype, copy=False)
        else:
            section = sections.section(i, sections.dtype if self.mode == MODE_UINT4 else self.file_dtype)
        payload: Any = _pack_uint4(section) if self.mode == MODE_UINT4 else section
        payload = self.compress(payload) if self.compress is not None else memoryview(payload).cast("B")
        if self.check is not None:  # while the section is still in memory (see convert.WrittenCheck)
            self.check(i, payload, section, before)
        if self.stats is not None:  # here, on the workers, beside compression
            self.stats.add(section, i)
        return payload, section

    def write_all(self, sections: _Sections, first: int, count: int) -> None:
        """Write sections ``first .. first + count - 1`` at the file's position."""
        if (self.compress is None and self.rounding is None and self.check is None
                and self._write_contiguous(sections, first, count)):
            return
        session = self.compress.session() if self.compress is not None else contextlib.nullcontext()
        with session, ThreadPoolExecutor(self.n_threads, thread_name_prefix="mrcz-write") as pool:
            pending: collections.deque[Future] = collections.deque()
            for i in range(first, first + count):
                pending.append(pool.submit(self._encode, sections, i))
                if len(pending) > 2 * self.n_threads:
                    self._write_one(pending.popleft().result())
            while pending:
                self._write_one(pending.popleft().result())

    def _write_one(self, done: tuple[Any, np.ndarray]) -> None:
        payload, section = done
        _write_fully(self.f, payload)
        self.packed_bytes += len(payload)
        if self.compress is not None:
            self.chunk_sizes.append(len(payload))

    def _write_contiguous(self, sections: _Sections, first: int, count: int) -> bool:
        """One big write when the input already is the file's bytes."""
        array = getattr(sections, "array", None)
        if (not isinstance(array, np.ndarray) or self.mode == MODE_UINT4
                or array.dtype != self.file_dtype or not array.flags.c_contiguous):
            return False
        block = array[first:first + count]
        if self.stats is not None:
            for section in block:
                self.stats.add(section)
        _write_fully(self.f, block.reshape(-1).view(np.uint8))
        return True


def _write_fully(f: BinaryIO, data: Any) -> None:
    """Write all of ``data`` to an unbuffered file (which may write less per call)."""
    view = memoryview(data).cast("B")
    while len(view):
        done = f.write(view[: 1 << 28])
        view = view[done:]


def writeMRC(input_image: np.ndarray | list[np.ndarray], MRCfilename: str | os.PathLike,
             meta: dict | None = None, endian: str = "le", dtype: np.dtype | str | None = None,
             pixelsize: Sequence[float] | float = [0.1, 0.1, 0.1], pixelunits: str = "\\AA",  # noqa: B006
             shape: tuple | None = None, voltage: float = 0.0, C3: float = 0.0, gain: float = 1.0,
             compressor: str | None = None, clevel: int = 1, n_threads: int | None = None,
             quickStats: bool = True, idx: int | None = None, backend: str | None = None,
             keepbits: int | str | None = None, max_error: float = 0.01) -> None:
    r"""Write an MRC file, or a compressed MRCZ file.

    The file is written to a temporary file beside it and renamed into place,
    so a failure never leaves a half-written file or destroys an old one.

    Parameters
    ----------
    input_image
        A 2D or 3D array-like (numpy, dask, a lazy napari layer: it is read one
        z-section at a time), or a list of 2D or 3D frames of one shape.
    MRCfilename
        The file to write.
    meta
        A dict stored as JSON in the extended header (numpy values and Enums
        are converted).
    endian
        ``'le'`` or ``'be'``: byte order of the file.
    dtype
        Cast to this type before writing; ``'uint4'`` packs 0..15 two to a
        byte (mode 101); ``'auto'`` stores float data whose values are all
        whole numbers in the smallest MRC integer mode that holds them
        exactly (int8, int16, uint16, int32, uint32; one more pass over the
        data), and other data as it is. float64 and complex128 are cast to 32 bits with a
        warning; uint8 and bool are stored as uint16 (mode 6).
    pixelsize
        Pixel size in z, y, x (one value for all axes; two for y, x).
    pixelunits
        ``'\\AA'``, ``'nm'``, ``'\\mum'`` or ``'pm'``.
    shape
        Accepted for python-mrcz compatibility and ignored, as there.
    voltage, C3, gain
        Microscope voltage (keV), spherical aberration (mm), detector gain
        (counts per electron).
    compressor
        ``None`` for plain MRC, or ``'lz4'``, ``'lz4hc'``, ``'zstd'``,
        ``'zlib'``, ``'blosclz'`` for MRCZ.
    clevel
        Compression level, 1 (fastest) to 9.
    n_threads
        Threads for blosc (default: all cores).
    quickStats
        ``True`` marks min/max/mean/RMS as undetermined (MRC2014); ``False``
        computes them exactly.
    idx
        Write into an existing file from z-section ``idx`` on: overwrite or
        extend a plain file, or append (``idx`` = its number of sections) to
        a compressed one.
    backend
        ``'blosc1'`` (default: version-2 chunks every MRCZ reader knows) or
        ``'blosc2'`` (version-5 chunks, needs python-mrcz >= 0.6 to read).
    keepbits
        ``None`` (default): lossless. A whole number ``N`` rounds float
        mantissas to their ``N`` leading bits (0-23 for float32, 0-10 for
        float16, each part of a complex value), to nearest, ties to even,
        before compression: lossy, and recorded in the JSON metadata
        (``napari_mrcz_precision``) and in a label. ``'auto'`` picks, for
        each section, the fewest bits whose RMS rounding error is at most
        ``max_error`` of the section's noise level (see
        :mod:`napari_mrcz.codec.precision`). Every MRCZ reader reads the result.
    max_error
        For ``keepbits='auto'``: the RMS rounding error allowed, as a fraction
        of the noise level.

    Raises
    ------
    TypeError
        The data type cannot be stored in MRC.
    ValueError
        Inconsistent arguments, ``idx`` does not fit the existing file, or
        ``keepbits`` for integer data (stored exactly already).

    """
    _write_mrc(**locals())


def write_with_header(input_image: Any, MRCfilename: str | os.PathLike, fields: Mapping[str, Any],
                      **kwargs: Any) -> None:
    r""":func:`writeMRC`, writing back header fields of the file the data came from.

    Parameters
    ----------
    input_image, MRCfilename, kwargs
        As for :func:`writeMRC`.
    fields
        Header fields to keep as they were: ``'origin'`` (x, y, z in Å),
        ``'nxstart'``, ``'nystart'``, ``'nzstart'``, ``'labels'`` (kept before
        our own label, at most 9), ``'ispg'`` (a volume's space group,
        1-230); for data written as one array, not a list of frames,
        ``'mapc'``, ``'mapr'``, ``'maps'`` (the cell axis of columns, rows
        and sections: each data axis's pixel size is stored under its cell
        axis) and ``'cellb'`` (the cell angles); ``'stamp'``, a text written
        as a second label of ours; ``'stats'``, (DMIN, DMAX, DMEAN, RMS) to
        write instead of computing them; and ``'check'``, called as
        ``check(i, payload, section, unrounded)`` with every section's bytes as
        written (its chunk, for MRCZ) while the section is in memory
        (``unrounded``: before ``keepbits``, else ``None``). :meth:`MRCHeader.fields`
        gives the others.

    """
    bound = inspect.signature(writeMRC).bind(input_image, MRCfilename, **kwargs)
    bound.apply_defaults()
    _write_mrc(**bound.arguments, fields=fields)


def _write_mrc(input_image: Any, MRCfilename: str | os.PathLike, meta: dict | None, endian: str,
               dtype: Any, pixelsize: Any, pixelunits: str, shape: Any, voltage: float, C3: float,
               gain: float, compressor: str | None, clevel: int, n_threads: int | None,
               quickStats: bool, idx: int | None, backend: str | None,
               keepbits: int | str | None = None, max_error: float = 0.01,
               fields: Mapping[str, Any] | None = None) -> None:
    path = os.fspath(MRCfilename)
    if is_url(path):
        raise ValueError(f"{path}: writing to a URL is not supported; write a local file and upload it")
    if endian not in ("le", "be"):
        raise ValueError(f"endian must be 'le' or 'be', got {endian!r}")
    byteorder = "<" if endian == "le" else ">"
    sections = _Sections(input_image, path)
    if idx is not None and os.path.isfile(path):
        if keepbits is not None:
            raise ValueError(f"{path}: keepbits rounds a whole new file, not sections written with idx")
        return _write_into(sections, path, int(idx), clevel, n_threads, backend)
    if idx not in (None, 0):
        raise ValueError(f"{path}: idx={idx} but the file does not exist yet; use idx=0 or None")

    if isinstance(dtype, str) and dtype == "auto":  # float data of whole numbers: an integer mode
        dtype = auto_dtype(sections.dtype, sections.shape[0], lambda i: sections.section(i, sections.dtype))
        if dtype is not None:
            keepbits = None  # exact integers: nothing to round
    file_dtype, base_mode = _file_dtype(sections.dtype, dtype, byteorder, path)
    if compressor is not None and base_mode == MODE_UINT4:
        raise TypeError("uint4 packing is not compatible with compression, use int8")
    backend = blosc_chunks.resolve_backend(compressor, backend)
    nz, ny, nx = sections.shape
    slices = sections.slices
    nthreads = blosc_chunks.threads(n_threads)
    pixel_A = _pixelsize_A(pixelsize, pixelunits)
    rounding = None
    if keepbits is not None:
        try:  # it refuses integers (uint4 included: stored as u1) and counts out of range
            rounding = Rounding(keepbits, max_error, file_dtype.newbyteorder("="), nz)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        meta = {**(meta or {}), PRECISION_KEY: rounding.placeholder()}  # room for the final record
    ext = _json_bytes(meta)
    if compressor is not None or base_mode == MODE_UINT4:
        # python-mrcz's layout. Mode 101 is python-mrcz's (mrcfile does not read it), which reads
        # it only as one array: MZ, its slices per frame, stays 0.
        mode = base_mode + (0 if compressor is None else MRC_COMP_RATIO * REVERSE_COMPRESSOR_ENUM[compressor])
        layout = {"sampling": (slices, 0, 0), "cell_sampling": (nz, ny, nx), "ispg": 0}
        compress = None if compressor is None else blosc_chunks.Compressor(
            compressor, clevel, file_dtype.itemsize, ny * nx * file_dtype.itemsize, backend, nthreads)
    else:
        mode = base_mode
        layout = _plain_layout(nz, ny, nx, slices)
        compress = None
    given = (fields or {}).get("stats")  # a source's, for data written unchanged
    stats = None if quickStats or given is not None else _Stats(file_dtype)
    kept = _kept_fields(fields or {}, layout, one_array=slices == 0, volume=slices == 0 and nz > 1)

    def header(packed_bytes: int = 0) -> bytes:
        if rounding is not None:  # a label says so (an earlier rounding's gives way to this one's)
            labels = [t for t in kept["labels"] if not t.startswith(b"lossy:")]
            ours = [t for t in labels if b"napari-mrcz" in t]  # our label and stamp stay, last
            theirs = [t for t in labels if b"napari-mrcz" not in t][:9 - len(ours)]
            kept["labels"] = [*theirs, rounding.label().encode("latin-1", "replace")[:80], *ours]
        return build_header(
            shape=(nz, ny, nx), mode=mode, byteorder=byteorder, pixelsize_A=pixel_A,
            stats=tuple(given) if given is not None else None if stats is None else stats.result(),
            voltage=float(voltage or 0.0),
            C3=float(C3 or 0.0), gain=float(1.0 if gain is None else gain), packed_bytes=packed_bytes,
            extended_bytes=len(ext), exttyp=b"json" if ext else b"", **kept, **layout)

    with atomic_write(path) as f:
        f.write(bytes(HEADER_BYTES))
        f.write(ext)
        writer = _SectionWriter(f, file_dtype, base_mode, compress, stats, nthreads, rounding,
                                (fields or {}).get("check"))
        writer.write_all(sections, 0, nz)
        if compress is not None:  # where each chunk is, for readers over the network (in packedBytes)
            trailer = chunk_trailer.encode(writer.chunk_sizes)
            _write_fully(f, trailer)
            writer.packed_bytes += len(trailer)
        if rounding is not None:  # the bits each section kept, in the space the placeholder took
            final = _json_bytes({**meta, PRECISION_KEY: rounding.record()})
            f.seek(HEADER_BYTES)
            f.write(final.ljust(len(ext), b" "))  # JSON allows the trailing spaces
        f.seek(0)
        f.write(header(writer.packed_bytes if compress is not None else 0))


def _kept_fields(fields: Mapping[str, Any], layout: dict, one_array: bool = False,
                 volume: bool = False) -> dict:
    """build_header's labels, origin, start, axis order and angles from a source's fields; may set ISPG.

    The axis order (MAPC, MAPR, MAPS) and cell angles are kept for data
    written as one array (not a list of frames, whose MZ may hold python-mrcz's
    slices), a volume's space group (1-230, in ``layout``) for a 3D array.
    """
    labels = [str(t).encode("latin-1", "replace") for t in fields.get("labels") or []
              if "napari-mrcz" not in str(t)]  # our stamp of an earlier save is replaced by this one
    ours = [_label()]
    if fields.get("stamp"):  # one more label of ours (the batch command's record of its source)
        ours.append(f"napari-mrcz {fields['stamp']}"[:80].encode("latin-1", "replace"))
    kept: dict[str, Any] = {"labels": [*labels[:10 - len(ours)], *ours]}
    if fields.get("origin") is not None:
        kept["origin"] = tuple(float(v) for v in fields["origin"])
    kept["start"] = tuple(int(fields.get(k) or 0) for k in ("nxstart", "nystart", "nzstart"))
    ispg = fields.get("ispg")
    if volume and isinstance(ispg, int) and 1 <= ispg <= 230:
        layout["ispg"] = ispg
    order = tuple(fields.get(k) or 0 for k in ("mapc", "mapr", "maps"))
    if one_array and all(isinstance(k, int) for k in order):
        kept["axis_order"] = axis_order(*order)
    angles = fields.get("cellb")
    if one_array and angles is not None and len(angles) == 3 and all(
            isinstance(a, (int, float)) and 0.0 < a < 180.0 for a in angles):
        kept["angles"] = tuple(float(a) for a in angles)
    return kept


def _plain_layout(nz: int, ny: int, nx: int, slices: int) -> dict:
    """MRC2014 sampling and space group for a plain file (see docs/format.md)."""
    if slices == 1 or nz == 1:
        return {"sampling": (1, ny, nx), "ispg": 0}
    if slices > 1:
        return {"sampling": (slices, ny, nx), "ispg": 401}
    return {"sampling": (nz, ny, nx), "ispg": 1}


def _write_into(sections: _Sections, path: str, idx: int, clevel: int,
                n_threads: int | None, backend: str | None) -> None:
    """Write sections into an existing file at ``idx``, undoing everything on failure."""
    with MRCStack(path) as stack:
        h = stack.header
        nz, ny, nx = h.shape
        if sections.shape[1:] != (ny, nx):
            raise ValueError(f"{path}: sections are {sections.shape[1:]}, the file holds {(ny, nx)}")
        if h.is_packed:
            raise ValueError(f"{path}: cannot write into a packed mode-{h.mode} file with idx")
        idx = idx + nz if idx < 0 else idx
        count = sections.shape[0]
        if h.is_compressed:
            if idx != nz:
                raise ValueError(f"{path}: a compressed file can only be appended to "
                                 f"(idx={nz}), not written at idx={idx}")
            last_offset, last_bytes, _ = stack.chunk_span(nz - 1)
            end = last_offset + last_bytes
            # for the index our files end with (below); theirs get none
            old_sizes = [stack.chunk_span(k)[1] for k in range(nz)] if h.written_by == "napari-mrcz" else None
            fmt_backend = "blosc2" if stack.blosc_format == 2 else "blosc1"
            nthreads = blosc_chunks.threads(n_threads)
            compress = blosc_chunks.Compressor(h.compressor, clevel, h.file_dtype.itemsize,
                                               h.section_nbytes, backend or fmt_backend, nthreads)
        elif not 0 <= idx <= nz:
            raise ValueError(f"{path}: idx={idx} is out of range 0..{nz}")
        else:
            end = h.data_offset + idx * h.section_nbytes
            compress = None
        old_size = stack.size_on_disk
        saved_end = min(old_size, h.data_offset + min(nz, idx + count) * h.section_nbytes)
        with open(path, "rb") as f:
            f.seek(end)
            # what is overwritten: plain sections, or what follows the chunks (our trailer)
            kept = saved_end - end if compress is None else min(old_size - end, KEEP_AFTER)
            saved = f.read(max(0, kept))
            f.seek(0)
            old_header = f.read(HEADER_BYTES)
        new_nz = max(nz, idx + count)
        raw = np.array(h.raw).copy()
        raw["nz"] = new_nz
        along = data_axes_cell(h.axis_order)[0]  # the cell axis sections run along (Z unless MAPS says)
        m_along = ("mx", "my", "mz")[along]
        if h.is_compressed or h.written_by == "python-mrcz":
            raw["cella"][along] = h.pixelsize[0] * new_nz
        elif (int(raw[m_along]) == nz and nz > 1 or int(h.raw["ispg"]) == 1
              or nz == 1 and sections.slices == 0):
            # A volume grows in z; so does a single image that arrays are appended
            # to, frame by frame: it reads back as one (n, ny, nx) array, as in python-mrcz.
            raw[m_along] = new_nz
            raw["cella"][along] = h.pixelsize[0] * new_nz
        raw["dmin"], raw["dmax"], raw["dmean"], raw["rms"] = 0.0, -1.0, -2.0, -1.0
    with open(path, "r+b", buffering=0) as f:
        try:
            f.seek(end)
            writer = _SectionWriter(f, h.file_dtype, h.mode % MRC_COMP_RATIO, compress, None,
                                    blosc_chunks.threads(n_threads))
            writer.write_all(sections, 0, count)
            if compress is not None:
                if old_sizes is not None:
                    _write_fully(f, chunk_trailer.encode(old_sizes + writer.chunk_sizes))
                raw["packedBytes"] = f.tell() - h.data_offset  # the chunks and their index, as written
                f.truncate(f.tell())
            os.fsync(f.fileno())  # the data is on disk before the header that points to it
            f.seek(0)
            f.write(raw.tobytes())
            os.fsync(f.fileno())
        except BaseException:
            f.seek(end)
            f.write(saved)
            f.truncate(old_size)
            f.seek(0)
            f.write(old_header)
            raise


def asyncWriteMRC(*args: Any, **kwargs: Any) -> Future:
    """Run :func:`writeMRC` in a background thread.

    Returns
    -------
    concurrent.futures.Future
        ``future.result()`` waits for the write (and re-raises its error).

    """
    return _asyncExecutor.submit(writeMRC, *args, **kwargs)


# ---------------------------------------------------------------------------
# Header dicts, as python-mrcz exposes them
# ---------------------------------------------------------------------------
def defaultHeader() -> dict:
    """A header dict with every field python-mrcz's ``writeMRCHeader`` reads.

    Returns
    -------
    dict
        Default values (as python-mrcz 0.6.0).

    """
    return {
        "fileConvention": "ccpem", "endian": "le", "MRCtype": 0,
        "dimensions": np.array([0, 0, 0], dtype=int), "dtype": "u1",
        "compressor": None, "backend": None, "packedBytes": 0, "clevel": 1,
        "maxImage": 1.0, "minImage": 0.0, "meanImage": 0.0,
        "pixelsize": 0.1, "pixelunits": "nm", "voltage": 300.0, "C3": 2.7, "gain": 1.0,
        "n_threads": blosc_chunks.DEFAULT_N_THREADS,
    }


def writeMRCHeader(f: BinaryIO, header: dict, slices: int, endchar: str = "<") -> int:
    """Write a header dict (as from :func:`defaultHeader` or ``meta``) to an open file.

    Parameters
    ----------
    f
        File open for binary writing; the header goes at offset 0, a JSON
        extended header (``header['meta']``) right after it.
    header
        The fields to write.
    slices
        z-sections per frame, stored in MZ.
    endchar
        ``'<'`` or ``'>'``.

    Returns
    -------
    int
        Bytes of JSON extended header written (0 if none).

    """
    dims = [int(n) for n in np.atleast_1d(header["dimensions"])]
    dims = [1] * (3 - len(dims)) + dims
    dtype_name = str(header["dtype"]).lower().strip("<>|=")
    if dtype_name not in REVERSE_CCPEM_ENUM:
        raise ValueError(f"unknown dtype for MRC: {header['dtype']}")
    mode = REVERSE_CCPEM_ENUM[dtype_name]
    compressor = header.get("compressor")
    if compressor:
        mode += MRC_COMP_RATIO * REVERSE_COMPRESSOR_ENUM[compressor.lower()]
    ext = _json_bytes(header.get("meta"))
    stats = (float(header.get("minImage", 0.0)), float(header.get("maxImage", 1.0)),
             float(header.get("meanImage", 0.0)), -1.0)
    f.seek(0)
    f.write(build_header(
        shape=tuple(dims), mode=mode, byteorder=endchar,
        pixelsize_A=_pixelsize_A(header.get("pixelsize", 0.1), header.get("pixelunits", "\\AA")),
        sampling=(slices, 0, 0), cell_sampling=tuple(dims), ispg=0, stats=stats,
        voltage=float(header.get("voltage", 0.0)), C3=float(header.get("C3", 0.0)),
        gain=float(header.get("gain", 1.0)), packed_bytes=int(header.get("packedBytes", 0) or 0),
        extended_bytes=len(ext), exttyp=b"json" if ext else b"", labels=[_label()]))
    f.write(ext)
    return len(ext)


def setDefaultThreads(n_threads: int) -> None:
    """Set the blosc thread count used when ``n_threads`` is not given.

    Parameters
    ----------
    n_threads
        Number of threads (the number of physical cores is usually best).

    """
    blosc_chunks.set_default_threads(n_threads)

