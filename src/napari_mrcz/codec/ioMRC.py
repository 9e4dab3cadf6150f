"""python-mrcz's ``mrcz.ioMRC`` module: its public names, for scripts that import it.

``from mrcz import ioMRC`` keeps working with ``from napari_mrcz.codec import
ioMRC``. As in python-mrcz, ``ioMRC.BLOSC2_PRESENT`` is read at every call:
setting it to ``False`` makes reads decode with python-blosc (c-blosc1) only,
setting it back to ``True`` lets them use python-blosc2 again.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import BinaryIO

from . import blosc_chunks
from .blosc_chunks import BLOSC_PRESENT, CAN_COMPRESS
from .header import (
    CCPEM_ENUM,
    COMPRESSOR_ENUM,
    EMAN2_ENUM,
    MRC_COMP_RATIO,
    REVERSE_CCPEM_ENUM,
    REVERSE_COMPRESSOR_ENUM,
)
from .mrc import (
    DEFAULT_HEADER_LEN,
    _asyncExecutor,
    _setAsyncWorkers,
    asyncReadMRC,
    asyncWriteMRC,
    defaultHeader,
    readMRC,
    readMRCHeader,
    setDefaultThreads,
    writeMRC,
    writeMRCHeader,
)

logger = logging.getLogger("napari_mrcz.codec")


def readBloscHeader(filehandle: BinaryIO) -> tuple[list[int], list[int]]:
    """Read the 16-byte header of the blosc chunk at a file's position.

    Parameters
    ----------
    filehandle
        A binary file positioned at a chunk; it is left just after the header.

    Returns
    -------
    sizes : list of int
        ``[nbytes, blocksize, cbytes]``.
    flags : list of int
        ``[version, versionlz, flags, typesize]``.

    Raises
    ------
    EOFError
        Fewer than 16 bytes remain.

    """
    head = filehandle.read(blosc_chunks.CHUNK_HEADER_BYTES)
    if len(head) < blosc_chunks.CHUNK_HEADER_BYTES:
        raise EOFError(f"{getattr(filehandle, 'name', 'file')}: a blosc chunk header needs 16 bytes, "
                       f"{len(head)} bytes remain")
    version, versionlz, flags, typesize, nbytes, blocksize, cbytes = blosc_chunks.parse_chunk_header(head)
    return [nbytes, blocksize, cbytes], [version, versionlz, flags, typesize]


read_mrc = readMRC
write_mrc = writeMRC
async_read_mrc = asyncReadMRC
async_write_mrc = asyncWriteMRC
read_mrc_header = readMRCHeader
write_mrc_header = writeMRCHeader
read_blosc_header = readBloscHeader
default_header = defaultHeader
set_default_threads = setDefaultThreads

__all__ = [  # noqa: F822 - BLOSC2_PRESENT is the module's property, below
    "BLOSC2_PRESENT", "BLOSC_PRESENT", "CAN_COMPRESS", "CCPEM_ENUM", "COMPRESSOR_ENUM",
    "DEFAULT_HEADER_LEN", "EMAN2_ENUM", "MRC_COMP_RATIO", "REVERSE_CCPEM_ENUM", "REVERSE_COMPRESSOR_ENUM",
    "asyncReadMRC", "asyncWriteMRC", "async_read_mrc", "async_write_mrc", "defaultHeader",
    "default_header", "readBloscHeader", "readMRC", "readMRCHeader", "read_blosc_header",
    "read_mrc", "read_mrc_header", "setDefaultThreads", "set_default_threads", "writeMRC",
    "writeMRCHeader", "write_mrc", "write_mrc_header", "_asyncExecutor", "_setAsyncWorkers",
]


class _IoMRC(types.ModuleType):
    """``ioMRC`` with ``BLOSC2_PRESENT`` forwarded to the decoder's switch."""

    @property
    def BLOSC2_PRESENT(self) -> bool:  # noqa: N802 - python-mrcz's name
        """Whether reads may decode with python-blosc2 (read at every call)."""
        return blosc_chunks.BLOSC2_PRESENT

    @BLOSC2_PRESENT.setter
    def BLOSC2_PRESENT(self, value: bool) -> None:  # noqa: N802
        blosc_chunks.use_blosc2(bool(value))


sys.modules[__name__].__class__ = _IoMRC
