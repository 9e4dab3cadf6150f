"""The 1024-byte MRC2014 header: its layout, and how to interpret and build it.

The header is a numpy structured dtype (``HEADER_DTYPE``), in the spirit of
mrcfile. :func:`parse_header` turns the raw bytes into an :class:`MRCHeader`,
deciding byte order, data type, compressor, the python-mrcz ``slices``
convention and the pixel size; every check that protects a reader from a
hostile or damaged header happens here, before a single data byte is touched.
:func:`build_header` is its inverse for the writer.

MRCZ stores, besides the MRC2014 fields, the microscope voltage (keV), C3 (mm)
and gain (counts per electron) as float32 at bytes 132-143 and the total size
of the compressed chunks as int64 at bytes 144-151 (python-mrcz's layout).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MRCFileError, TruncatedFileError

HEADER_BYTES = 1024

HEADER_DTYPE = np.dtype(
    [
        ("nx", "<i4"), ("ny", "<i4"), ("nz", "<i4"), ("mode", "<i4"),
        ("nxstart", "<i4"), ("nystart", "<i4"), ("nzstart", "<i4"),
        ("mx", "<i4"), ("my", "<i4"), ("mz", "<i4"),
        ("cella", "<f4", 3), ("cellb", "<f4", 3),
        ("mapc", "<i4"), ("mapr", "<i4"), ("maps", "<i4"),
        ("dmin", "<f4"), ("dmax", "<f4"), ("dmean", "<f4"),
        ("ispg", "<i4"), ("nsymbt", "<i4"),
        ("extra1", "V8"), ("exttyp", "S4"), ("nversion", "<i4"),
        ("extra2", "V20"),
        # MRCZ: microscope state and the size of the compressed data.
        ("voltage", "<f4"), ("C3", "<f4"), ("gain", "<f4"),
        ("packedBytes", "<i8"),
        # IMOD: stamp and flags (bit 0 set: mode-0 bytes are signed).
        ("imodStamp", "<i4"), ("imodFlags", "<i4"),
        ("extra3", "V36"),
        ("origin", "<f4", 3), ("map", "S4"), ("machst", "u1", 4),
        ("rms", "<f4"), ("nlabl", "<i4"), ("label", "S80", 10),
    ]
)
assert HEADER_DTYPE.itemsize == HEADER_BYTES

IMOD_STAMP = 1146047817
MRC_COMP_RATIO = 1000

#: MRCZ compressor ids (MODE // 1000). 0-6 are c-blosc1's codecs; lz4hc is 3.
COMPRESSOR_ENUM: dict[int, str | None] = {
    0: None, 1: "blosclz", 2: "lz4", 3: "lz4hc", 4: "snappy", 5: "zlib", 6: "zstd",
    7: "ndlz", 8: "zfp_acc", 9: "zfp_prec", 10: "zfp_rate",
    11: "openhtj2k", 12: "grok", 13: "openzl", 14: "j2k", 15: "htj2k",
}
REVERSE_COMPRESSOR_ENUM = {name: code for code, name in COMPRESSOR_ENUM.items()}

#: MRC2014 mode -> numpy type of one stored sample (before byte order).
CCPEM_ENUM = {0: "i1", 1: "i2", 2: "f4", 4: "c8", 6: "u2", 7: "i4", 8: "u4", 12: "f2", 101: "u1"}
#: EMAN2's own numbering, read with ``fileConvention='eman2'``.
EMAN2_ENUM = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4"}
#: dtype name -> MRC mode, as in python-mrcz (float64 and complex128 are cast down).
REVERSE_CCPEM_ENUM = {
    "int8": 0, "i1": 0, "uint4": 101, "int16": 1, "i2": 1, "uint16": 6, "u2": 6,
    "int32": 7, "i4": 7, "uint32": 8, "u4": 8, "float16": 12, "f2": 12,
    "float64": 2, "f8": 2, "float32": 2, "f4": 2,
    "complex128": 4, "c16": 4, "complex64": 4, "c8": 4,
}
#: Mode 3 (complex int16) is read, and returned as complex64.
MODE_COMPLEX_INT16 = 3
MODE_UINT4 = 101

#: Pixel-size units python-mrcz understands, with accepted spellings, as Å per unit.
_ANGSTROM_PER_UNIT = {
    "\\AA": 1.0, "AA": 1.0, "A": 1.0, "Å": 1.0, "angstrom": 1.0,
    "nm": 10.0, "\\mum": 1.0e4, "um": 1.0e4, "µm": 1.0e4, "μm": 1.0e4, "pm": 0.01,
}

_LABEL_OURS = b"napari-mrcz"


class MRCHeaderWarning(UserWarning):
    """A header field is unusual but the file can still be read."""


def angstrom_per_unit(pixelunits: str) -> float:
    r"""How many Ångström one ``pixelunits`` is.

    Parameters
    ----------
    pixelunits
        ``'\\\\AA'`` (python-mrcz's spelling of Å), ``'nm'``, ``'\\\\mum'`` or
        ``'pm'``; ``'Å'``, ``'A'``, ``'µm'`` and ``'um'`` are accepted too.

    Raises
    ------
    ValueError
        For an unknown unit (python-mrcz silently used nm there).

    """
    try:
        return _ANGSTROM_PER_UNIT[pixelunits]
    except KeyError:
        raise ValueError(
            f"unknown pixelunits {pixelunits!r}; use one of '\\\\AA', 'nm', '\\\\mum', 'pm'"
        ) from None


def _mode_ok(mode: int) -> bool:
    base, cid = mode % MRC_COMP_RATIO, mode // MRC_COMP_RATIO
    return mode >= 0 and cid in COMPRESSOR_ENUM and (base in CCPEM_ENUM or base == 3)


def _detect_byteorder(raw: bytes) -> str:
    """Pick the byte order whose mode and dimensions make sense.

    The machine stamp is tried first (0x44 little, 0x11 big), but SerialEM and
    others write odd stamps, so the decisive test is whether MODE and the
    dimensions read as sane numbers.
    """
    stamp = raw[212]
    first = ">" if stamp == 0x11 else "<"
    order = (first, "<" if first == ">" else ">")

    def plausible(bo: str) -> bool:
        nx, ny, nz, mode = np.frombuffer(raw, dtype=bo + "i4", count=4)
        return _mode_ok(int(mode)) and 0 < nx < 1 << 24 and 0 < ny < 1 << 24 and 0 <= nz < 1 << 28

    for bo in order:
        if plausible(bo):
            return bo
    return first


#: MAPC, MAPR, MAPS of the standard axis order: columns along X, rows along Y, sections along Z.
STANDARD_AXIS_ORDER = (1, 2, 3)


def axis_order(mapc: Any, mapr: Any, maps: Any) -> tuple[int, int, int]:
    """(MAPC, MAPR, MAPS): the cell axis (1 X, 2 Y, 3 Z) that columns, rows and sections run along.

    MRC2014 lets a map store its axes in any order (crystallographic maps
    often do: EMD-3001 has 3, 1, 2, columns along Z). Anything that is not a
    permutation of 1, 2, 3 (0, 0, 0 in old or careless files) means the
    standard order.

    Parameters
    ----------
    mapc, mapr, maps
        The header's MAPC, MAPR and MAPS.

    Returns
    -------
    tuple of int
        A permutation of (1, 2, 3).
    """
    order = (int(mapc), int(mapr), int(maps))
    return order if sorted(order) == [1, 2, 3] else STANDARD_AXIS_ORDER


def data_axes_cell(order: tuple[int, int, int]) -> list[int]:
    """The cell axis (0 X, 1 Y, 2 Z) of each data axis (sections, rows, columns) for an axis order.

    Standard order gives ``[2, 1, 0]``: numpy's (z, y, x).
    """
    mapc, mapr, maps = order
    return [maps - 1, mapr - 1, mapc - 1]


def first_label(raw_header: np.void) -> bytes:
    """The first 80-byte label, stripped of padding."""
    return bytes(raw_header["label"][0]).rstrip(b" \0\t\r\n")


@dataclass
class MRCHeader:
    """What a reader needs to know about one MRC/MRCZ file, from its header.

    ``shape`` is (nz, ny, nx) of the decoded data, ``dtype`` the numpy type
    returned to the caller (in the file's byte order), ``file_dtype`` the type of
    one stored sample. For MRCZ files every z-section is one blosc chunk.
    """

    path: str
    byteorder: str
    raw: np.void
    shape: tuple[int, int, int]
    mode: int
    compressor: str | None
    dtype: np.dtype
    file_dtype: np.dtype
    extended_bytes: int
    exttyp: bytes
    slices: int
    written_by: str | None
    pixelsize: np.ndarray  # Å, (z, y, x)
    json_meta: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def data_offset(self) -> int:
        """Byte offset of the first data byte (or first blosc chunk)."""
        return HEADER_BYTES + self.extended_bytes

    @property
    def section_nbytes(self) -> int:
        """Stored bytes of one z-section, uncompressed."""
        nz, ny, nx = self.shape
        if self.mode == MODE_UINT4:
            return ny * ((nx + 1) // 2)
        parts = 2 if self.is_complex_int16 else 1
        return ny * nx * parts * self.file_dtype.itemsize

    @property
    def is_complex_int16(self) -> bool:
        """Whether samples are (real, imaginary) int16 pairs, mode 3, decoded to complex64."""
        return self.dtype.kind == "c" and self.file_dtype.kind == "i"

    @property
    def is_packed(self) -> bool:
        """Whether samples need unpacking: 4-bit (mode 101) or complex int16 (mode 3)."""
        return self.mode == MODE_UINT4 or self.is_complex_int16

    @property
    def is_compressed(self) -> bool:
        """Whether the data is blosc-compressed (MRCZ)."""
        return self.compressor is not None

    def field(self, name: str) -> Any:
        """One raw header field as a Python value."""
        value = self.raw[name]
        return value.tolist() if isinstance(value, np.ndarray) else value.item()

    @property
    def labels(self) -> list[str]:
        """The text labels in use (NLABL of them; non-empty ones where NLABL is wrong)."""
        texts = [bytes(v).rstrip(b" \0\t\r\n").decode("latin-1") for v in self.raw["label"]]
        nlabl = int(self.raw["nlabl"])
        if 0 <= nlabl <= len(texts) and not any(texts[nlabl:]):
            return texts[:nlabl]
        return [t for t in texts if t]

    @property
    def is_volume(self) -> bool:
        """Whether z is a spatial axis (a volume), not a frame axis (a stack of images).

        The file's name decides first, as users name them: ``.mrcs``, ``.st``,
        ``.ali``, ``.preali`` are stacks; ``.map``, ``.rec`` volumes. Then
        MRC2014's space group: 0 is an image stack, anything else a volume.
        python-mrcz's compressed layout always has ISPG 0 and says "frames"
        with MZ = 1 instead. A single section is an image, not a stack.
        """
        name = self.path.lower()
        for suffix in (".gz", ".bz2"):
            name = name.removesuffix(suffix)
        if self.shape[0] == 1:
            return False
        if name.endswith((".mrcs", ".st", ".ali", ".preali")):
            return False
        if name.endswith((".map", ".rec")):
            return True
        if self.compressor is not None or self.written_by == "python-mrcz":
            return self.slices != 1
        return int(self.raw["ispg"]) != 0

    @property
    def axis_order(self) -> tuple[int, int, int]:
        """(MAPC, MAPR, MAPS), the cell axes of columns, rows and sections; see :func:`axis_order`."""
        return axis_order(self.raw["mapc"], self.raw["mapr"], self.raw["maps"])

    @property
    def nint_nreal(self) -> tuple[int, int]:
        """(NINT, NREAL): int16 at bytes 128-131, the layout of per-section extended records."""
        nint, nreal = np.frombuffer(self.raw.tobytes()[128:132], dtype=self.byteorder + "i2")
        return int(nint), int(nreal)

    def fields(self) -> dict[str, Any]:
        """Every MRC2014 header field by name (and MRCZ's and IMOD's in the EXTRA area), as Python values."""
        raw = self.raw
        out: dict[str, Any] = {}
        for name in ("nx", "ny", "nz", "mode", "nxstart", "nystart", "nzstart", "mx", "my", "mz",
                     "cella", "cellb", "mapc", "mapr", "maps", "dmin", "dmax", "dmean", "ispg", "nsymbt",
                     "exttyp", "nversion", "nint", "nreal", "voltage", "C3", "gain", "packedBytes",
                     "imodStamp", "imodFlags", "origin", "map", "machst", "rms", "nlabl"):
            if name in ("nint", "nreal"):
                out[name] = self.nint_nreal[name == "nreal"]
            elif name == "machst":
                out[name] = "0x" + bytes(raw[name]).hex()
            elif raw[name].dtype.kind in "SV":
                out[name] = bytes(raw[name]).decode("latin-1")
            elif raw[name].dtype.kind == "f":
                value = float32_value(raw[name])
                out[name] = value.tolist() if isinstance(value, np.ndarray) else value
            else:
                out[name] = self.field(name)
        out["labels"] = self.labels
        return out

    def to_meta(self, pixelunits: str = "\\AA") -> dict:
        """The python-mrcz ``meta`` dict: header fields, then JSON keys merged in."""
        raw = self.raw
        cid = self.mode // MRC_COMP_RATIO
        meta: dict[str, Any] = {
            "dimensions": np.array(self.shape, dtype=int),
            "MRCtype": self.mode % MRC_COMP_RATIO,
            "compressor": self.compressor,
            "dtype": self.dtype.str if self.dtype.itemsize > 1 else self.byteorder + self.dtype.str[1:],
            "pixelsize": self.pixelsize / angstrom_per_unit(pixelunits),
            "pixelunits": pixelunits,
            "minImage": float32_value(raw["dmin"]),
            "maxImage": float32_value(raw["dmax"]),
            "meanImage": float32_value(raw["dmean"]),
            "extendedBytes": self.extended_bytes,
            "voltage": _finite(raw["voltage"]),
            "C3": _finite(raw["C3"]),
            "gain": _finite(raw["gain"]),
            "packedBytes": int(raw["packedBytes"]) if cid else 0,
            "clevel": None,
            "slices": self.slices,
        }
        if self.extended_bytes > 0:
            meta["metaId"] = self.exttyp
        if self.compressor is not None:
            meta["bloscFormat"] = None
            meta["backend"] = None
        if self.json_meta:
            for key, value in self.json_meta.items():
                meta.setdefault(key, value)
        return meta


def _finite(value: Any) -> float:
    value = float32_value(value)
    return value if math.isfinite(value) else 0.0


def float32_value(value: Any) -> Any:
    """A float32 header value as the shortest decimal that is exactly it (2.7, not 2.7000000477).

    Arrays give arrays; the value is unchanged when stored again as float32.
    """
    values = np.asarray(value, dtype=np.float32)
    nice = np.array([float(str(v)) for v in values.ravel()], dtype=np.float64)
    return nice.reshape(values.shape) if values.ndim else float(nice[0])


def parse_header(
    raw_bytes: bytes,
    path: str,
    file_size: int | None,
    *,
    fileConvention: str = "ccpem",
    slices: int | None = None,
    read_extended: Any = None,
) -> MRCHeader:
    """Interpret the first 1024 bytes of an MRC/MRCZ file.

    Parameters
    ----------
    raw_bytes
        At least the first 1024 bytes of the file.
    path
        The file's name, for messages.
    file_size
        Total bytes in the (decompressed) file, or ``None`` where unknown; every
        size the header claims is checked against it.
    fileConvention
        ``'ccpem'`` (MRC2014, IMOD) or ``'eman2'`` (EMAN2's mode numbers).
    slices
        Overrides the slices-per-frame the header implies.
    read_extended
        ``read_extended(offset, n) -> bytes`` to fetch a JSON extended header.

    Raises
    ------
    MRCFileError
        The header is not MRC, or names an unknown mode or compressor.
    TruncatedFileError
        The file is shorter than the header says.

    """
    if len(raw_bytes) < HEADER_BYTES:
        what = "empty file" if not raw_bytes else f"only {len(raw_bytes)} bytes"
        raise TruncatedFileError(path, f"not an MRC file: {what}, an MRC header needs {HEADER_BYTES} bytes")
    raw_bytes = bytes(raw_bytes[:HEADER_BYTES])
    bo = _detect_byteorder(raw_bytes)
    dt = HEADER_DTYPE if bo == "<" else HEADER_DTYPE.newbyteorder(">")
    raw = np.frombuffer(raw_bytes, dtype=dt)[0]
    nx, ny, nz, mode = (int(raw[k]) for k in ("nx", "ny", "nz", "mode"))
    has_map_id = bytes(raw["map"])[:3] == b"MAP"

    def not_mrc(problem: str) -> MRCFileError:
        prefix = "" if has_map_id else "not an MRC file (no 'MAP ' identifier): "
        return MRCFileError(path, prefix + problem)

    cid, base = divmod(mode, MRC_COMP_RATIO) if mode >= 0 else (0, mode)
    if cid not in COMPRESSOR_ENUM:
        raise not_mrc(f"unrecognized MRCZ compressor id = {cid} in mode {mode}")
    convention = fileConvention.lower()
    if convention == "ccpem":
        table = CCPEM_ENUM
    elif convention == "eman2":
        table = EMAN2_ENUM
    else:
        raise ValueError(f"unknown fileConvention {fileConvention!r}; use 'ccpem' or 'eman2'")
    if base == MODE_COMPLEX_INT16 and convention == "ccpem":
        file_dtype = np.dtype(bo + "i2")
        dtype = np.dtype(bo + "c8")
    elif base in table:
        file_dtype = np.dtype(bo + table[base]) if table[base] != "i1" else np.dtype("i1")
        dtype = file_dtype
    else:
        raise not_mrc(f"unknown MRC mode {base}" + (f" (mode {mode})" if cid else ""))
    if base == 0 and convention == "ccpem" and int(raw["imodStamp"]) == IMOD_STAMP:
        if not int(raw["imodFlags"]) & 1:  # IMOD: bytes are unsigned unless flag bit 0
            file_dtype = dtype = np.dtype("u1")
    if base == MODE_UINT4:
        dtype = np.dtype("u1")

    for name, n in (("nx", nx), ("ny", ny), ("nz", nz)):
        if n <= 0:
            raise not_mrc(f"{name} = {n}, dimensions must be positive")
    nsymbt = int(raw["nsymbt"])
    if nsymbt < 0:
        raise not_mrc(f"negative extended header size NSYMBT = {nsymbt}")

    compressor = COMPRESSOR_ENUM[cid]
    label = first_label(raw)
    if any(_LABEL_OURS in bytes(text) for text in raw["label"]):  # ours may follow a source's labels
        written_by = "napari-mrcz"
    elif label.startswith(b"MRCZ"):
        written_by = "python-mrcz"
    else:
        written_by = None
    if compressor is not None and base == 3:
        raise not_mrc("mode 3 (complex int16) cannot be compressed in MRCZ")
    if compressor is not None and base == MODE_UINT4:
        raise not_mrc("mode 101 (uint4) cannot be compressed in MRCZ")

    header = MRCHeader(
        path=path, byteorder=bo, raw=raw, shape=(nz, ny, nx), mode=mode, compressor=compressor,
        dtype=dtype, file_dtype=file_dtype, extended_bytes=nsymbt, exttyp=bytes(raw["exttyp"]),
        slices=0, written_by=written_by, pixelsize=np.zeros(3),
    )

    # Sizes: never trust a header further than the file can back it.
    if file_size is not None:
        available = file_size - header.data_offset
        if available < 0:
            raise TruncatedFileError(
                path, f"extended header of {nsymbt} bytes runs past the end of the "
                f"{file_size}-byte file")
        if compressor is None:
            needed = header.section_nbytes * nz
            if needed > available:
                raise TruncatedFileError(
                    path, f"the header describes {nz} x {ny} x {nx} {dtype.name} = {needed} "
                    f"data bytes but only {available} follow the header ({needed - available} "
                    "bytes missing): the file is truncated or its header is wrong")
        elif nz * 16 > available:
            raise TruncatedFileError(
                path, f"file is truncated: {nz} compressed sections need at least "
                f"{nz * 16} bytes, the file holds {available} bytes after its header")

    # python-mrcz's convention: MZ holds the z-sections per frame ("slices").
    mx, my, mz = (int(raw[k]) for k in ("mx", "my", "mz"))
    ispg = int(raw["ispg"])
    mrcz_layout = compressor is not None or written_by == "python-mrcz"
    if slices is None:
        if mrcz_layout:
            slices = mz if 0 < mz <= nz and nz % mz == 0 else 0
        elif written_by == "napari-mrcz" and ispg == 401 and 0 < mz < nz and nz % mz == 0:
            slices = mz
        elif written_by == "napari-mrcz" and ispg == 0 and mz == 1 and nz > 1:
            slices = 1
        else:
            slices = 0
    header.slices = int(slices)

    # Pixel size of each data axis (sections, rows, columns): python-mrcz divides the cell by N;
    # MRC2014 by M (the sampling). CELLA and M are per cell axis (X, Y, Z), which MAPC, MAPR and
    # MAPS assign to columns, rows and sections.
    cell_axis = data_axes_cell(header.axis_order)
    cella = np.asarray(raw["cella"], dtype=np.float32)[cell_axis]
    n = np.array([nz, ny, nx], dtype=np.float32)
    m = np.array([mx, my, mz], dtype=np.float32)[cell_axis]
    divisor = n if mrcz_layout else np.where(m > 0, m, n)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pixelsize = float32_value(cella / divisor)
    header.pixelsize = np.where(np.isfinite(pixelsize), pixelsize, 0.0)

    if header.exttyp == b"json" and nsymbt > 0 and read_extended is not None:
        try:
            header.json_meta = json.loads(bytes(read_extended(HEADER_BYTES, nsymbt)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.warn(f"{path}: JSON extended header is unreadable ({exc}); ignored",
                          MRCHeaderWarning, stacklevel=3)
        else:
            if not isinstance(header.json_meta, dict):
                header.json_meta = {"meta": header.json_meta}
    return header


def build_header(
    *,
    shape: tuple[int, int, int],
    mode: int,
    byteorder: str,
    pixelsize_A: np.ndarray,
    sampling: tuple[int, int, int],
    cell_sampling: tuple[int, int, int] | None = None,
    ispg: int,
    stats: tuple[float, float, float, float] | None,
    voltage: float,
    C3: float,
    gain: float,
    packed_bytes: int = 0,
    extended_bytes: int = 0,
    exttyp: bytes = b"",
    labels: list[bytes] | None = None,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    start: tuple[int, int, int] = (0, 0, 0),
    axis_order: tuple[int, int, int] = STANDARD_AXIS_ORDER,
    angles: tuple[float, float, float] = (90.0, 90.0, 90.0),
) -> bytes:
    """Build a 1024-byte MRC2014 header.

    Parameters
    ----------
    shape
        (nz, ny, nx) as stored.
    mode
        Full MODE, compressor id included.
    byteorder
        ``'<'`` or ``'>'``.
    pixelsize_A
        Pixel size of each data axis (sections, rows, columns: z, y, x) in Å.
    sampling
        (mz, my, mx) of the data axes (sections, rows, columns); stored as
        MZ, MY, MX as they are in python-mrcz's layout (``cell_sampling``
        given: MZ holds its slices), else by cell axis, as ``axis_order`` says.
    cell_sampling
        The cell is ``pixelsize * cell_sampling``: ``sampling`` in MRC2014
        (the default), the dimensions in python-mrcz's compressed files.
    ispg
        Space group: 0 image stack, 1 volume, 401 volume stack.
    stats
        (dmin, dmax, dmean, rms), or ``None`` to mark them undetermined as
        MRC2014 allows (dmax < dmin, dmean < dmin, rms < 0).
    labels
        Up to 10 text labels of 80 bytes (longer ones are cut).
    origin
        ORIGIN (x, y, z), Å.
    start
        NXSTART, NYSTART, NZSTART.
    axis_order
        MAPC, MAPR, MAPS: the cell axis (1 X, 2 Y, 3 Z) of columns, rows and
        sections. The cell lengths (and MRC2014's sampling) of each data axis
        are stored under its cell axis.
    angles
        CELLB, the cell angles α, β, γ in degrees.

    """
    dt = HEADER_DTYPE if byteorder == "<" else HEADER_DTYPE.newbyteorder(">")
    h = np.zeros((), dtype=dt)
    nz, ny, nx = shape
    h["nx"], h["ny"], h["nz"], h["mode"] = nx, ny, nz, mode
    cell_axis = data_axes_cell(axis_order)  # of sections, rows, columns
    if cell_sampling is None:  # MRC2014: M per cell axis
        m = np.zeros(3, dtype=np.int64)
        m[cell_axis] = sampling
        h["mx"], h["my"], h["mz"] = m
    else:  # python-mrcz: MZ is its slices per frame, whatever the axis order
        h["mz"], h["my"], h["mx"] = sampling
    cell_sampling = sampling if cell_sampling is None else cell_sampling
    cella = np.zeros(3, dtype=np.float64)
    cella[cell_axis] = np.asarray(pixelsize_A, dtype=np.float64) * np.array(cell_sampling)
    h["cella"] = cella
    h["cellb"] = angles
    h["mapc"], h["mapr"], h["maps"] = axis_order
    if stats is None:
        h["dmin"], h["dmax"], h["dmean"], h["rms"] = 0.0, -1.0, -2.0, -1.0
    else:
        h["dmin"], h["dmax"], h["dmean"], h["rms"] = stats
    h["ispg"] = ispg
    h["nsymbt"] = extended_bytes
    h["exttyp"] = exttyp
    h["nversion"] = 20141
    h["voltage"], h["C3"], h["gain"] = voltage, C3, gain
    h["packedBytes"] = packed_bytes
    h["map"] = b"MAP "
    h["machst"] = (0x44, 0x44, 0, 0) if byteorder == "<" else (0x11, 0x11, 0, 0)
    h["nxstart"], h["nystart"], h["nzstart"] = start
    h["origin"] = origin
    labels = list(labels or [])[:10]
    h["nlabl"] = len(labels)
    for k, text in enumerate(labels):
        h["label"][k] = text[:80].ljust(80)
    return h.tobytes()
