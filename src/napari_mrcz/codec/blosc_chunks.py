"""One blosc chunk per z-section: the chunk header, and compressing into / out of it.

A chunk starts with a 16-byte header (little-endian, the same fields in
c-blosc1's version-2 and c-blosc2's version-5 formats)::

    byte 0 version | 1 versionlz | 2 flags | 3 typesize
    4-7 nbytes (uncompressed) | 8-11 blocksize | 12-15 cbytes (whole chunk)

Version-2 chunks go through python-blosc (a required dependency), version-5
chunks through python-blosc2 (the optional ``blosc2`` extra), imported only
when a file needs it. c-blosc1 keeps its thread count and block size in global
state, so every call that sets and uses them holds ``_BLOSC_LOCK``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import struct
import threading
from collections.abc import Iterator
from typing import Any

import blosc
import numpy as np

from .header import REVERSE_COMPRESSOR_ENUM

BLOSC_PRESENT = True
BLOSC2_INSTALLED = importlib.util.find_spec("blosc2") is not None
#: Whether python-blosc2 may be used (python-mrcz's switch; see :func:`use_blosc2`).
BLOSC2_PRESENT = BLOSC2_INSTALLED
CAN_COMPRESS = BLOSC_PRESENT or BLOSC2_PRESENT

CHUNK_HEADER_BYTES = 16
#: What python-blosc and python-blosc2 raise for a chunk they cannot decode.
DECODE_ERRORS = (RuntimeError, ValueError, blosc.blosc_extension.error)
#: Largest chunk c-blosc1 can hold; a z-section beyond this cannot be compressed.
MAX_CHUNK_NBYTES = blosc.MAX_BUFFERSIZE
#: Chunk format version byte -> backend that reads it.
BACKEND_BY_VERSION = {2: "blosc1", 5: "blosc2"}
#: Compressors offered to users; blosc2-only ones need ``backend='blosc2'``.
BLOSC1_CODECS = frozenset(blosc.compressor_list())
#: Codecs c-blosc2 loads from a separately installed plugin package (blosc2-NAME).
BLOSC2_PLUGIN_CODECS = frozenset({"openhtj2k", "grok", "openzl", "j2k", "htj2k"})

blosc.set_releasegil(True)
DEFAULT_N_THREADS = blosc.detect_number_of_cores()
_BLOSC_LOCK = threading.Lock()
#: Set while a compression session holds _BLOSC_LOCK (see decompress_into).
_COMPRESSING = threading.Event()
_blosc2: Any = None


def use_blosc2(on: bool) -> None:
    """Allow (``True``) or forbid (``False``) python-blosc2 for decoding and writing.

    With it forbidden, version-2 chunks decode through python-blosc and
    version-5 chunks cannot be read, as in python-mrcz with its
    ``BLOSC2_PRESENT`` flag set to ``False``.

    Raises
    ------
    ImportError
        ``True`` while python-blosc2 is not installed.
    """
    global BLOSC2_PRESENT
    if on and not BLOSC2_INSTALLED:
        raise ImportError("python-blosc2 is not installed: pip install 'napari-mrcz[blosc2]'")
    BLOSC2_PRESENT = bool(on)


def _get_blosc2() -> Any:
    global _blosc2
    if not BLOSC2_PRESENT:
        raise ImportError(
            "this needs python-blosc2, which is not installed: pip install 'napari-mrcz[blosc2]'"
            if not BLOSC2_INSTALLED else "this needs python-blosc2, which is switched off "
            "(ioMRC.BLOSC2_PRESENT = False)")
    if _blosc2 is None:
        import blosc2

        blosc2.set_releasegil(True)
        _blosc2 = blosc2
    return _blosc2


def set_default_threads(n_threads: int) -> None:
    """Set the thread count used when ``n_threads`` is not given."""
    global DEFAULT_N_THREADS
    DEFAULT_N_THREADS = max(1, int(n_threads))


def threads(n_threads: int | None) -> int:
    """The thread count to use for one call."""
    return DEFAULT_N_THREADS if n_threads is None else max(1, int(n_threads))


def parse_chunk_header(head: bytes) -> tuple[int, int, int, int, int, int, int]:
    """(version, versionlz, flags, typesize, nbytes, blocksize, cbytes) of a chunk."""
    return struct.unpack("<BBBBIII", head[:CHUNK_HEADER_BYTES])


def chunk_problem(chunk: Any, nbytes: int) -> str | None:
    """What is structurally wrong with one chunk, or ``None`` if it is safe to decode.

    c-blosc2 trusts a chunk's block-offset table (``bstarts``): a corrupt entry
    makes it read outside the buffer and crash the process. So the table is
    checked here, for both formats, before any chunk reaches a decompressor.

    Parameters
    ----------
    chunk
        The whole chunk (its length must be its ``cbytes``).
    nbytes
        The uncompressed size the chunk must have.

    Returns
    -------
    str or None
        The problem, in words, or ``None``.
    """
    head = bytes(chunk[:32])
    version, _, flags, typesize, n, blocksize, cbytes = parse_chunk_header(head)
    if cbytes != len(chunk):
        return f"chunk header says {cbytes} bytes, the chunk has {len(chunk)}"
    if n != nbytes:
        return f"chunk holds {n} bytes, expected {nbytes}"
    if typesize == 0:
        return "chunk has typesize 0"
    if version == 5:
        if len(head) < 32:
            return "chunk shorter than a c-blosc2 header"
        special = (head[31] >> 4) & 0x7
        if special:
            return None if special in (1, 2, 3, 4) and cbytes <= 32 + typesize else "bad special chunk"
        overhead = 32
    else:
        overhead = CHUNK_HEADER_BYTES
    if flags & 0x02:  # stored without compression
        return None if cbytes == nbytes + overhead else "memcpyed chunk of the wrong size"
    if nbytes == 0:
        return None
    if not 0 < blocksize <= max(nbytes, 1) or blocksize % typesize and blocksize < nbytes:
        return f"chunk has an impossible block size {blocksize}"
    nblocks = -(-nbytes // blocksize)
    table_end = overhead + 4 * nblocks
    if table_end > cbytes:
        return f"chunk's table of {nblocks} blocks runs past its end"
    starts = np.frombuffer(chunk, dtype="<i4", count=nblocks, offset=overhead)
    if starts.size and (starts.min() < table_end or starts.max() >= cbytes):
        return "chunk's block offsets point outside it"
    return None


def resolve_backend(compressor: str | None, backend: str | None) -> str | None:
    """Pick the library that writes ``compressor``: blosc1 unless asked otherwise.

    Raises
    ------
    ValueError
        Unknown compressor, or a combination that cannot be written.

    """
    if compressor is None:
        return None
    if backend not in (None, "blosc1", "blosc2"):
        raise ValueError(f"backend must be None, 'blosc1' or 'blosc2', got {backend!r}")
    if compressor not in REVERSE_COMPRESSOR_ENUM or compressor is None:
        known = sorted(n for n in REVERSE_COMPRESSOR_ENUM if n)
        raise ValueError(f"Unknown compressor {compressor!r}, expected one of {known}")
    if backend == "blosc2":
        _get_blosc2()
        return "blosc2"
    if compressor in BLOSC1_CODECS:
        return "blosc1"
    if backend == "blosc1":
        raise ValueError(
            f"{compressor!r} is not available in c-blosc1 ({sorted(BLOSC1_CODECS)}); "
            "this codec needs backend='blosc2'")
    _get_blosc2()
    return "blosc2"


class Compressor:
    """Compresses the z-sections of one file, each into one chunk, several at once.

    python-blosc with ``set_releasegil(True)`` compresses through c-blosc1's
    context API, so worker threads may each compress a whole z-section (one
    blosc thread apiece) at the same time. That beats one section at a time
    with blosc's own threads, which c-blosc1 creates anew for every call.

    Parameters
    ----------
    cname
        blosc codec name.
    clevel
        0 to 9 (1 is fastest).
    typesize
        Bytes per sample, for the bit-shuffle filter.
    section_nbytes
        Bytes of one z-section.
    backend
        ``'blosc1'`` (version-2 chunks, readable everywhere) or ``'blosc2'``.
    n_threads
        How many sections are compressed at once.
    shuffle
        blosc's filter: ``'bitshuffle'`` (MRCZ's), ``'shuffle'`` or ``'noshuffle'`` (blosc1 only).

    """

    def __init__(self, cname: str, clevel: int, typesize: int, section_nbytes: int,
                 backend: str, n_threads: int, shuffle: str = "bitshuffle") -> None:
        if not 0 <= int(clevel) <= 9:
            raise ValueError(f"clevel must be between 0 and 9, got {clevel}")
        if section_nbytes > MAX_CHUNK_NBYTES:
            raise ValueError(
                f"one z-section is {section_nbytes} bytes; blosc chunks hold at most "
                f"{MAX_CHUNK_NBYTES} bytes")
        self.cname, self.clevel, self.typesize = cname, int(clevel), typesize
        self.backend, self.n_threads = backend, n_threads
        self.shuffle = {"bitshuffle": blosc.BITSHUFFLE, "shuffle": blosc.SHUFFLE,
                        "noshuffle": blosc.NOSHUFFLE}[shuffle]
        # zstd and zlib gain speed and ratio from long blocks, the LZ77 codecs
        # peak near 128 KiB (benchmarks/bench_codec.py; python-mrcz uses 64
        # KiB). Readers need no setting.
        preferred = 1 << 19 if cname in ("zstd", "zlib") else 1 << 17
        self.blocksize = int(max(1 << 12, min(preferred, section_nbytes)))
        self.blocksize -= self.blocksize % typesize

    @contextlib.contextmanager
    def session(self) -> Iterator[Compressor]:
        """Hold c-blosc1's global thread count and block size for this file's chunks."""
        if self.backend == "blosc2":
            yield self
            return
        with _BLOSC_LOCK:
            nthreads = blosc.set_nthreads(1)
            blosc.set_blocksize(self.blocksize)
            _COMPRESSING.set()
            try:
                yield self
            finally:
                _COMPRESSING.clear()
                blosc.set_blocksize(0)
                blosc.set_nthreads(nthreads)

    def __call__(self, section: np.ndarray) -> bytes:
        """Compress one C-contiguous z-section into one chunk (inside :meth:`session`)."""
        if self.backend == "blosc2":
            b2 = _get_blosc2()
            codec = getattr(b2.Codec, self.cname.upper())
            try:
                return b2.compress2(section, codec=codec, clevel=self.clevel,
                                    filter=b2.Filter.BITSHUFFLE, typesize=self.typesize,
                                    blocksize=self.blocksize, nthreads=1)
            except RuntimeError as exc:
                hint = (f"; codec {self.cname!r} is a c-blosc2 plugin: install the "
                        f"blosc2-{self.cname} package" if self.cname in BLOSC2_PLUGIN_CODECS else "")
                raise RuntimeError(f"blosc2 could not compress with {self.cname!r}: {exc}{hint}") from exc
        return blosc.compress_ptr(section.ctypes.data, section.size, self.typesize,
                                  clevel=self.clevel, shuffle=self.shuffle, cname=self.cname)


def warm() -> None:
    """Import python-blosc2 now (about 0.2 s), where installed, so later decodes use it."""
    if BLOSC2_PRESENT:
        _get_blosc2()


def decompress_into(chunk: Any, out: np.ndarray, version: int, n_threads: int) -> None:
    """Decompress one chunk into the C-contiguous array ``out`` (exactly its size).

    Version-5 chunks need python-blosc2. Version-2 chunks go through python-blosc2
    once it is loaded (it decodes them faster; :func:`warm` loads it), through
    python-blosc (always loaded) until then, so that showing one frame never
    waits for an import.

    Raises
    ------
    RuntimeError
        blosc rejected the chunk (the caller adds the file name).
    """
    if version != 2 or (_blosc2 is not None and BLOSC2_PRESENT):
        # decompress2: its own context (no shared thread setting) and, unlike decompress,
        # the GIL released, so a background decode never stalls the viewer's thread.
        _get_blosc2().decompress2(chunk, dst=out.reshape(-1).view(np.uint8), nthreads=n_threads)
        return
    if _COMPRESSING.is_set():
        # A file is being written (maybe from this very source: the writer waits for
        # this section), and holds the lock: decode through the thread-safe context
        # API with the session's one thread, without the lock.
        blosc.decompress_ptr(chunk, out.ctypes.data)
        return
    with _BLOSC_LOCK:
        blosc.set_nthreads(n_threads)
        blosc.decompress_ptr(chunk, out.ctypes.data)
