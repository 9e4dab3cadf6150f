"""Gatan DigitalMicrograph DM3/DM4 files: every image, its calibrations, lazily.

:class:`DMFile` is the plain reader (for napari and scripts): data in file
order, exactly as DigitalMicrograph shows it, per-axis scale, origin and units,
the whole tag tree, and the thumbnail told apart from the data. Image data is
never read when the file is opened; :meth:`DMFile.read` fetches any range of
frames with positioned reads, and :meth:`DMFile.memmap` maps the data.

:class:`readDM4` is python-mrcz 0.6.0's class on top of it, with its
``imageInfo`` keys and its orientation: python-mrcz reverses the second axis
(x of a 2D image, y of a 3D stack), and so do we, as a view. RGB(A) images are
python-mrcz's too there: each pixel's 4 bytes as one packed word (``int32``).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dm_tags import ArrayRef, TagParser
from .errors import MRCFileError, TruncatedFileError
from .header import float32_value
from .positioned import PositionedFile, open_positioned

logger = logging.getLogger("napari_mrcz.codec")

#: DigitalMicrograph image data types -> numpy type of one stored sample.
DM_DATA_TYPES = {
    1: "i2", 2: "f4", 3: "c8", 5: "f4", 6: "u1", 7: "i4", 8: "u4", 9: "i1", 10: "u2", 11: "u4",
    12: "f8", 13: "c16", 14: "u1", 23: "u4", 27: "c8", 28: "c16", 39: "i8", 40: "u8",
}
#: The data type an image without a DataType tag has, from its Data array's element type.
_DATA_TYPE_OF_ELEMENT = {"i2": 1, "f4": 2, "u1": 6, "i4": 7, "i1": 9, "u2": 10, "u4": 11, "f8": 12,
                         "i8": 39, "u8": 40}
RGBA_TYPES = (8, 23)
#: Which stored byte each decoded channel (R, G, B, A) is: DM stores B, G, R, A.
RGBA_FROM_FILE = [2, 1, 0, 3]
PACKED_COMPLEX = 5
HALF_COMPLEX = (27, 28)
BOOL = 14


@dataclass
class Axis:
    """Calibration of one axis: ``value = (index - origin) * scale``, so offset = -origin x scale."""

    size: int
    scale: float = 1.0
    origin: float = 0.0
    units: str = ""

    @property
    def offset(self) -> float:
        """Calibrated value of index 0."""
        return -self.origin * self.scale


@dataclass
class DMImage:
    """One image of a DM file (not its data, which stays in the file until read).

    ``shape`` and ``axes`` are in numpy order (slowest first: z, y, x), the
    reverse of DM's dimension list. RGB(A) images have a trailing axis of 4
    uint8 channels (R, G, B, A); packed-complex FFTs are unpacked to complex.
    """

    index: int
    name: str
    data_type: int
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: list[Axis]
    intensity: Axis
    data: ArrayRef
    tags: dict
    is_thumbnail: bool = False
    stored_dtype: np.dtype = field(default_factory=lambda: np.dtype("u1"))

    @property
    def is_rgb(self) -> bool:
        """Whether the image is RGB(A) (a trailing axis of 4 channels)."""
        return self.data_type in RGBA_TYPES

    @property
    def is_fft(self) -> bool:
        """Whether the data is a packed or half-plane FFT, decoded only as a whole."""
        return self.data_type == PACKED_COMPLEX or self.data_type in HALF_COMPLEX


def _data_type_of(element: np.dtype) -> int | None:
    """The DM data type of samples stored as ``element`` (complex: a {real, imaginary} struct)."""
    if element.names:
        parts = {element.fields[name][0].str[1:] for name in element.names}
        if len(element.names) == 2 and parts in ({"f4"}, {"f8"}):
            return 3 if parts == {"f4"} else 13
        return None
    return _DATA_TYPE_OF_ELEMENT.get(element.str[1:])


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=lambda k: int(k) if k.isdigit() else 1 << 30)]
    return []


def _number(value: Any, default: float) -> float:
    """A calibration number; float32 values as the decimal DigitalMicrograph shows (1.1)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return float32_value(value) if float(np.float32(value)) == value else value


def _axis(size: int, cal: Any) -> Axis:
    cal = cal if isinstance(cal, dict) else {}
    units = cal.get("Units", "")
    return Axis(size=size, scale=_number(cal.get("Scale"), 1.0) or 1.0,
                origin=_number(cal.get("Origin"), 0.0), units=units if isinstance(units, str) else "")


