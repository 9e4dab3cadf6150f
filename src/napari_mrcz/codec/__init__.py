"""napari-mrcz's embedded MRC/MRCZ/DM codec, with python-mrcz 0.6.0's API.

No napari or Qt here: scripts and pipelines can ``from napari_mrcz import codec``
and use it exactly as they used ``mrcz``::

    image, meta = codec.readMRC("movie.mrcz")
    codec.writeMRC(image, "copy.mrcz", pixelsize=meta["pixelsize"], compressor="zstd")

Modules: ``header`` (the MRC2014 header), ``blosc_chunks`` (one blosc chunk
per z-section), ``chunk_index`` and ``chunk_trailer`` (where each chunk
starts: walked, saved, or written at the end of our files), ``positioned``
(reads at offsets, on every system), ``remote`` (``https://`` and ``s3://``
URLs, by Range requests), ``stack`` (random access to z-sections), ``mrc``
(the python-mrcz functions), ``atomic`` (safe replacement of files),
``dm_tags`` (the DM3/DM4 tag tree), ``dm`` (DigitalMicrograph images and
python-mrcz's ``readDM4``), ``binning`` (block means), ``pyramid`` (binned
levels of volumes, cached), ``errors``; ``ioMRC`` and ``ioDM`` carry
python-mrcz's module names for scripts that import them.
"""

from __future__ import annotations

from .._version import __version__
from . import ioDM, ioMRC
from .blosc_chunks import BLOSC2_PRESENT, BLOSC_PRESENT, CAN_COMPRESS
from .dm import DMFile, DMImage, asyncReadDM4, readDM4
from .errors import MRCFileError, TruncatedFileError
from .header import COMPRESSOR_ENUM, REVERSE_CCPEM_ENUM, REVERSE_COMPRESSOR_ENUM
from .mrc import (  # noqa: F401 - python-mrcz exposes them too
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
from .stack import MRCStack

read_mrc = readMRC
write_mrc = writeMRC
async_read_mrc = asyncReadMRC
async_write_mrc = asyncWriteMRC
read_mrc_header = readMRCHeader
write_mrc_header = writeMRCHeader
default_header = defaultHeader
set_default_threads = setDefaultThreads
read_dm4 = readDM4
async_read_dm4 = asyncReadDM4

__all__ = [
    "BLOSC2_PRESENT", "BLOSC_PRESENT", "CAN_COMPRESS", "COMPRESSOR_ENUM", "DMFile", "DMImage",
    "MRCFileError",
    "MRCStack", "REVERSE_CCPEM_ENUM", "ioDM", "ioMRC", "REVERSE_COMPRESSOR_ENUM", "TruncatedFileError",
    "__version__", "asyncReadDM4", "asyncReadMRC", "asyncWriteMRC", "async_read_dm4",
    "async_read_mrc", "async_write_mrc", "defaultHeader", "default_header", "readDM4",
    "readMRC", "readMRCHeader", "read_dm4", "read_mrc", "read_mrc_header",
    "setDefaultThreads", "set_default_threads", "test", "writeMRC", "writeMRCHeader",
    "write_mrc", "write_mrc_header",
]


def test(verbosity: int = 2) -> int:
    """Run the codec's own self-tests (shipped with the package) with pytest.

    Parameters
    ----------
    verbosity
        2 lists every test, 1 the default, 0 or less is quiet.

    Returns
    -------
    int
        pytest's exit code: 0 when every test passed.

    """
    import os

    import pytest

    args = [os.path.join(os.path.dirname(__file__), "selftest"), "-p", "no:cacheprovider"]
    if verbosity >= 2:
        args.append("-v")
    elif verbosity <= 0:
        args.append("-q")
    return int(pytest.main(args))
