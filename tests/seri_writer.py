"""A small SerialEM-style MRC writer for tests, following IMOD's documentation of the MRC header.

IMOD (mrc_format.txt): NINT (int16 at byte 128) is the bytes per section, NREAL
(int16 at byte 130) flags which int16 items each record holds, in this order:
1 tilt angle x 100; 2 piece coordinates x, y, z; 4 stage x, y x 25; 8
magnification / 100; 16 intensity x 25000; 32 exposure dose as a float in two
int16 (s1, s2): value = sign(s1) (|s1| 256 + |s2| mod 256) 2^(sign(s2) (|s2| // 256)).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FLAG_BYTES = {1: 2, 2: 6, 4: 4, 8: 2, 16: 2, 32: 4}


def float_as_shorts(value: float) -> tuple[int, int]:
    """Encode ``value`` as SerialEM's two int16, with a 23-bit mantissa m = |s1| 256 + low byte."""
    if value == 0:
        return 0, 0
    exponent = math.floor(math.log2(abs(value))) - 22
    mantissa = round(abs(value) / 2.0**exponent)
    if mantissa >= 1 << 23:
        mantissa, exponent = mantissa // 2, exponent + 1
    s1, low = mantissa // 256, mantissa % 256
    s2 = abs(exponent) * 256 + low
    return (-s1 if value < 0 else s1), (-s2 if exponent < 0 else s2)


def write_serialem(path: Path, data: np.ndarray, records: dict[str, np.ndarray], flags: int,
                   exttyp: bytes = b"SERI", nsymbt: int | None = None, pixel: float = 1.0) -> None:
    """Write a little-endian MRC stack with a SerialEM extended header.

    ``records`` holds, per section: 'tilt' (deg), 'piece' (n, 3), 'stage' (n, 2) µm,
    'mag', 'intensity', 'dose'. ``nsymbt`` overrides the extended header size
    (to write truncated or padded headers); bytes beyond the records are zero.
    """
    nz, ny, nx = data.shape
    nint = sum(b for f, b in FLAG_BYTES.items() if flags & f)
    rows = []
    for k in range(nz):
        shorts: list[int] = []
        if flags & 1:
            shorts.append(int(round(records["tilt"][k] * 100)))
        if flags & 2:
            shorts.extend(int(v) for v in records["piece"][k])
        if flags & 4:
            shorts.extend(int(round(v * 25)) for v in records["stage"][k])
        if flags & 8:
            shorts.append(int(round(records["mag"][k] / 100)))
        if flags & 16:
            shorts.append(int(round(records["intensity"][k] * 25000)))
        if flags & 32:
            shorts.extend(float_as_shorts(float(records["dose"][k])))
        rows.append(np.array(shorts, "<i2").tobytes())
    ext = b"".join(rows)
    size = len(ext) if nsymbt is None else nsymbt
    ext = ext[:size].ljust(size, b"\0")
    header = bytearray(1024)
    ints = np.array([nx, ny, nz, 2, 0, 0, 0, nx, ny, nz], "<i4")
    header[0:40] = ints.tobytes()
    header[40:52] = np.array([nx * pixel, ny * pixel, nz * pixel], "<f4").tobytes()
    header[52:64] = np.array([90, 90, 90], "<f4").tobytes()
    header[64:76] = np.array([1, 2, 3], "<i4").tobytes()
    header[88:96] = np.array([0, size], "<i4").tobytes()  # ISPG 0 (a stack), NSYMBT
    header[104:108] = exttyp.ljust(4, b"\0")[:4]
    header[108:112] = np.array([20141], "<i4").tobytes()
    header[128:132] = np.array([nint, flags], "<i2").tobytes()
    header[208:212] = b"MAP "
    header[212:216] = bytes([0x44, 0x44, 0, 0])
    header[220:224] = np.array([1], "<i4").tobytes()
    header[224:304] = b"SerialEM: test stack".ljust(80)
    Path(path).write_bytes(bytes(header) + ext + np.ascontiguousarray(data, "<f4").tobytes())
