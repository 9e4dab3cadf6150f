"""Gatan DigitalMicrograph DM3/DM4 files (filled in by the DM reader issue)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any


class readDM4:  # noqa: N801 - python-mrcz's public name
    """python-mrcz's DM4 reader (not implemented yet).

    Parameters
    ----------
    filename
        The DM3/DM4 file.
    verbose
        Print tags as they are parsed.

    """

    def __init__(self, filename: str, verbose: bool = False) -> None:
        raise NotImplementedError("DM3/DM4 reading is not implemented yet")


def asyncReadDM4(*args: Any, **kwargs: Any) -> Future:
    """Run :class:`readDM4` in a background thread."""
    from .mrc import _asyncExecutor

    return _asyncExecutor.submit(readDM4, *args, **kwargs)
