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
#: Values rounded at a time: bounds the temporaries of one rounding.
STRIP = 1 << 20
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


def round_mantissa(values: np.ndarray, keepbits: int) -> None:
    """Round float ``values`` in place to ``keepbits`` mantissa bits, to nearest, ties to even.

    NaN stays NaN (its payload as it was); ±inf, ±0 and subnormals are
    rounded as IEEE rounding does (the largest values may round to inf, as
    they would in a narrower type). Works in strips of :data:`STRIP` values,
    with no float64 copy. ``values`` must be writable and C-contiguous;
    complex values round each part.
    """
    flat = values.reshape(-1)
    if flat.dtype.kind == "c":
        flat = flat.view(np.float32 if flat.dtype.itemsize == 8 else np.float64)
    bits = mantissa_bits(flat.dtype)
    drop = bits - int(keepbits)
    if drop <= 0:
        return
    word = _UINT[flat.dtype.itemsize]
    half = word((1 << (drop - 1)) - 1)
    mask = word(~((1 << drop) - 1) & ((1 << (8 * flat.dtype.itemsize)) - 1))
    shift, one = word(drop), word(1)
    for start in range(0, flat.size, STRIP):
        strip = flat[start:start + STRIP]
        u = strip.view(word)
        nan = np.isnan(strip)
        saved = u[nan] if nan.any() else None
        tie = np.right_shift(u, shift)
        np.bitwise_and(tie, one, out=tie)
        np.add(tie, half, out=tie)
        np.add(u, tie, out=u)
        np.bitwise_and(u, mask, out=u)
        if saved is not None:
            u[nan] = saved


def noise_level(section: np.ndarray) -> float:
    """The SD of a section's pixel-to-pixel noise (see the module's notes); 0 for a constant section."""
    values = section.reshape(-1, section.shape[-1]) if section.ndim >= 2 else section.reshape(1, -1)
    if np.iscomplexobj(values):
        values = np.concatenate([values.real, values.imag])
    rows = values[:: max(1, values.shape[0] // 16)]  # ~16 rows: some 10^4 differences, enough
    levels = [_mad_sd(np.diff(rows.astype(np.float32, copy=False), axis=-1))]
    if values.shape[0] > 1:  # and along y, in ~16 columns: the smaller of the two (a pattern in x or y)
        columns = values[:, :: max(1, values.shape[1] // 16)]
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


def auto_keepbits(section: np.ndarray, max_error: float) -> int:
    """The fewest mantissa bits whose RMS rounding error is at most ``max_error`` x the noise level."""
    bits = mantissa_bits(section.dtype)
    flat = section.reshape(-1)
    sample = np.ascontiguousarray(flat[:: max(1, flat.size // SAMPLE)])
    if np.iscomplexobj(sample):
        sample = sample.view(np.float32 if sample.dtype.itemsize == 8 else np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return bits
    allowed = float(max_error) * noise_level(section)
    exact = sample.astype(np.float64)
    lo, hi = 0, bits  # the error falls as bits are kept: the fewest that pass, by bisection
    while lo < hi:
        mid = (lo + hi) // 2
        trial = sample.copy()
        round_mantissa(trial, mid)
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
    got = np.ascontiguousarray(rounded).reshape(-1)
    want = np.ascontiguousarray(exact).reshape(-1)
    if got.dtype.kind == "c":
        got, want = (a.view(np.float32 if a.dtype.itemsize == 8 else np.float64) for a in (got, want))
    total, count = 0.0, 0
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, got.size, STRIP):
            e = want[start:start + STRIP]
            d = np.subtract(got[start:start + STRIP], e)
            finite = np.isfinite(e)
            if not finite.all():
                d = d[finite]
            np.square(d, out=d)
            total += float(d.sum(dtype=np.float64))
            count += d.size
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

        For ``'auto'``, the bits chosen on a subsample are checked on the
        whole section: while its RMS error exceeds ``max_error`` x its noise
        level, one more bit is kept. The bound holds for every section.
        """
        out = np.array(section, order="C", copy=True)
        if self.keepbits != "auto":
            bits = int(self.keepbits)
            round_mantissa(out, bits)
        else:
            bits = auto_keepbits(out, self.max_error)
            allowed = self.max_error * noise_level(out)
            round_mantissa(out, bits)
            while bits < self.bits and not rms_error(out, section) <= allowed:
                bits += 1
                out[...] = section
                round_mantissa(out, bits)
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
