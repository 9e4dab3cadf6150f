"""napari-mrcz: open, view, edit and save MRC, MRCZ and Gatan DM3/DM4 files in napari.

The format knowledge lives in :mod:`napari_mrcz.codec`, which has no napari or
Qt imports; the napari side (reader, writer, dock widget, sample data) is thin.
"""

from ._version import __version__

__all__ = ["__version__"]
