"""How large a file would be: one z-section compressed as the writer compresses it.

The napari dock widget shows the size on disk and the ratio a save would give
for its settings (compressor, clevel, precision) from one section, measured
here: the section is stored as the writer stores it (its MRC type, rounded as
:func:`~napari_mrcz.codec.mrc.writeMRC` rounds it for ``keepbits``) and
compressed into one blosc chunk with the same block size and bit-shuffle.
A section larger than :data:`SAMPLE_BYTES` (a 4k x 4k float32 frame, a
montage) is measured on :data:`BANDS` bands of whole rows spread over it
(blosc compresses blocks of at most 512 KiB independently anyway), so that
zlib at level 9 answers in seconds, not minutes. No napari or Qt here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import blosc_chunks
from .export import stored_dtype
from .header import HEADER_BYTES  # MRCZ's JSON metadata after it is not counted: it is small
from .precision import auto_keepbits, check_keepbits, round_mantissa

#: Sections up to this many bytes (in the file's type) are compressed whole; larger ones in part.
SAMPLE_BYTES = 8 << 20
#: Bands of rows a larger section is measured on, evenly spread from its top to its bottom.
BANDS = 8


@dataclass(frozen=True)
class SectionEstimate:
    """One z-section as a save would store it.

    Attributes
    ----------
    raw
        Its bytes in the file's type, uncompressed.
    packed
        Its bytes on disk: the compressed chunk (``raw`` for plain MRC).
    keepbits
        The mantissa bits kept (the bits chosen, for ``'auto'``); ``None``: lossless.
    fraction
        The share of the section compressed (1.0: all of it; ``packed`` is
        then scaled up from the bands measured).
    """

    raw: int
    packed: int
    keepbits: int | None
    fraction: float = 1.0

    def file_size(self, n: int) -> int:
        """The size on disk of a file of ``n`` such sections (with its header).

        Parameters
        ----------
        n
            How many z-sections the file has.

        Returns
        -------
        int
            Bytes.
        """
        return HEADER_BYTES + int(n) * self.packed

    def ratio(self, n: int) -> float:
        """Uncompressed over on-disk size of a file of ``n`` such sections, as the File section shows it.

        Parameters
        ----------
        n
            How many z-sections the file has.

        Returns
        -------
        float
            The compression ratio.
        """
        return int(n) * self.raw / self.file_size(n)


def estimate_section(section: Any, compressor: str | None, clevel: int = 1,
                     keepbits: int | str | None = None, max_error: float = 0.01,
                     backend: str | None = None) -> SectionEstimate:
    """Store and compress one z-section as a save with these settings would.

    Parameters
    ----------
    section
        A 2D array-like (one z-section or frame); left unchanged.
    compressor
        blosc codec name (``'zstd'``, ``'lz4'`` ...); ``None``: plain MRC, nothing compressed.
    clevel
        Compression level, 1 to 9.
    keepbits
        ``None`` (lossless), a count of mantissa bits, or ``'auto'`` (the
        fewest bits whose RMS error is at most ``max_error`` x the noise).
    max_error
        For ``'auto'``: the error allowed, as a fraction of the section's noise level.
    backend
        ``'blosc1'`` or ``'blosc2'`` chunks (default as the writer's).

    Returns
    -------
    SectionEstimate
        Its raw and compressed sizes and the bits kept.

    Raises
    ------
    ValueError
        ``keepbits`` for integer data or out of range; an unknown compressor;
        a section larger than a blosc chunk holds.
    TypeError
        A type MRC cannot store.
    """
    given = np.asarray(section)
    if given.ndim < 2:
        given = given.reshape(1, -1)
    dtype = stored_dtype(given.dtype)
    raw = int(given.size) * dtype.itemsize
    kept = None
    if keepbits is not None:
        check_keepbits(keepbits, dtype)
        kept = (auto_keepbits(np.asarray(given, dtype=dtype), max_error) if keepbits == "auto"
                else int(keepbits))
    if compressor is None:
        return SectionEstimate(raw, raw, kept)
    rows = _sample_rows(given.reshape(-1, given.shape[-1]), dtype)
    values = np.array(rows, dtype=dtype, order="C", copy=True)
    if kept is not None:
        round_mantissa(values, kept)
    backend = blosc_chunks.resolve_backend(compressor, backend)
    compress = blosc_chunks.Compressor(compressor, clevel, dtype.itemsize, raw, backend, 1)
    with compress.session():
        chunk = compress(values)
    fraction = values.nbytes / raw
    return SectionEstimate(raw, int(round(len(chunk) / fraction)), kept, fraction)


def _sample_rows(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """All the rows, or :data:`BANDS` bands of them spread evenly, :data:`SAMPLE_BYTES` in all."""
    row_bytes = rows.shape[1] * dtype.itemsize
    if rows.shape[0] * row_bytes <= SAMPLE_BYTES:
        return rows
    per_band = max(1, SAMPLE_BYTES // (BANDS * row_bytes))
    starts = np.linspace(0, rows.shape[0] - per_band, BANDS).astype(int)
    return np.concatenate([rows[s:s + per_band] for s in starts])
