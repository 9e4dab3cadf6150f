"""Narrower types that hold the same values exactly: one pass over the data, a section at a time.

:func:`plain_mrc_dtype` puts 32-bit integers into a standard MRC2014 mode
(python-mrcz's modes 7 and 8 are not standard); :func:`auto_dtype` stores
float data whose values are all integers (counts saved as float32, which the
MRCZ paper calls integer decimation) in the smallest MRC integer mode;
:func:`labels_dtype` finds the smallest mode for a segmentation (a napari
Labels layer) and refuses labels no mode holds.
Neither rounds anything: a value that does not fit keeps the type it had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Integer types plain MRC2014 has no mode for (python-mrcz's modes 7 and 8 are not standard).
WIDE_INTEGERS = ("int32", "uint32")
#: MRC's integer modes, smallest first, with the values each holds.
INTEGER_MODES = (("int8", -(1 << 7), (1 << 7) - 1), ("int16", -(1 << 15), (1 << 15) - 1),
                 ("uint16", 0, (1 << 16) - 1), ("int32", -(1 << 31), (1 << 31) - 1),
                 ("uint32", 0, (1 << 32) - 1))


def value_range(n: int, section: Callable[[int], np.ndarray]) -> tuple[float, float, bool]:
    """(min, max, whether every value is a whole number) of sections ``0 .. n-1``; NaN and inf are not."""
    lo, hi, whole = np.inf, -np.inf, True
    for i in range(n):
        values = np.asarray(section(i))
        if not values.size:
            continue
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                return float("nan"), float("nan"), False
            whole = whole and bool(np.all(np.trunc(values) == values))
        # .item(): exact Python ints for integer data (a uint64 label of 2**64 - 1 is no float)
        lo, hi = min(lo, values.min().item()), max(hi, values.max().item())
    return lo, hi, whole


def smallest_integer(lo: float, hi: float) -> str | None:
    """The smallest MRC integer type (:data:`INTEGER_MODES`) holding every value in ``lo .. hi``, or ``None``.

    Parameters
    ----------
    lo, hi
        The smallest and largest value (whole numbers).

    Returns
    -------
    str or None
        ``'int8'``, ``'int16'``, ``'uint16'``, ``'int32'`` or ``'uint32'``;
        ``None`` where no mode holds them all.
    """
    return next((name for name, low, high in INTEGER_MODES if low <= lo and hi <= high), None)


def auto_dtype(dtype: Any, n: int, section: Callable[[int], np.ndarray]) -> str | None:
    """The smallest MRC integer type that holds float data exactly, or ``None`` (keep the float type).

    Integer and complex data are kept as they are (``None``).
    """
    if np.dtype(dtype).kind != "f":
        return None
    lo, hi, whole = value_range(n, section)
    if not whole:
        return None
    return smallest_integer(lo, hi)


def plain_mrc_dtype(data: Any, path: Any) -> str | None:
    """The standard MRC2014 type that holds ``data``'s 32-bit integers exactly, for plain MRC.

    int16 or uint16 where every value fits, else float32 where every value's
    magnitude is at most 2**24 (float32 holds those integers exactly). ``None``
    for other types (written as they are). Reads the data once, a section at a time.

    Raises
    ------
    TypeError
        (``UnsupportedImageError``) values no standard mode holds exactly; the message offers MRCZ.
    """
    from .export import UnsupportedImageError

    name = np.dtype(data.dtype).name
    if name not in WIDE_INTEGERS:
        return None
    lo, hi, _ = value_range(data.shape[0] if data.ndim >= 3 else 1,
                            lambda i: data[i] if data.ndim >= 3 else data)
    lo, hi = (0, 0) if lo > hi else (int(lo), int(hi))  # no values at all
    if lo >= -(1 << 15) and hi < 1 << 15:
        return "int16"
    if lo >= 0 and hi < 1 << 16:
        return "uint16"
    if lo >= -(1 << 24) and hi <= 1 << 24:
        return "float32"
    raise UnsupportedImageError(
        f"{path}: plain MRC2014 has no mode that holds these {name} values exactly ({lo} to {hi}: "
        "beyond int16, uint16 and the ±2^24 that float32 holds exactly); save as MRCZ, which keeps "
        f"{name} (python-mrcz's mode {7 if name == 'int32' else 8})")


class LabelValueError(ValueError):
    """A label (a value of a segmentation) that no MRC integer mode holds exactly."""


#: The largest magnitude of the whole numbers float32 holds exactly (plain MRC's widest integers).
FLOAT32_EXACT = 1 << 24


def labels_dtype(data: Any, path: Any, compressed: bool) -> str:
    """The smallest MRC type that holds every label of a segmentation exactly: one pass, a section at a time.

    int8 (mode 0), int16 (1), uint16 (6); beyond them, for MRCZ, python-mrcz's
    int32 (7) and uint32 (8); for plain MRC2014, which has no 32-bit integer
    mode, float32 (2) where every label is within ±2**24 (float32 holds those
    integers exactly; :func:`plain_mrc_dtype`'s rule for 32-bit integers).

    Parameters
    ----------
    data
        The labels: an integer (or bool) array-like, read along its first
        axis one section (or one frame) at a time.
    path
        The file it is written to, for the message.
    compressed
        MRCZ (``True``) or plain MRC2014.

    Returns
    -------
    str
        The type to store the labels as (a ``dtype`` for :func:`~napari_mrcz.codec.mrc.writeMRC`).

    Raises
    ------
    LabelValueError
        A label no mode holds (below -2**31 or above 2**32 - 1; for plain MRC
        beyond uint16 and ±2**24): the message names the file and the label.
    """
    n = data.shape[0] if data.ndim >= 3 else 1
    lo, hi, _ = value_range(n, lambda i: data[i] if data.ndim >= 3 else data)
    lo, hi = (0, 0) if lo > hi else (int(lo), int(hi))  # no values at all
    name = smallest_integer(lo, hi)
    if name is None:
        low, high = INTEGER_MODES[3][1], INTEGER_MODES[4][2]
        value = lo if lo < low else hi
        raise LabelValueError(
            f"{path}: label {value} is held by no MRC mode (the widest, int32 and uint32, hold labels "
            f"{low} to {high}); renumber the labels to save them")
    if compressed or name not in WIDE_INTEGERS:
        return name
    if -FLOAT32_EXACT <= lo and hi <= FLOAT32_EXACT:
        return "float32"
    value = lo if lo < -FLOAT32_EXACT else hi
    raise LabelValueError(
        f"{path}: label {value} is held by no plain MRC2014 mode (int16, uint16, and float32 up to "
        f"±2^24 = {FLOAT32_EXACT}); save as MRCZ, which holds labels up to {INTEGER_MODES[4][2]} "
        "(python-mrcz's int32 and uint32 modes)")
