"""A small DigitalMicrograph DM3/DM4 writer, for tests and benchmarks only.

It writes what DigitalMicrograph writes for images: a tag tree whose
ImageList holds a thumbnail and the image (Data, DataType, Dimensions,
Calibrations, ImageTags, Name), a Thumbnails list, in either byte order and
either version. It is checked against the real files in ../shared/data/dm and
against python-mrcz's independent DM4 reader (tests/test_dm.py).
"""

from __future__ import annotations

import struct

import numpy as np

CODES = {"i2": 2, "i4": 3, "u2": 4, "u4": 5, "f4": 6, "f8": 7, "b1": 8, "i1": 9, "u1": 10, "i8": 11,
         "u8": 12}
#: numpy dtype -> DigitalMicrograph image DataType
DATA_TYPES = {"int16": 1, "float32": 2, "complex64": 3, "uint8": 6, "int32": 7, "int8": 9, "uint16": 10,
              "uint32": 11, "float64": 12, "complex128": 13, "bool": 14, "int64": 39, "uint64": 40}


class Text(str):
    """A string stored as DM stores text: an array of uint16."""


class String(str):
    """A string stored with DM's string type (18)."""


class Hole:
    """Image data left as a sparse hole of zeros: lets tests make huge files cheaply."""

    def __init__(self, count: int, dtype: str) -> None:
        self.dtype, self.size = np.dtype(dtype), count

    def __len__(self) -> int:
        return self.size * self.dtype.itemsize


def _join(pieces: list) -> list:
    """Concatenate adjacent bytes, keeping holes as they are."""
    out: list = []
    for piece in pieces:
        if isinstance(piece, list):
            piece_list = _join(piece)
        else:
            piece_list = [piece]
        for p in piece_list:
            if out and isinstance(p, bytes) and isinstance(out[-1], bytes):
                out[-1] += p
            else:
                out.append(p)
    return out


def _length(pieces: list) -> int:
    return sum(len(p) for p in pieces)


class Writer:
    def __init__(self, version: int, byteorder: str) -> None:
        self.version, self.bo = version, byteorder
        self.wide = ">q" if version == 4 else ">i"

    def count(self, n: int) -> bytes:
        return struct.pack(self.wide, n)

    def info_value(self, value) -> tuple[list[int], bytes | Hole]:
        """Type codes and value bytes of one tag value."""
        if isinstance(value, Hole):
            return [20, CODES[value.dtype.str[1:]], value.size], value
        if isinstance(value, String):
            return [18, len(value)], value.encode("utf-16-le")
        if isinstance(value, str):
            arr = np.frombuffer(value.encode("utf-16-le"), dtype="<u2")
            return [20, 4, arr.size], arr.astype(self.bo + "u2").tobytes()
        if isinstance(value, bool):
            return [8], bytes([value])
        if isinstance(value, int):
            return [3], struct.pack(self.bo + "i", value)
        if isinstance(value, float):
            return [7], struct.pack(self.bo + "d", value)
        if isinstance(value, tuple):  # struct of float32 (as DM's rectangles and points)
            codes = [15, 0, len(value)]
            for _ in value:
                codes += [0, 6]
            return codes, np.asarray(value, dtype=self.bo + "f4").tobytes()
        if isinstance(value, np.generic):
            arr = np.asarray(value)
            return [CODES[arr.dtype.str[1:]]], arr.astype(arr.dtype.newbyteorder(self.bo)).tobytes()
        arr = np.asarray(value)
        if arr.dtype.kind == "c":  # DM stores complex data as an array of {real, imag} structs
            part = CODES["f4" if arr.dtype.itemsize == 8 else "f8"]
            codes = [20, 15, 0, 2, 0, part, 0, part, arr.size]
            return codes, arr.astype(arr.dtype.newbyteorder(self.bo)).tobytes()
        key = "u1" if arr.dtype == bool else arr.dtype.str[1:]
        return [20, CODES[key], arr.size], arr.astype(arr.dtype.newbyteorder(self.bo)).tobytes()

    def entry(self, name: str, value) -> list:
        label = name.encode("latin-1")
        if isinstance(value, (dict, list)):
            kind, payload = 20, self.group(value)
        else:
            codes, data = self.info_value(value)
            kind = 21
            payload = _join([b"%%%%" + self.count(len(codes)) + b"".join(self.count(c) for c in codes),
                             data])
        head = bytes([kind]) + struct.pack(">H", len(label)) + label
        if self.version == 4:
            head += struct.pack(">Q", _length(payload))
        return _join([head, payload])

    def group(self, tree) -> list:
        items = [("", v) for v in tree] if isinstance(tree, list) else list(tree.items())
        return _join([bytes([1, 0]) + self.count(len(items))] + [self.entry(k, v) for k, v in items])

    def pieces(self, root: dict) -> list:
        body = self.group(root)
        length = struct.pack(">Q" if self.version == 4 else ">I", _length(body))
        head = struct.pack(">i", self.version) + length + struct.pack(">i", 1 if self.bo == "<" else 0)
        return _join([head, body])

    def file(self, root: dict) -> bytes:
        pieces = self.pieces(root)
        assert all(isinstance(p, bytes) for p in pieces)
        return b"".join(pieces)


