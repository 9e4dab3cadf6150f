"""Random access to the z-sections of one MRC or MRCZ file.

:class:`MRCStack` opens a file, reads its header and serves any range of
z-sections: by positioned reads straight into the caller's array for plain
MRC, and by decompressing only the chunks asked for in MRCZ. The chunk index
is built lazily, 16 bytes per chunk, so frames a..b of a 40 GB MRCZ cost a
walk over chunk headers and those frames' chunks only (:mod:`.chunk_index`;
for a URL, walked in the background after open and kept for the next open).
Positioned reads
(:mod:`.positioned`) keep one open stack safe to use from several threads.

``.gz`` and ``.bz2`` files are decompressed into memory when opened. A URL
(``https://``, ``s3://``) is read by Range requests (:mod:`.remote`); a
compressed one is streamed into memory, up to :data:`.remote.WHOLE_OBJECT_LIMIT`.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import blosc_chunks, journal
from .chunk_index import ChunkIndex
from .errors import MRCFileError, TruncatedFileError
from .extended import ExtendedHeader, read_extended
from .header import HEADER_BYTES, MODE_UINT4, MRCHeader, MRCHeaderWarning, parse_header
from .positioned import PositionedFile, open_positioned
from .remote import WHOLE_OBJECT_LIMIT, RemoteFile, RemoteFileError, is_url

_READ_PIECE = 1 << 24


class _MemorySource:
    """A gzip/bzip2 file, decompressed whole into memory."""

    generation = 0  # never replaced under us: the bytes are ours

    def __init__(self, path: str, opener: Any, stream: Any = None, limit: int | None = None) -> None:
        self.path = path
        pieces, total = [], 0
        try:
            with opener(path if stream is None else stream, "rb") as f:
                while piece := f.read(_READ_PIECE):
                    pieces.append(piece)
                    total += len(piece)
                    if limit is not None and total > limit:
                        raise MRCFileError(path, f"decompresses to more than {limit / 2**30:g} GiB: too "
                                                 "large to read at random over the network; download it")
        except (RemoteFileError, MRCFileError):
            raise  # the network's failure, or too large: not a damaged file
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            raise MRCFileError(path, f"cannot decompress: {exc}") from exc
        self.data = memoryview(b"".join(pieces))
        self.size = len(self.data)

    def pread(self, offset: int, n: int) -> bytes:
        return bytes(self.data[offset:offset + n])

    def readinto(self, offset: int, buf: memoryview) -> int:
        piece = self.data[offset:offset + len(buf)]
        buf[:len(piece)] = piece
        return len(piece)

    @contextlib.contextmanager
    def view(self, offset: int, n: int) -> Iterator[memoryview]:
        yield self.data[offset:offset + n]

    def in_use(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


def _open_source(path: str) -> PositionedFile | RemoteFile | _MemorySource:
    src = open_positioned(path)
    magic = src.pread(0, 3)
    opener = gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic == b"BZh" else None
    if opener is None:
        return src
    if not isinstance(src, RemoteFile):
        src.close()
        return _MemorySource(path, opener)
    try:
        if src.size > WHOLE_OBJECT_LIMIT:
            raise MRCFileError(path, f"a compressed file of {src.size / 2**30:.1f} GiB is too large to read "
                                     "at random over the network; download it")
        memory = _MemorySource(path, opener, stream=src.stream(), limit=WHOLE_OBJECT_LIMIT)
    finally:
        src.close()
    memory.stored_size = src.size  # what size_on_disk says: the object's size on the server
    memory.remote = src  # its URL, version and what was fetched (ImageSource.remote)
    return memory


class MRCStack:
    """An open MRC/MRCZ file, read one z-section range at a time.

    Parameters
    ----------
    path
        The file (``.gz``/``.bz2`` compressed files too).
    fileConvention
        ``'ccpem'`` or ``'eman2'``.
    slices
        Override of the slices-per-frame the header implies.
    n_threads
        Threads for blosc decompression (default: all cores).
    background_index
        For the URL of an MRCZ file: walk the chunk headers in a background
        thread from open on, unless a saved index of this version of the
        file was loaded (see :mod:`.chunk_index`). ``False`` for a file read
        once and closed (readers still walk as far as they need).

    Attributes
    ----------
    header : MRCHeader
        The interpreted header.
    shape : tuple of int
        (nz, ny, nx) of the decoded data.
    dtype : numpy.dtype
        Type of the decoded data, in the file's byte order.

    """

    def __init__(self, path: str | os.PathLike, *, fileConvention: str = "ccpem",
                 slices: int | None = None, n_threads: int | None = None,
                 background_index: bool = True) -> None:
        self.path = os.fspath(path)
        remote = is_url(self.path)
        recovered = None if remote else journal.recover(self.path)  # an interrupted header edit first
        if recovered:
            warnings.warn(recovered, MRCHeaderWarning, stacklevel=2)
        try:
            self._src = _open_source(self.path)
        except OSError as exc:  # Windows says PermissionError where POSIX says IsADirectoryError
            if not remote and os.path.isdir(self.path):
                raise MRCFileError(self.path, "is a directory, not an MRC file") from exc
            raise
        self._conventions = dict(fileConvention=fileConvention, slices=slices)
        try:
            self._read_header()
        except BaseException:
            self._src.close()
            raise
        self.shape = self.header.shape
        self.dtype = self.header.dtype
        self.n_threads = n_threads
        self._index_lock = threading.Lock()
        self._index.start(walk=background_index)

    def _read_header(self) -> None:
        self.header: MRCHeader = parse_header(
            self._src.pread(0, HEADER_BYTES), self.path, self._src.size,
            read_extended=self._src.pread, **self._conventions)
        self._generation = self._src.generation
        self._index = ChunkIndex(self._src, self.path, self.header)
        self._extended: ExtendedHeader | None = None

    def _follow_replacement(self) -> None:
        """Read the header again if the file was replaced, and reopened, since it was read.

        That happens where open files cannot be renamed over (Windows): a save
        over this very file closes it for the rename, and the next read opens
        the new file (see :func:`.positioned.released`). Its values are the
        same; its layout, compression or data type may not be.
        """
        if self._src.generation == self._generation:
            return
        with self._index_lock:
            if self._src.generation == self._generation:
                return
            self._index.close()
            self._read_header()
        if self.header.shape != self.shape:
            raise MRCFileError(self.path, f"the file was replaced by one of shape {self.header.shape} while "
                                          f"open with shape {self.shape}: open it again")

    # -- life cycle -------------------------------------------------------
    def close(self) -> None:
        """Stop the background walk of the chunk headers, if any, and release the file."""
        self._index.close()
        self._src.close()

    def __enter__(self) -> MRCStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size_on_disk(self) -> int:
        """Bytes of the file as stored (on the server, for a URL)."""
        if is_url(self.path):
            return getattr(self._src, "stored_size", self._src.size)
        try:
            return os.stat(self.path).st_size
        except OSError:
            return self._src.size

    # -- the chunk index (MRCZ) ---------------------------------------------
    def _index_to(self, i: int) -> None:
        """Walk chunk headers until the span of chunk ``i`` is known and checked."""
        self._index.ensure(i)

    def chunk_span(self, i: int) -> tuple[int, int, int]:
        """(offset, compressed bytes, format version) of the chunk of z-section ``i``."""
        return self._index.span(i)

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for the background walk of a URL's chunk headers to end; whether every chunk is indexed.

        Parameters
        ----------
        timeout
            Seconds to wait at most (default: until it ends).

        Returns
        -------
        bool
            True once every chunk's span is known (at once for an index loaded
            from the cache; always False for a file on disk whose chunks were
            not all read: it has no background walk to wait for).
        """
        return self._index.wait(timeout)

    @property
    def blosc_format(self) -> int | None:
        """1 or 2: the c-blosc generation of the first chunk (None if uncompressed)."""
        if not self.header.is_compressed:
            return None
        version = self.chunk_span(0)[2]
        return 1 if version == 2 else 2

    @property
    def extended_header(self) -> ExtendedHeader:
        """The decoded extended header (FEI1/FEI2 and SerialEM per-section records); read once."""
        if self._extended is None:
            self._extended = read_extended(self.header, self._src.pread)
        return self._extended

    def meta(self, pixelunits: str = "\\AA") -> dict:
        """python-mrcz's ``meta`` for this file, and ``'extendedHeader'`` where it has per-section records.

        ``meta['extendedHeader']`` (a key python-mrcz does not use) is
        :meth:`ExtendedHeader.as_meta`: its type and one array per field.
        """
        meta = self.header.to_meta(pixelunits)
        if self.header.extended_bytes and self.extended_header.kind not in ("", "json"):
            meta["extendedHeader"] = self.extended_header.as_meta()
        if self.header.is_compressed:
            fmt = self.blosc_format
            meta["bloscFormat"] = fmt
            meta["backend"] = f"blosc{fmt}"
        return meta

    # -- reading -----------------------------------------------------------
    def _check_range(self, start: int, stop: int) -> None:
        nz = self.shape[0]
        if not 0 <= start <= stop <= nz:
            raise MRCFileError(self.path, f"z-sections {start}:{stop} are out of range 0:{nz}")

    def _decode_plain(self, start: int, stop: int, out: np.ndarray) -> None:
        h = self.header
        offset = h.data_offset + start * h.section_nbytes
        if h.is_packed:
            packed = np.empty(((stop - start) * h.section_nbytes,), dtype=np.uint8)
            self._read_exact(offset, packed)
            _unpack(h, packed, out)
        else:
            self._read_exact(offset, out)

    def _read_exact(self, offset: int, buf: np.ndarray) -> None:
        view = memoryview(buf.reshape(-1).view(np.uint8))
        got = self._src.readinto(offset, view)
        if got < len(view):
            raise TruncatedFileError(
                self.path, f"file is truncated: {len(view) - got} bytes missing at byte {offset + got}")

    def _decompress(self, i: int, chunk: Any, out: np.ndarray, version: int, n_threads: int) -> None:
        problem = blosc_chunks.chunk_problem(chunk, out.nbytes)
        if problem is not None:
            raise MRCFileError(self.path, f"z-section {i}: damaged blosc chunk ({problem})")
        try:
            blosc_chunks.decompress_into(chunk, out, version, n_threads)
        except ImportError as exc:
            raise MRCFileError(self.path, f"z-section {i}: its c-blosc2 (version {version}) chunk "
                                          f"cannot be decoded: {exc}") from exc
        except blosc_chunks.DECODE_ERRORS as exc:
            raise MRCFileError(
                self.path, f"z-section {i}: blosc cannot decompress its chunk ({exc})") from exc

    def read(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None,
             n_threads: int | None = None) -> np.ndarray:
        """Decode z-sections ``start:stop`` into a (stop - start, ny, nx) array.

        Parameters
        ----------
        start, stop
            Range of z-sections (``stop`` exclusive, default: to the end).
        out
            C-contiguous array of the right shape and dtype to fill.
        n_threads
            Decompression threads for this call (default: the stack's).

        Raises
        ------
        MRCFileError
            A chunk is damaged; the message names the file and the z-section.

        """
        stop = self.shape[0] if stop is None else stop
        self._check_range(start, stop)
        with self._src.in_use():
            self._follow_replacement()
            if self.header.dtype == self.dtype:
                return self._read(start, stop, out, n_threads)
            # Replaced by a file of another type (a save widened uint8): same values, our type.
            decoded = self._read(start, stop, None, n_threads)
        if out is None:
            return decoded.astype(self.dtype)
        out[...] = decoded
        return out

    def _read(self, start: int, stop: int, out: np.ndarray | None, n_threads: int | None) -> np.ndarray:
        _, ny, nx = self.shape
        if self.header.is_compressed and stop > start:
            # Every chunk header states its decoded size: check them all before
            # allocating what the file header claims (a hostile one claims terabytes).
            self._index_to(stop - 1)
        if out is None:
            out = np.empty((stop - start, ny, nx), dtype=self.header.dtype)
        if stop == start:
            return out
        if not self.header.is_compressed:
            self._decode_plain(start, stop, out)
            return out
        n_threads = blosc_chunks.threads(self.n_threads if n_threads is None else n_threads)
        if stop - start > 1:
            blosc_chunks.warm()  # the faster decoder pays for its import on a stack
        for i in range(start, stop):
            while True:  # twice at most: a saved index that proves wrong is dropped and walked again
                span = self.chunk_span(i)
                with self._src.view(span[0], span[1]) as chunk:
                    if self._index.confirm(i, span, chunk):
                        self._decompress(i, chunk, out[i - start], span[2], n_threads)
                        break
        return out

    def memmap(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Memory-map z-sections ``start:stop`` of a plain (uncompressed) file, copy-on-write."""
        h = self.header
        stop = self.shape[0] if stop is None else stop
        self._check_range(start, stop)
        if h.is_compressed or not isinstance(self._src, PositionedFile) or h.is_packed:
            return self.read(start, stop)
        return np.memmap(self.path, dtype=h.dtype, mode="c",
                         offset=h.data_offset + start * h.section_nbytes,
                         shape=(stop - start, self.shape[1], self.shape[2]))


def _unpack(h: MRCHeader, packed: np.ndarray, out: np.ndarray) -> None:
    """Decode uint4 (two pixels a byte, low nibble first) or complex int16 sections."""
    nz, ny, nx = out.shape
    if h.mode == MODE_UINT4:
        rows = packed.reshape(nz, ny, (nx + 1) // 2)
        out[:, :, 0::2] = rows[:, :, : (nx + 1) // 2] & 0x0F
        out[:, :, 1::2] = rows[:, :, : nx // 2] >> 4
    else:
        pairs = packed.view(h.file_dtype).reshape(nz, ny, nx, 2)
        out.real = pairs[..., 0]
        out.imag = pairs[..., 1]
