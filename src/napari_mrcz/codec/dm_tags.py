"""Gatan DigitalMicrograph tag trees: the DM3 and DM4 container, parsed safely.

A DM file is a header and a tree of tags. DM3 and DM4 differ only in the width
of counts and lengths (4 and 8 bytes). Tag structure is big-endian; tag values
are in the byte order the header names (almost always little-endian).

    header   version (>i4) | root length (>i4 DM3, >i8 DM4) | byte order (>i4, 1 = little)
    group    sorted (u1) | open (u1) | ntags (>i4 / >i8) | ntags entries
    entry    kind (u1: 20 group, 21 data, 0 end) | name length (>u2) | name
             | [DM4: entry length (>u8)] | group or data
    data     '%%%%' | ninfo (>i4 / >i8) | ninfo type codes | value

Every count and length is checked against the bytes left in the file before it
is used, nesting is bounded, and large arrays (image data above all) are not
read: they become :class:`ArrayRef` (offset, dtype, count), so opening a 100 GB
movie parses a few kilobytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import MRCFileError, TruncatedFileError

#: Tag element types: code -> numpy type (byte order added from the header).
SIMPLE_TYPES = {2: "i2", 3: "i4", 4: "u2", 5: "u4", 6: "f4", 7: "f8", 8: "u1", 9: "i1", 10: "u1",
                11: "i8", 12: "u8"}
STRUCT, STRING, ARRAY = 15, 18, 20
MAX_DEPTH = 64
#: Arrays larger than this are left in the file as ArrayRef.
INLINE_ARRAY_BYTES = 1 << 16
_BLOCK = 1 << 16


@dataclass(frozen=True)
class ArrayRef:
    """An array left in the file: ``count`` elements of ``dtype`` at byte ``offset``."""

    offset: int
    dtype: np.dtype
    count: int

    @property
    def nbytes(self) -> int:
        """Bytes the array takes in the file."""
        return self.count * self.dtype.itemsize


class Readable(Protocol):
    """What the parser reads from: a :class:`.positioned.PositionedFile`, or anything alike."""

    size: int

    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from byte ``offset`` (fewer only at the end of the file)."""


class _Cursor:
    """Sequential reads over positioned reads, with every length checked first."""

    def __init__(self, file: Readable, path: str) -> None:
        self.file, self.size, self.path = file, file.size, path
        self.pos = 0
        self._buf, self._buf_at = b"", 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise TruncatedFileError(
                self.path, f"{what} at byte {self.pos} needs {n} bytes, only "
                f"{max(self.size - self.pos, 0)} remain: the DM file is truncated or damaged")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self._buf_at
        if start < 0 or start + n > len(self._buf):
            self._buf = self.file.pread(self.pos, max(n, _BLOCK))
            self._buf_at, start = self.pos, 0
        self.pos += n
        return self._buf[start:start + n]

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def big(self, fmt: str, what: str) -> int:
        dt = np.dtype(fmt)
        return int(np.frombuffer(self.take(dt.itemsize, what), dtype=dt)[0])


