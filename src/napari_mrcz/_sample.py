"""napari sample data: a counting-mode cryo-EM movie (MRCZ) and a tomogram (MRC).

The files are made once (synthetic, no download) in the user's cache folder
and opened through the plugin's own reader, so the layers are lazy and carry
the files' metadata like any opened file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import samples
from ._reader import LayerData, read_layers
from .codec import writeMRC


def sample_folder() -> Path:
    """Where the sample files live (``$XDG_CACHE_HOME/napari-mrcz`` or a temp folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "napari-mrcz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "napari-mrcz"
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def sample_movie_path() -> Path:
    """The sample movie, written on first use."""
    path = sample_folder() / "sample_movie.mrcz"
    if not path.exists():
        samples.write_sample_movie(path, nframes=24, size=1024)
    return path


def sample_movie() -> list[LayerData]:
    """A 24-frame counting-mode movie (1024 x 1024 int8, zstd MRCZ)."""
    return read_layers(str(sample_movie_path()))


def sample_tomogram() -> list[LayerData]:
    """A 96 x 384 x 384 float32 tomogram of a cell's edge (plain MRC, 10 Å voxels)."""
    path = sample_folder() / "sample_tomogram.rec"
    if not path.exists():
        writeMRC(samples.tomogram(), path, pixelsize=[10.0, 10.0, 10.0], voltage=300.0, C3=2.7)
    return read_layers(str(path))
