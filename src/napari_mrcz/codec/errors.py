"""Exceptions raised for files the codec cannot read or write.

Every error names the file and the problem, so that a message shown to a user
(in napari's notification area, or a traceback) is enough to act on.
"""

from __future__ import annotations

import os


class MRCFileError(ValueError):
    """A file is not a readable MRC/MRCZ/DM file, or asks for something impossible.

    Parameters
    ----------
    path
        The file concerned.
    problem
        What is wrong with it, in words a user can act on.

    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class TruncatedFileError(MRCFileError):
    """The file ends before the data its header describes."""