class TagParser:
    """Parses a DM3/DM4 file's tag tree into nested dicts and lists.

    Parameters
    ----------
    file
        The open file, read at offsets (the caller closes it).
    path
        The file's name, for messages.

    Attributes
    ----------
    version : int
        3 or 4.
    byteorder : str
        ``'<'`` or ``'>'``: the byte order of tag values and image data.
    root : dict
        The tag tree. Groups whose entries are all unnamed become lists.
    """

    def __init__(self, file: Readable, path: str) -> None:
        size = file.size
        self.cur = _Cursor(file, path)
        self.path = path
        if size < 16:
            raise MRCFileError(path, f"not a DigitalMicrograph file: only {size} bytes")
        self.version = self.cur.big(">i4", "version")
        if self.version not in (3, 4):
            raise MRCFileError(path, f"not a DigitalMicrograph file (version field {self.version}, "
                                     "expected 3 or 4)")
        self.wide = ">i8" if self.version == 4 else ">i4"
        self.cur.big(self.wide, "root length")
        order = self.cur.big(">i4", "byte order")
        if order not in (0, 1):
            raise MRCFileError(path, f"unknown DM byte order flag {order}")
        self.byteorder = "<" if order == 1 else ">"
        self.root = self._group(0, "root")

    @classmethod
    def positioned(cls, file: Readable, path: str, pos: int, version: int, byteorder: str = "<") -> TagParser:
        """A parser for the tag at byte ``pos`` of an already-identified file."""
        parser = cls.__new__(cls)
        parser.cur = _Cursor(file, path)
        parser.cur.pos = pos
        parser.path, parser.version, parser.byteorder = path, version, byteorder
        parser.wide = ">i8" if version == 4 else ">i4"
        return parser

    # -- structure ---------------------------------------------------------
    def _count(self, what: str, min_bytes_each: int) -> int:
        n = self.cur.big(self.wide, what)
        if n < 0 or n * min_bytes_each > self.cur.size - self.cur.pos:
            raise MRCFileError(self.path, f"{what} = {n} at byte {self.cur.pos} cannot fit in the "
                                          "rest of the file: the DM file is damaged")
        return n

    def _group(self, depth: int, name: str) -> dict | list:
        if depth > MAX_DEPTH:
            raise MRCFileError(self.path, f"tag groups nested deeper than {MAX_DEPTH} at {name!r}")
        self.cur.skip(2, f"tag group {name!r}")
        ntags = self._count(f"number of tags in {name!r}", 3)
        named: dict[str, Any] = {}
        unnamed: list[Any] = []
        for _ in range(ntags):
            kind = self.cur.take(1, f"tag in {name!r}")[0]
            if kind == 0:
                break
            if kind not in (20, 21):
                raise MRCFileError(self.path, f"unknown tag kind {kind} at byte {self.cur.pos - 1} "
                                              f"in {name!r}: the DM file is damaged")
            length = self.cur.big(">u2", "tag name length")
            label = self.cur.take(length, "tag name").decode("latin-1")
            if self.version == 4:
                entry_len = self.cur.big(">u8", f"length of tag {label!r}")
                self.cur.need(entry_len, f"tag {label!r}")
            child = f"{name}/{label}" if label else f"{name}/{len(unnamed)}"
            value = self._group(depth + 1, child) if kind == 20 else self._data(label)
            if label:
                key, k = label, 2
                while key in named:
                    key, k = f"{label} ({k})", k + 1
                named[key] = value
            else:
                unnamed.append(value)
        if unnamed and not named:
            return unnamed
        for i, value in enumerate(unnamed):
            named[str(i)] = value
        return named

    def _data(self, label: str) -> Any:
        if self.cur.take(4, f"tag {label!r}") != b"%%%%":
            raise MRCFileError(self.path, f"tag {label!r} at byte {self.cur.pos - 4} lacks its "
                                          "'%%%%' marker: the DM file is damaged")
        ninfo = self._count(f"type length of tag {label!r}", 0)
        width = 8 if self.version == 4 else 4
        self.cur.need(ninfo * width, f"type of tag {label!r}")
        if ninfo > 1 << 20:
            raise MRCFileError(self.path, f"tag {label!r} has an implausible type of {ninfo} codes")
        info = np.frombuffer(self.cur.take(ninfo * width, "tag type"), dtype=self.wide).tolist()
        kind, end = self._type(info, 0, label)
        if end != len(info):
            raise MRCFileError(self.path, f"tag {label!r}: type codes {info} do not describe one value")
        return self._value(kind, label)

    def _type(self, info: list[int], i: int, label: str) -> tuple[Any, int]:
        """Decode a type description: a numpy dtype, ('string', n) or ('array', type, n)."""
        if i >= len(info):
            raise MRCFileError(self.path, f"tag {label!r}: truncated type codes {info}")
        code = info[i]
        if code in SIMPLE_TYPES:
            return np.dtype(self.byteorder + SIMPLE_TYPES[code]), i + 1
        if code == STRING and i + 1 < len(info):
            return ("string", info[i + 1]), i + 2
        if code == STRUCT and i + 2 < len(info):
            nfields, j = info[i + 2], i + 3
            if not 0 <= nfields <= len(info):
                raise MRCFileError(self.path, f"tag {label!r}: struct of {nfields} fields")
            fields = []
            for k in range(nfields):
                j += 1  # field name length, always 0
                field, j = self._type(info, j, label)
                if not isinstance(field, np.dtype):
                    raise MRCFileError(self.path, f"tag {label!r}: struct field of type {field}")
                fields.append((f"f{k}", field))
            return np.dtype(fields), j
        if code == ARRAY and i + 1 < len(info):
            element, j = self._type(info, i + 1, label)
            if j >= len(info):
                raise MRCFileError(self.path, f"tag {label!r}: array without a length")
            if not isinstance(element, np.dtype):
                raise MRCFileError(self.path, f"tag {label!r}: array of {element}")
            return ("array", element, info[j]), j + 1
        raise MRCFileError(self.path, f"tag {label!r}: unknown type codes {info}")

    def _value(self, kind: Any, label: str) -> Any:
        cur = self.cur
        if isinstance(kind, np.dtype):
            value = np.frombuffer(cur.take(kind.itemsize, f"value of {label!r}"), dtype=kind)[0]
            return value.tolist() if kind.names else value.item()
        if kind[0] == "string":
            n = kind[1]
            cur.need(2 * n, f"string {label!r}")
            return cur.take(2 * n, label).decode("utf-16-le", errors="replace")
        _, element, count = kind
        nbytes = count * element.itemsize
        if count < 0:
            raise MRCFileError(self.path, f"array {label!r} of negative length {count}")
        cur.need(nbytes, f"array {label!r} of {count} x {element}")
        if label == "Data" or nbytes > INLINE_ARRAY_BYTES:
            ref = ArrayRef(cur.pos, element, count)
            cur.skip(nbytes, label)
            return ref
        values = np.frombuffer(cur.take(nbytes, label), dtype=element)
        if element.names:
            return [tuple(v) for v in values.tolist()]
        if element.kind == "u" and element.itemsize == 2:  # DM keeps text as uint16 arrays
            return values.astype("<u2").tobytes().decode("utf-16-le", errors="replace")
        return values.copy()
