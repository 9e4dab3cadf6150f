"""Extended headers: Thermo Fisher FEI1/FEI2 and SerialEM per-section records, decoded.

The bytes between the 1024-byte header and the data (NSYMBT of them, typed by
EXTTYP) often carry one record per z-section: the tilt angle, defocus, dose,
magnification ... of each image. :func:`decode_extended` turns them into an
:class:`ExtendedHeader` whose ``sections`` maps each field name to a numpy
array with one value per decoded section.

- **FEI1, FEI2** (Thermo Fisher EPU, Tomography, Velox): one record of
  768 (FEI1) or 888 (FEI2) bytes per section, in Thermo Fisher's published
  layout, the one mrcfile uses. Numbers are in the file's byte order, the bit
  masks little-endian. Units are the spec's: metres, volts, e/m², degrees.
- **SERI** (SerialEM, IMOD's documentation of the MRC header): NINT bytes per
  section, NREAL a set of flags saying which int16 items each record holds.
  Older SerialEM files lack EXTTYP; they are recognised the way IMOD does, by
  NINT matching the bytes the flags imply.

A record that is malformed or cut short gives an :class:`MRCHeaderWarning`
and decodes as far as whole records go; the data offset never depends on it.
JSON extended headers (python-mrcz) are parsed by :mod:`.header`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .header import HEADER_BYTES, MRCHeader, MRCHeaderWarning

# Thermo Fisher's MRC2014 extended header, metadata version 0 (FEI1): name, type.
# "b" is a number in the file's byte order, "m" a bit mask (always little-endian).
_FEI1_FIELDS = """
Metadata size:i4 Metadata version:i4 Bitmask 1:m Timestamp:f8 Microscope type:S16 D-Number:S16
Application:S16 Application version:S16 HT:f8 Dose:f8 Alpha tilt:f8 Beta tilt:f8 X-Stage:f8 Y-Stage:f8
Z-Stage:f8 Tilt axis angle:f8 Dual axis rotation:f8 Pixel size X:f8 Pixel size Y:f8 Unused range:S48
Defocus:f8 STEM Defocus:f8 Applied defocus:f8 Instrument mode:i4 Projection mode:i4
Objective lens mode:S16 High magnification mode:S16 Probe mode:i4 EFTEM On:? Magnification:f8
Bitmask 2:m Camera length:f8 Spot index:i4 Illuminated area:f8 Intensity:f8 Convergence angle:f8
Illumination mode:S16 Wide convergence angle range:? Slit inserted:? Slit width:f8
Acceleration voltage offset:f8 Drift tube voltage:f8 Energy shift:f8 Shift offset X:f8
Shift offset Y:f8 Shift X:f8 Shift Y:f8 Integration time:f8 Binning Width:i4 Binning Height:i4
Camera name:S16 Readout area left:i4 Readout area top:i4 Readout area right:i4
Readout area bottom:i4 Ceta noise reduction:? Ceta frames summed:i4
Direct detector electron counting:? Direct detector align frames:? Camera param reserved 0:i4
Camera param reserved 1:i4 Camera param reserved 2:i4 Camera param reserved 3:i4 Bitmask 3:m
Camera param reserved 4:i4 Camera param reserved 5:i4 Camera param reserved 6:i4
Camera param reserved 7:i4 Camera param reserved 8:i4 Camera param reserved 9:i4 Phase Plate:?
STEM Detector name:S16 Gain:f8 Offset:f8 STEM param reserved 0:i4 STEM param reserved 1:i4
STEM param reserved 2:i4 STEM param reserved 3:i4 STEM param reserved 4:i4 Dwell time:f8
Frame time:f8 Scan size left:i4 Scan size top:i4 Scan size right:i4 Scan size bottom:i4
Full scan FOV X:f8 Full scan FOV Y:f8 Element:S16 Energy interval lower:f8
Energy interval higher:f8 Method:i4 Is dose fraction:? Fraction number:i4 Start frame:i4
End frame:i4 Input stack filename:S80 Bitmask 4:m Alpha tilt min:f8 Alpha tilt max:f8
"""
# Metadata version 2 (FEI2) appends these.
_FEI2_FIELDS = """
Scan rotation:f8 Diffraction pattern rotation:f8 Image rotation:f8 Scan mode enumeration:i4
Acquisition time stamp:i8 Detector commercial name:S16 Start tilt angle:f8 End tilt angle:f8
Tilt per image:f8 Tilt speed:f8 Beam center X pixel:i4 Beam center Y pixel:i4
CFEG flash timestamp:i8 Phase plate position index:i4 Objective aperture name:S16
"""


def _fields(spec: str) -> list[tuple[str, str]]:
    items = []
    for token in spec.replace("\n", " ").split(":"):
        items.append(token.strip())
    # "a b:t1 c:t2" splits into ["a b", "t1 c", "t2"]: each middle piece is "type name".
    names, types = [items[0]], []
    for piece in items[1:-1]:
        kind, _, name = piece.partition(" ")
        types.append(kind)
        names.append(name)
    types.append(items[-1])
    return list(zip(names, types, strict=True))


def fei_dtype(exttyp: bytes, byteorder: str) -> np.dtype | None:
    """The record type of an FEI1/FEI2 extended header in a file of ``byteorder``, else ``None``."""
    specs = {b"FEI1": [_FEI1_FIELDS], b"FEI2": [_FEI1_FIELDS, _FEI2_FIELDS]}.get(exttyp)
    if specs is None:
        return None
    out = []
    for name, kind in (item for spec in specs for item in _fields(spec)):
        if kind == "m":
            out.append((name, "<u4"))
        elif kind[0] in "S?":
            out.append((name, kind))
        else:
            out.append((name, byteorder + kind))
    return np.dtype(out)


#: SerialEM's per-section items: flag, name, int16 count, decoder.
_SERI_ITEMS: list[tuple[int, list[str], int, Any]] = [
    (1, ["Tilt angle"], 1, lambda s: s[:, 0] / 100.0),
    (2, ["Piece X", "Piece Y", "Piece Z"], 3, lambda s: s),
    (4, ["Stage X", "Stage Y"], 2, lambda s: s / 25.0),
    (8, ["Magnification"], 1, lambda s: s[:, 0] * 100.0),
    (16, ["Intensity"], 1, lambda s: s[:, 0] / 25000.0),
    (32, ["Exposure dose"], 2, lambda s: serialem_float(s[:, 0], s[:, 1])),
    (64, [], 1, None), (128, [], 2, None), (256, [], 1, None), (512, [], 2, None), (1024, [], 1, None),
]
_SERI_KNOWN_FLAGS = sum(flag for flag, *_ in _SERI_ITEMS)

#: What a one-line description of a section shows: field, label, factor, format.
SUMMARY = {
    "FEI": [("Alpha tilt", "tilt", 1.0, "{:+.1f}°"), ("Defocus", "defocus", 1e6, "{:.2f} µm"),
            ("Dose", "dose", 1e-20, "{:.2f} e/Å²"), ("Magnification", "mag", 1.0, "{:.0f}×")],
    "SERI": [("Tilt angle", "tilt", 1.0, "{:+.1f}°"), ("Exposure dose", "dose", 1.0, "{:.2f} e/Å²"),
             ("Magnification", "mag", 1.0, "{:.0f}×"), ("Intensity", "intensity", 1.0, "{:.4f}")],
}


def serialem_float(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """SerialEM's float stored as two int16, as IMOD documents it.

    value = sign(s1) (|s1| 256 + |s2| mod 256) 2^(sign(s2) (|s2| // 256))
    """
    s1, s2 = s1.astype(np.int64), s2.astype(np.int64)
    mantissa = np.sign(s1) * (np.abs(s1) * 256 + np.abs(s2) % 256)
    return mantissa * np.power(2.0, np.sign(s2) * (np.abs(s2) // 256))


def seri_layout(nint: int, nreal: int) -> list[tuple[list[str], int, Any]] | None:
    """The items of a SerialEM record, or ``None`` when NINT/NREAL are not SerialEM's."""
    if nint <= 0 or nreal <= 0 or nreal & ~_SERI_KNOWN_FLAGS:
        return None
    items = [(names, count, decode) for flag, names, count, decode in _SERI_ITEMS if nreal & flag]
    if sum(count for _, count, _ in items) * 2 != nint:
        return None
    return items


@dataclass
class ExtendedHeader:
    """A decoded extended header.

    Attributes
    ----------
    kind
        ``'FEI1'``, ``'FEI2'``, ``'SERI'``, ``'json'``, another EXTTYP as
        written, or ``''`` when the file has none.
    nbytes
        NSYMBT: the size of the extended header.
    sections
        Field name -> one value per decoded section (numpy arrays).
    problem
        Why the records could not be (fully) decoded, or ``None``.
    """

    kind: str
    nbytes: int
    sections: dict[str, np.ndarray] = field(default_factory=dict)
    problem: str | None = None

    @property
    def n_sections(self) -> int:
        """How many sections have a decoded record."""
        return len(next(iter(self.sections.values()))) if self.sections else 0

    def section(self, k: int) -> dict[str, Any]:
        """The record of section ``k`` as plain Python values (empty beyond the decoded records)."""
        if not 0 <= k < self.n_sections:
            return {}
        return {name: _plain(values[k]) for name, values in self.sections.items()}

    def summary(self, k: int) -> str:
        """One line for section ``k``, for example ``'tilt -42.0°, dose 3.10 e/Å²'``."""
        fields = SUMMARY.get("FEI" if self.kind.startswith("FEI") else self.kind, [])
        record = self.section(k)
        parts = []
        for name, label, factor, fmt in fields:
            value = record.get(name)
            if isinstance(value, (int, float)) and np.isfinite(value) and (value != 0 or label == "tilt"):
                parts.append(f"{label} {fmt.format(value * factor)}".replace("-", "−"))
        return ", ".join(parts)

    def as_meta(self) -> dict[str, Any]:
        """A dict for ``readMRC``'s ``meta['extendedHeader']`` and the napari layer's metadata."""
        out: dict[str, Any] = {"type": self.kind, "nbytes": self.nbytes, "sections": dict(self.sections)}
        if self.problem:
            out["problem"] = self.problem
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.rstrip(b"\0 ").decode("latin-1")
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    return value


def extended_kind(header: MRCHeader) -> str:
    """What the extended header is: 'FEI1', 'FEI2', 'SERI', 'json', another EXTTYP, or ''."""
    if header.extended_bytes <= 0:
        return ""
    exttyp = header.exttyp.rstrip(b"\0 ").decode("latin-1", "replace")
    if not exttyp and seri_layout(*header.nint_nreal) is not None:
        return "SERI"
    return exttyp


def records_wanted(header: MRCHeader) -> int:
    """How many bytes of the extended header :func:`decode_extended` reads (never more than NSYMBT)."""
    kind = extended_kind(header)
    nz = header.shape[0]
    if kind in ("FEI1", "FEI2"):
        size = fei_dtype(kind.encode(), header.byteorder).itemsize
    elif kind == "SERI":
        size = max(header.nint_nreal[0], 0)
    else:
        return 0
    return min(header.extended_bytes, nz * size)


def decode_extended(header: MRCHeader, raw: bytes) -> ExtendedHeader:
    """Decode the per-section records of an extended header.

    Parameters
    ----------
    header
        The file's interpreted header.
    raw
        The extended header's first :func:`records_wanted` bytes.

    Returns
    -------
    ExtendedHeader
        With ``problem`` set (and an :class:`MRCHeaderWarning` given) when the
        records are malformed or fewer than the file's sections.
    """
    kind = extended_kind(header)
    out = ExtendedHeader(kind=kind, nbytes=header.extended_bytes)
    nz = header.shape[0]
    if kind in ("FEI1", "FEI2"):
        dtype = fei_dtype(kind.encode(), header.byteorder)
        if len(raw) < dtype.itemsize:
            out.problem = (f"{kind} extended header holds {len(raw)} bytes, one record needs "
                           f"{dtype.itemsize} bytes")
        else:
            first = np.frombuffer(raw, dtype=dtype, count=1)[0]
            if int(first["Metadata size"]) != dtype.itemsize:
                out.problem = (f"{kind} record says its size is {int(first['Metadata size'])} bytes, "
                               f"the {kind} layout has {dtype.itemsize} bytes")
            else:
                records = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
                out.sections = {name: records[name] for name in dtype.names}
    elif kind == "SERI":
        nint, nreal = header.nint_nreal
        items = seri_layout(nint, nreal)
        if items is None:
            out.problem = (f"SERI extended header with NINT = {nint} and NREAL = {nreal} "
                           "is not SerialEM's layout")
        else:
            n, width = len(raw) // nint, nint // 2  # records, and 16-bit words in each
            shorts = np.frombuffer(raw, dtype=header.byteorder + "i2", count=n * width).reshape(n, width)
            col = 0
            for names, count, decode in items:
                values = shorts[:, col:col + count]
                col += count
                if decode is None:
                    continue
                decoded = decode(values)
                if decoded.ndim == 1:
                    out.sections[names[0]] = decoded
                else:
                    for j, name in enumerate(names):
                        out.sections[name] = decoded[:, j]
    else:
        return out
    if out.problem is None and out.n_sections < nz:
        out.problem = (f"{kind} extended header holds records for {out.n_sections} of the {nz} sections "
                       f"(NSYMBT = {header.extended_bytes})")
    if out.problem:
        warnings.warn(f"{header.path}: {out.problem}; the data is read as the header says",
                      MRCHeaderWarning, stacklevel=3)
    return out


def read_extended(header: MRCHeader, pread: Any) -> ExtendedHeader:
    """Read and decode the extended header of a file through ``pread(offset, n) -> bytes``."""
    n = records_wanted(header)
    return decode_extended(header, bytes(pread(HEADER_BYTES, n)) if n else b"")
