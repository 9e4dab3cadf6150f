"""Precision-aware MRCZ: float mantissas rounded to the bits that hold information.

The low mantissa bits of a noisy float32 tomogram, map or average are noise
on top of noise. Rounding each value to its ``keepbits`` leading mantissa
bits, to the nearest value with ties to even (IEEE rounding, as numcodecs'
``BitRound``), leaves ordinary float32 (or float16, or complex64) values
whose trailing bits are zero: blosc's bit-shuffle then finds long runs of
zeros. Every MRCZ reader reads the file unchanged.

Nothing here is on by default: rounding is lossy, so it is asked for
(``writeMRC(keepbits=...)``), recorded in the file (:func:`record`) and
labelled.

``keepbits='auto'`` picks, for each section, the fewest bits whose RMS
rounding error is at most ``max_error`` times the section's noise level.
The noise level is estimated from the differences of neighbouring pixels
along x and along y (the smaller of the two): for white noise of SD sigma
they have SD sigma * sqrt(2), and a signal that varies slowly from one pixel
to the next adds little to them. Their median absolute deviation (x 1.4826 /
sqrt(2)) is that SD, robust to edges and hot pixels. Where neighbouring noise
is correlated (a low-passed map), the estimate is lower than the noise, so
more bits are kept. A signal that changes from pixel to pixel as much as the
noise in both directions (a lattice at Nyquist) raises the estimate, and the
error can then exceed ``max_error`` of the real noise: such data wants a fixed
``keepbits`` or none.

The choice is made on a regular subsample of each section (bisection on
:data:`SAMPLE` values), then checked on the whole section: against the
estimated noise level, the bound holds for every section.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Mantissa bits of each float type (of a complex value's parts).
MANTISSA_BITS = {"float32": 23, "float16": 10, "complex64": 23}
#: The JSON metadata key of what rounding a file had.
PRECISION_KEY = "napari_mrcz_precision"
#: Values rounded at a time: 256 KB of float32, whose passes stay in the CPU's cache.
STRIP = 1 << 16
#: Values of a section the automatic choice measures (a regular subsample).
SAMPLE = 1 << 13
_UINT = {4: np.uint32, 2: np.uint16}


def mantissa_bits(dtype: Any) -> int:
    """The mantissa bits of a float (or complex) type.

    Raises
    ------
    ValueError
        Integer and other types: they are lossless already.
    """
    name = np.dtype(dtype).name
    if name not in MANTISSA_BITS:
        raise ValueError(f"keepbits rounds float mantissas (float32, float16, complex64); {name} data is "
                         "stored exactly already")
    return MANTISSA_BITS[name]


def check_keepbits(keepbits: int | str | None, dtype: Any) -> None:
    """Refuse a ``keepbits`` that does not fit ``dtype`` (an integer type, a count out of range)."""
    if keepbits is None:
        return
    bits = mantissa_bits(dtype)
    if keepbits == "auto":
        return
    if isinstance(keepbits, bool) or not isinstance(keepbits, (int, np.integer)) or not 0 <= keepbits <= bits:
        raise ValueError(f"keepbits must be 'auto' or a whole number from 0 to {bits} for "
                         f"{np.dtype(dtype).name} data, got {keepbits!r}")


def _floats(values: np.ndarray) -> np.ndarray:
    """A flat float view of ``values`` (a complex value's parts side by side)."""
    flat = values.reshape(-1)
    if flat.dtype.kind == "c":
        flat = flat.view(np.float32 if flat.dtype.itemsize == 8 else np.float64)
    return flat


def round_mantissa(values: np.ndarray, keepbits: int, out: np.ndarray | None = None) -> None:
    """Round float ``values`` to ``keepbits`` mantissa bits, to nearest, ties to even.

    In place, or into ``out`` (of the same shape and type) where given.

    NaN stays NaN (its payload as it was); ±inf, ±0 and subnormals are
    rounded as IEEE rounding does (the largest values may round to inf, as
    they would in a narrower type). Works in strips of :data:`STRIP` values,
    small enough that the few passes of one strip stay in the CPU's cache,
    with no float64 copy. ``values`` (and ``out``, of the same shape and
    type) must be C-contiguous, and writable where written; complex values
    round each part.
    """
    src = _floats(values)
    dst = src if out is None else _floats(out)
    bits = mantissa_bits(src.dtype)
    drop = bits - int(keepbits)
    if drop <= 0:
        if dst is not src:
            dst[...] = src
        return
    word = _UINT[src.dtype.itemsize]
    half = word((1 << (drop - 1)) - 1)
    mask = word(~((1 << drop) - 1) & ((1 << (8 * src.dtype.itemsize)) - 1))
    shift, one = word(drop), word(1)
    tie = np.empty(min(STRIP, src.size), dtype=word)
    for start in range(0, src.size, STRIP):
        strip = src[start:start + STRIP]
        u, d, t = strip.view(word), dst[start:start + STRIP].view(word), tie[:strip.size]
        nan = np.isnan(strip) if np.isnan(strip.max()) else None  # max is NaN where any value is
        saved = u[nan] if nan is not None else None
        np.right_shift(u, shift, out=t)
        np.bitwise_and(t, one, out=t)
        np.add(t, half, out=t)
        np.add(u, t, out=d)
        np.bitwise_and(d, mask, out=d)
        if saved is not None:
            d[nan] = saved


def noise_level(section: np.ndarray) -> float:
    """The SD of a section's pixel-to-pixel noise (see the module's notes); 0 for a constant section."""
    values = section.reshape(-1, section.shape[-1]) if section.ndim >= 2 else section.reshape(1, -1)
    if np.iscomplexobj(values):
        values = np.concatenate([values.real, values.imag])
    rows = values[:: max(1, values.shape[0] // 8)]  # ~8 rows: some 10^4 differences, enough
    levels = [_mad_sd(np.diff(rows.astype(np.float32, copy=False), axis=-1))]
    if values.shape[0] > 1:  # and along y, in ~8 columns: the smaller of the two (a pattern in x or y)
        columns = values[:, :: max(1, values.shape[1] // 8)]
        levels.append(_mad_sd(np.diff(columns.astype(np.float32, copy=False), axis=0)))
    found = [v for v in levels if v is not None]
    return min(found) if found else 0.0


def _mad_sd(diffs: np.ndarray) -> float | None:
    """The SD of the noise behind neighbours' differences (MAD x 1.4826 / sqrt 2); ``None``: none finite."""
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return None
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    if mad == 0.0:  # more than half the differences are equal (counts, masks): the mean deviation
        mad = float(np.mean(np.abs(diffs - np.median(diffs)))) / 1.2533
    return 1.4826 * mad / np.sqrt(2.0)


def auto_keepbits(section: np.ndarray, max_error: float, out: np.ndarray | None = None) -> int:
    """The fewest mantissa bits whose RMS rounding error is at most ``max_error`` x the noise level.

    Chosen by bisection on a regular subsample of :data:`SAMPLE` values, then
    checked on the whole section: one more bit while its RMS error exceeds
    the bound. ``out`` (C-contiguous, of the section's shape and type), where
    given, receives the section rounded to the bits returned.
    """
    section = np.ascontiguousarray(section)
    bits = mantissa_bits(section.dtype)
    allowed = float(max_error) * noise_level(section)
    kept = _sample_keepbits(section, allowed, bits)
    out = np.empty_like(section) if out is None else out
    round_mantissa(section, kept, out=out)
    # the bound, with room (0.1 %) for the float32 sums' own rounding
    while kept < bits and not rms_error(out, section) * 1.001 <= allowed:
        kept += 1
        round_mantissa(section, kept, out=out)
    return kept


def _sample_keepbits(section: np.ndarray, allowed: float, bits: int) -> int:
    """The fewest bits within ``allowed`` RMS error on the section's regular subsample."""
    flat = _floats(section)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // SAMPLE)])
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return bits
    exact = sample.astype(np.float64)
    trial = np.empty_like(sample)
    lo, hi = 0, bits  # the error falls as bits are kept: the fewest that pass, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        round_mantissa(sample, mid, out=trial)
        with np.errstate(over="ignore", invalid="ignore"):
            rms = float(np.sqrt(np.mean(np.square(trial.astype(np.float64) - exact))))
        if np.isfinite(rms) and rms <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return lo


def rms_error(rounded: np.ndarray, exact: np.ndarray) -> float:
    """The RMS of ``rounded - exact`` over the finite values of ``exact``, in strips (no float64 copy).

    A rounding error is exact in the type itself (the dropped bits); a value
    rounded to inf makes it inf.
    """
    got, want = _floats(np.ascontiguousarray(rounded)), _floats(np.ascontiguousarray(exact))
    total, count = 0.0, 0
    d = np.empty(min(STRIP, want.size), dtype=want.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, want.size, STRIP):
            e, g = want[start:start + STRIP], got[start:start + STRIP]
            diff = d[:e.size]
            np.subtract(g, e, out=diff)
            part = float(np.dot(diff, diff))  # a float32 sum (BLAS): about 1e-7 relative here
            if np.isfinite(part):
                total, count = total + part, count + e.size
                continue
            finite = np.isfinite(e)  # NaN and inf in the data are not errors; inf from rounding is
            rest = np.square(g[finite].astype(np.float64) - e[finite])
            total, count = total + float(rest.sum()), count + int(finite.sum())
    return float(np.sqrt(total / count)) if count else 0.0


class Rounding:
    """What a write rounds: one ``keepbits`` for every section, or ``'auto'`` per section.

    :meth:`apply` rounds a section (a copy of it: the caller's data is never
    changed) and notes the bits kept; :meth:`record` is what the file's JSON
    metadata keeps.
    """

    def __init__(self, keepbits: int | str, max_error: float, dtype: Any, n: int) -> None:
        check_keepbits(keepbits, dtype)
        if keepbits == "auto" and not (isinstance(max_error, (int, float)) and np.isfinite(max_error)
                                       and max_error > 0):
            raise ValueError(f"max_error must be a positive fraction of the noise level, got {max_error!r}")
        self.keepbits, self.max_error, self.n = keepbits, float(max_error), n
        self.bits = mantissa_bits(dtype)
        self.kept: dict[int, int] = {}

    def apply(self, i: int, section: np.ndarray) -> np.ndarray:
        """Section ``i`` rounded (a new array).

        For ``'auto'``, see :func:`auto_keepbits`: the bound holds for every
        section.
        """
        section = np.ascontiguousarray(section)
        out = np.empty_like(section, order="C")
        if self.keepbits != "auto":
            bits = int(self.keepbits)
            round_mantissa(section, bits, out=out)
        else:
            bits = auto_keepbits(section, self.max_error, out=out)
        self.kept[i] = bits
        return out

    def record(self) -> dict[str, Any]:
        """The JSON record: bits kept (per section for 'auto'), ``max_error`` for 'auto', the type's bits."""
        if self.keepbits == "auto":
            kept: Any = [self.kept.get(i, self.bits) for i in range(self.n)]
            return {"lossy": True, "keepbits": kept, "max_error": self.max_error, "mantissa_bits": self.bits}
        return {"lossy": True, "keepbits": int(self.keepbits), "mantissa_bits": self.bits}

    def placeholder(self) -> dict[str, Any]:
        """A record at least as long in JSON as :meth:`record` will be (space kept for it up front)."""
        if self.keepbits == "auto":
            return {**self.record(), "keepbits": [self.bits] * self.n}
        return self.record()

    def label(self) -> str:
        """The MRC label line that says the file is lossy."""
        if self.keepbits == "auto":
            values = list(self.kept.values()) or [self.bits]
            kept = f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"
            return (f"lossy: float mantissas rounded to {kept} of {self.bits} bits "
                    f"(auto, max_error {self.max_error:g})")
        return f"lossy: float mantissas rounded to {int(self.keepbits)} of {self.bits} bits"


def describe(record: Any) -> str | None:
    """"lossy: N mantissa bits" (a range for 'auto') from a file's record, or ``None`` if it has none."""
    if not isinstance(record, dict) or not record.get("lossy"):
        return None
    kept = record.get("keepbits")
    if isinstance(kept, list) and kept:
        lo, hi = min(kept), max(kept)
        text = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"lossy: {text} mantissa bits (auto, max_error {record.get('max_error')})"
    return f"lossy: {kept} mantissa bits"
