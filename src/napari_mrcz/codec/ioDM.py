"""python-mrcz's ``mrcz.ioDM`` module: its public names, for scripts that import it.

``from mrcz import ioDM`` keeps working with ``from napari_mrcz.codec import ioDM``.
"""

from __future__ import annotations

from .dm import DMImageCompat as DMImage
from .dm import asyncReadDM4, readDM4

read_dm4 = readDM4
async_read_dm4 = asyncReadDM4

__all__ = ["DMImage", "asyncReadDM4", "async_read_dm4", "readDM4", "read_dm4"]