class DMFile:
    """An open DM3/DM4 file.

    Parameters
    ----------
    path
        The ``.dm3`` or ``.dm4`` file, or its URL (``https://``, ``s3://``).

    Attributes
    ----------
    version : int
        3 or 4.
    tags : dict
        The whole tag tree as nested dicts (and lists for unnamed entries).
    images : list of DMImage
        Every image in the file, thumbnails included (``is_thumbnail``).

    Raises
    ------
    MRCFileError
        Not a DM file, or its tags are damaged; the message names the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._file = open_positioned(self.path)
        try:
            parser = TagParser(self._file, self.path)
            self.size = parser.cur.size
            self.version, self.byteorder, self.tags = parser.version, parser.byteorder, parser.root
            self.images = self._images()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def __enter__(self) -> DMFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def main_image(self) -> DMImage:
        """The largest image that is not a thumbnail."""
        data = [im for im in self.images if not im.is_thumbnail] or self.images
        if not data:
            raise MRCFileError(self.path, "the DM file holds no image")
        return max(data, key=lambda im: int(np.prod(im.shape)))

    def _images(self) -> list[DMImage]:
        root = self.tags if isinstance(self.tags, dict) else {}
        thumbs = {t.get("ImageIndex") for t in _as_list(root.get("Thumbnails")) if isinstance(t, dict)}
        images = []
        for index, entry in enumerate(_as_list(root.get("ImageList"))):
            if not isinstance(entry, dict) or not isinstance(entry.get("ImageData"), dict):
                continue
            images.append(self._image(index, entry, index in thumbs))
        return images

    def _image(self, index: int, entry: dict, is_thumbnail: bool) -> DMImage:
        info = entry["ImageData"]
        where = f"image {index}"
        data, data_type = info.get("Data"), info.get("DataType")
        dims = [int(d) for d in _as_list(info.get("Dimensions")) if isinstance(d, (int, float))]
        if not isinstance(data, ArrayRef) or not dims:
            raise MRCFileError(self.path, f"{where}: no image data or dimensions in its tags")
        if not isinstance(data_type, int):
            # Only DigitalMicrograph is bound to write DataType: other writers' files
            # say the sample type through the Data array's element type alone.
            data_type = _data_type_of(data.dtype)
            if data_type is None:
                raise MRCFileError(self.path, f"{where}: no DataType tag, and Data holds {data.dtype} "
                                              "elements, which are not image samples")
        if data_type not in DM_DATA_TYPES:
            raise MRCFileError(self.path,
                               f"{where}: DigitalMicrograph data type {data_type} is not supported")
        if any(d <= 0 for d in dims):
            raise MRCFileError(self.path, f"{where}: dimensions {dims} must be positive")
        stored = np.dtype(DM_DATA_TYPES[data_type])
        stored = stored if stored.itemsize == 1 else stored.newbyteorder(self.byteorder)
        shape = tuple(reversed(dims))
        n = int(np.prod(dims))
        if data_type in HALF_COMPLEX:
            n = int(np.prod(shape[:-1])) * (shape[-1] // 2 + 1)
        if data.nbytes != n * stored.itemsize:
            raise MRCFileError(
                self.path, f"{where}: {dims} {stored} needs {n * stored.itemsize} bytes of data, "
                f"the Data tag holds {data.nbytes} bytes")
        if data_type == PACKED_COMPLEX and (len(shape) != 2 or shape[0] != shape[1] or shape[0] % 2):
            raise MRCFileError(self.path, f"{where}: packed-complex data must be 2N x 2N, not {shape}")
        calibrations = info.get("Calibrations")
        calibrations = calibrations if isinstance(calibrations, dict) else {}
        cals = _as_list(calibrations.get("Dimension"))
        axes = [_axis(size, cals[k] if k < len(cals) else None) for k, size in enumerate(dims)][::-1]
        brightness = calibrations.get("Brightness")
        if data_type in RGBA_TYPES:
            dtype, shape = np.dtype("u1"), (*shape, 4)
        elif data_type == BOOL:
            dtype = np.dtype(bool)
        elif data_type == PACKED_COMPLEX:
            dtype = np.dtype("c8")
        else:
            dtype = stored
        name = entry.get("Name", "")
        return DMImage(index=index, name=name if isinstance(name, str) else "", data_type=data_type,
                       shape=shape, dtype=dtype, axes=axes, intensity=_axis(1, brightness), data=data,
                       tags=entry.get("ImageTags") if isinstance(entry.get("ImageTags"), dict) else {},
                       is_thumbnail=is_thumbnail, stored_dtype=stored)

    # -- data ----------------------------------------------------------------
    def _image_of(self, image: DMImage | int | None) -> DMImage:
        if image is None:
            return self.main_image
        if isinstance(image, DMImage):
            return image
        for im in self.images:
            if im.index == image:
                return im
        raise MRCFileError(self.path, f"no image {image} in the file")

    def read(self, image: DMImage | int | None = None, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Read an image, or frames ``start:stop`` of its first (slowest) axis.

        Parameters
        ----------
        image
            A :class:`DMImage`, an ImageList index, or ``None`` for :attr:`main_image`.
        start, stop
            Range along the first axis (z for a stack).

        Returns
        -------
        numpy.ndarray
            The data in file order, as DigitalMicrograph shows it.
        """
        im = self._image_of(image)
        shape = im.shape[:-1] if im.is_rgb else im.shape
        if im.is_fft or len(shape) == 1:
            start, stop = 0, None
        nz = shape[0]
        stop = nz if stop is None else stop
        if not 0 <= start <= stop <= nz:
            raise MRCFileError(self.path, f"frames {start}:{stop} are out of range 0:{nz}")
        per_frame = im.data.nbytes // nz
        raw = np.empty(((stop - start) * per_frame) // im.stored_dtype.itemsize, dtype=im.stored_dtype)
        view = memoryview(raw.view(np.uint8))
        offset = im.data.offset + start * per_frame
        done = self._file.readinto(offset, view)
        if done < len(view):
            raise TruncatedFileError(self.path, f"image {im.index}: data ends early at byte {offset + done}")
        return _decode(im, raw, stop - start)

    def memmap(self, image: DMImage | int | None = None) -> np.ndarray:
        """A read-only memory map of an image's data (plain numeric types, local files; others are read)."""
        im = self._image_of(image)
        if im.is_rgb or im.is_fft or not isinstance(self._file, PositionedFile):
            return self.read(im)
        mapped = np.memmap(self.path, dtype=im.stored_dtype, mode="r", offset=im.data.offset, shape=im.shape)
        return mapped.view(bool) if im.data_type == BOOL else mapped


def _decode(im: DMImage, raw: np.ndarray, frames: int) -> np.ndarray:
    """Turn stored samples into the image's decoded array."""
    shape = (frames, *im.shape[1:]) if len(im.shape) > 1 and not im.is_fft else im.shape
    if im.data_type in RGBA_TYPES:  # stored as B, G, R, A bytes of a little-endian word
        return raw.view(np.uint8).reshape(shape)[..., RGBA_FROM_FILE]
    if im.data_type == BOOL:
        return raw.view(bool).reshape(shape)
    if im.data_type in HALF_COMPLEX:
        ny, nx = im.shape[-2], im.shape[-1]
        half = raw.reshape(ny, nx // 2 + 1)
        return np.hstack((half[:, ::-1], np.conjugate(half[:, 1:-1])))
    if im.data_type == PACKED_COMPLEX:
        return _unpack_fft(raw.astype(np.float32), im.shape[0] // 2)
    return raw.reshape(shape)


def _unpack_fft(packed: np.ndarray, n: int) -> np.ndarray:
    """DigitalMicrograph's packed complex FFT of a 2N x 2N real image, made whole.

    The non-redundant half plane is stored as floats; the rest follows from
    Hermitian symmetry, A[i, j] = conj(A[-i, -j]).
    """
    out = np.zeros((2 * n, 2 * n), dtype=np.complex64)
    pairs = lambda a: a[0::2] + 1j * a[1::2]  # noqa: E731
    out[n, 0], out[0, 0] = packed[0], packed[1]
    out[n, n], out[0, n] = packed[2 * n * n], packed[2 * n * n + 1]
    for i in range(n):
        row = packed[2 * i * n + 2: 2 * i * n + 2 * n]
        out[i, n + 1:] = pairs(row)
    col = packed[2 * n: 2 * n + 2 * n * (n - 1)].reshape(n - 1, 2 * n)[:, :2]
    out[n + 1:, 0] = col[:, 0] + 1j * col[:, 1]
    start = 2 * n * n + 2
    out[n, n + 1:] = pairs(packed[start:start + 2 * (n - 1)])
    start += 2 * (n - 1)
    out[n + 1:, n:] = pairs(packed[start:start + 2 * n * (n - 1)]).reshape(n - 1, n)
    out[0, 1:n] = np.conjugate(out[0, -1:-n:-1])
    out[n, 1:n] = np.conjugate(out[n, -1:-n:-1])
    out[1:n, 0] = np.conjugate(out[-1:-n:-1, 0])
    out[1:n, n] = np.conjugate(out[-1:-n:-1, n])
    out[1:n, 1:n] = np.conjugate(out[-1:-n:-1, -1:-n:-1])
    out[n + 1:, 1:n] = np.conjugate(out[-n - 1:-2 * n:-1, -1:-n:-1])
    return out


# ---------------------------------------------------------------------------
# python-mrcz's readDM4
# ---------------------------------------------------------------------------
@dataclass(kw_only=True)
class DMImageCompat:
    """python-mrcz's ``DMImage``: ``imageInfo``, ``shape`` (numpy order) and ``imageData``."""

    imageInfo: dict = field(default_factory=dict)  # noqa: N815
    shape: Any = field(default_factory=list)
    imageData: np.ndarray = field(default_factory=lambda: np.zeros(1))  # noqa: N815


def _find(tree: Any, *names: str) -> Any:
    for name in names:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _search(tree: Any, last: str, parent: str, depth_back: int = 1) -> Any:
    """First value under ``tree`` whose key is ``last`` with ``parent`` ``depth_back`` levels up."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = [(str(i), v) for i, v in enumerate(node)]
        else:
            continue
        for key, value in reversed(items):
            full = (*path, key)
            if key == last and len(full) > depth_back and full[-1 - depth_back] == parent:
                return value
            stack.append((value, full))
    return None


def _packed_rgb(im: DMImage, rgba: np.ndarray) -> np.ndarray:
    """python-mrcz's RGB(A) image: each pixel's 4 bytes, in file order, as one word.

    The word has the Data array's type (int32 in DigitalMicrograph's files, as
    python-mrcz reads it), in the file's byte order.
    """
    word = im.data.dtype
    if word.kind not in "iu" or word.itemsize != 4:
        word = np.dtype(im.stored_dtype.byteorder + "i4")
    in_file = np.ascontiguousarray(rgba[..., np.argsort(RGBA_FROM_FILE)])
    return in_file.view(word).reshape(rgba.shape[:-1])


def _image_info(im: DMImage) -> dict:
    info: dict[str, Any] = {
        "IntensityOrigin": im.intensity.origin, "IntensityScale": im.intensity.scale,
        "IntensityUnits": im.intensity.units,
    }
    for axis, letter in zip(reversed(im.axes[-3:]), "XYZ", strict=False):
        info[f"Dim{letter}Origin"] = axis.origin
        info[f"Dim{letter}Scale"] = axis.scale
        info[f"Dim{letter}Units"] = axis.units
    acq = _find(im.tags, "Acquisition")
    for key, last, parent, back in (
            ("HorzFlip", "Horizontal Flip", "Device", 3), ("VertFlip", "Vertical Flip", "Device", 3),
            ("DiagFlip", "Diagonal Flip", "Device", 3), ("DetectorPixelSize", "Pixel Size (um)", "Device", 2),
            ("Exposure", "Exposure", "Detector", 1), ("HorzBin", "hbin", "Detector", 1),
            ("VertBin", "vbin", "Detector", 1)):
        value = _search(acq, last, parent, back) if acq is not None else None
        if value is not None:
            info[key] = value
    micro = _find(im.tags, "Microscope Info") or {}
    for key, tag in (("ActualMag", "Actual Magnification"), ("NominalMag", "Indicated Magnification"),
                     ("C3", "Cs(mm)"), ("Voltage", "Voltage"), ("MicroscopeMode", "Mode")):
        if tag in micro:
            info[key] = micro[tag]
    eels = _find(im.tags, "EELS Spectrometer") or {}
    for key, tag in (("EELSApertureIndex", "Aperture index"), ("EELSApertureLabel", "Aperture label"),
                     ("EELSEnergyLoss", "Energy loss (eV)"), ("EELSSlitIn", "Slit inserted"),
                     ("EELSSlitWidth", "Slit width (eV)")):
        if tag in eels:
            info[key] = eels[tag]
    lats = _find(im.tags, "Latitude-S") or {}
    for key, tag in (("LatSDistanceToFocus", "Distance To Focus Position"),
                     ("LatSIntendedDefocus", "Intended Defocus"), ("LatSBeamDiameter", "Beam Diameter (nm)")):
        if tag in lats:
            info[key] = lats[tag]
    dose = _find(im.tags, "Calibration", "Dose Rate", "Calibration")
    if dose is not None:
        info["DoseRateCalibration"] = [dose]
    return info


class readDM4:  # noqa: N801 - python-mrcz's public name
    """python-mrcz's DM3/DM4 reader: ``.im`` is the list of images in the file.

    Each entry has ``imageData`` (read into memory with its second axis
    reversed as a view, as python-mrcz does: x of a 2D image, y of a stack;
    1D spectra are not flipped; RGB(A) pixels are python-mrcz's packed 4-byte
    words, not channels; :class:`DMFile` serves large movies frame by frame,
    in file order, and RGB as uint8 channels, instead), ``imageInfo``
    (calibrations, voltage, C3, flips, detector pixel size ... under
    python-mrcz's keys) and ``shape``. The file is closed when
    the constructor returns. ``parseTag``, ``parseTagDir``, ``discardTag`` and
    ``retrieveTagData`` parse at the position of ``self.f`` when one is set.

    Parameters
    ----------
    filename
        The DM3/DM4 file.
    verbose
        Log the images found on the ``napari_mrcz.codec`` logger.
    """

    def __init__(self, filename: str | os.PathLike, verbose: bool = False) -> None:
        self.verbose = verbose
        self.im: list[DMImageCompat] = []
        self.f: Any = None
        with DMFile(filename) as dm:
            self.tags = dm.tags
            self.version = dm.version
            for image in dm.images:
                data = dm.read(image)
                if image.is_rgb:  # python-mrcz's packed words, shaped as the image's dimensions
                    data = _packed_rgb(image, data)
                shape = np.array(data.shape)
                if data.ndim >= 2:  # python-mrcz reverses its second axis, as a view
                    data = data[:, ::-1]
                if verbose:
                    logger.info("DM image %d %s %s at byte %d", image.index, image.shape, image.dtype,
                                image.data.offset)
                self.im.append(DMImageCompat(imageInfo=_image_info(image), shape=shape, imageData=data))

    # python-mrcz's parsing steps, usable on an open handle positioned at a tag.
    def _parser(self) -> TagParser:
        if self.f is None:
            raise ValueError("set self.f to an open DM file, positioned at a tag, first")
        return TagParser.positioned(_FileObject(self.f), getattr(self.f, "name", "DM file"), self.f.tell(),
                                    getattr(self, "version", 4))

    def _named(self, parser: TagParser) -> str:
        length = parser.cur.big(">u2", "tag name length")
        name = parser.cur.take(length, "tag name").decode("latin-1")
        if parser.version == 4:
            parser.cur.big(">u8", "tag length")
        return name

    def parseTag(self, parent: bytes) -> Any:
        """Parse the data tag at ``self.f`` (after its kind byte); returns its value."""
        parser = self._parser()
        name = self._named(parser)
        value = parser._data(name)
        self.f.seek(parser.cur.pos)
        return value

    def parseTagDir(self, parent: bytes) -> Any:
        """Parse the tag group at ``self.f`` (after its kind byte); returns it as dicts."""
        parser = self._parser()
        name = self._named(parser)
        value = parser._group(0, name)
        self.f.seek(parser.cur.pos)
        return value

    def discardTag(self) -> None:
        """Skip the tag at ``self.f`` (after its kind byte)."""
        self.parseTag(b"")

    def retrieveTagData(self, tag_ninfo: int) -> Any:
        """Read a tag's value at ``self.f``, positioned after '%%%%' and its type length."""
        parser = self._parser()
        width = 8 if parser.version == 4 else 4
        info = np.frombuffer(parser.cur.take(tag_ninfo * width, "tag type"), dtype=parser.wide).tolist()
        kind, _ = parser._type(info, 0, "tag")
        value = parser._value(kind, "tag")
        self.f.seek(parser.cur.pos)
        return value


class _FileObject:
    """A caller's open binary file, read at offsets (it is repositioned after each parse)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def pread(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)


def asyncReadDM4(*args: Any, **kwargs: Any) -> Future:
    """Run :class:`readDM4` in a background thread.

    Returns
    -------
    concurrent.futures.Future
        ``future.result()`` gives the :class:`readDM4` object.
    """
    from .mrc import _asyncExecutor

    return _asyncExecutor.submit(readDM4, *args, **kwargs)
