"""What ``pip install .`` (no extras) leaves: the base dependencies of pyproject.toml and nothing else.

:func:`plain_python` builds a folder that holds only napari-mrcz's sources
and the installed files of its base dependencies (linked, not copied), and
returns the command and environment of a Python that sees nothing else:
``-S`` leaves out site-packages, ``PYTHONPATH`` names the folder. Processes
it spawns (the batch's worker pool) inherit both.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_dependencies() -> list[str]:
    """The distributions napari-mrcz requires without an extra (pyproject.toml's ``dependencies``)."""
    specs = [r for r in metadata.requires("napari-mrcz") or [] if "extra ==" not in r]
    return [re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for spec in specs]


def plain_python(folder: Path) -> tuple[list[str], dict[str, str]]:
    """``(command, env)`` of a Python with only napari-mrcz and its base dependencies importable."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in base_dependencies():
        dist = metadata.distribution(name)
        top = {Path(str(f)).parts[0] for f in dist.files or []}
        for entry in top - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(entry)))
            if source.exists() and not (folder / entry).exists():
                (folder / entry).symlink_to(source, target_is_directory=source.is_dir())
    (folder / "napari_mrcz").symlink_to(ROOT / "src" / "napari_mrcz", target_is_directory=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(folder)}
    return [sys.executable, "-S"], env