def image_entry(data: np.ndarray, *, rgb: bool = False, scales=None, origins=None, units=None,
                name: str = "image", tags: dict | None = None, data_type: int | None = None,
                stored: np.ndarray | None = None) -> dict:
    """The ImageList entry DigitalMicrograph writes for ``data`` (numpy order)."""
    shape = data.shape[:-1] if rgb else data.shape
    dims = list(reversed(shape))
    n = len(dims)
    scales = scales or [1.0] * n
    origins = origins or [0.0] * n
    units = units or [""] * n
    if rgb:
        stored = np.ascontiguousarray(data[..., [2, 1, 0, 3]]).view("<i4").reshape(shape)
        data_type = 23
    elif isinstance(stored, Hole):
        data_type = DATA_TYPES[stored.dtype.name]
    elif stored is None:
        stored = data.view(np.uint8) if data.dtype == bool else data
        data_type = DATA_TYPES[data.dtype.name]
    calibrations = {
        "Brightness": {"Origin": np.float32(0.0), "Scale": np.float32(1.0), "Units": "counts"},
        "Dimension": [{"Origin": np.float32(o), "Scale": np.float32(s), "Units": u}
                      for s, o, u in zip(reversed(scales), reversed(origins), reversed(units), strict=True)],
        "DisplayCalibratedUnits": True,
    }
    return {
        "ImageData": {"Calibrations": calibrations,
                      "Data": stored if isinstance(stored, Hole) else stored.reshape(-1),
                      "DataType": data_type, "Dimensions": [int(d) for d in dims],
                      "PixelDepth": int(stored.dtype.itemsize)},
        "ImageTags": tags or {},
        "Name": name,
        "UniqueID": {"0": 7, "1": 8, "2": 9, "3": 10},
    }


def thumbnail_entry() -> dict:
    thumb = np.zeros((8, 8, 4), np.uint8)
    thumb[..., 3] = 255
    return image_entry(thumb, rgb=True, name="thumbnail")


def write_dm(path, images: list[dict], *, version: int = 4, byteorder: str = "<",
             thumbnail: bool = True) -> None:
    """Write a DM file holding a thumbnail (ImageList entry 0) and ``images``."""
    entries = ([thumbnail_entry()] if thumbnail else []) + images
    root = {
        "ApplicationBounds": (0.0, 0.0, 1024.0, 1280.0),
        "DocumentObjectList": [{"AnnotationType": 20, "ImageDisplayType": 1}],
        "ImageList": entries,
        "Thumbnails": [{"ImageIndex": 0, "SourceSize_Pixels": (8.0, 8.0)}] if thumbnail else [],
    }
    with open(path, "wb") as f:
        for piece in Writer(version, byteorder).pieces(root):
            if isinstance(piece, Hole):
                f.seek(len(piece), 1)
            else:
                f.write(piece)
