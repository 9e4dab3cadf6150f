"""A pytest plugin that runs the tests as Windows would: ``pytest -p tests.without_posix``.

Loaded before any test module imports the codec, it removes from ``os`` and
``mmap`` what Windows' Python lacks (positioned reads, thread priorities,
``fchmod``, ``madvise``'s flags), so the codec takes its portable path. It also
gives ``os.replace`` Windows' rule: a file that this process holds open or
memory-mapped cannot be renamed over (``PermissionError``, as Windows says it),
and tells the codec it runs under that rule. Linux's ``/proc`` tells which
files are open or mapped.

``tests/test_portable.py`` runs the read, lazy-frame and save-over tests again
in a subprocess with this plugin.
"""

from __future__ import annotations

import mmap
import os

REMOVED = [name for name in ("pread", "preadv", "pwrite", "pwritev", "setpriority", "fchmod")
           if hasattr(os, name)]
for _name in REMOVED:
    delattr(os, _name)
for _name in [n for n in dir(mmap) if n.startswith("MADV_")]:
    delattr(mmap, _name)
    REMOVED.append(f"mmap.{_name}")

_posix_replace = os.replace


def _held_open(path: str) -> str | None:
    """How this process holds ``path`` ("open" or "memory-mapped"), or None."""
    target = os.path.realpath(path)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                return "open"
        except OSError:
            continue
    with open("/proc/self/maps") as maps:
        if any(line.rstrip("\n").endswith(" " + target) for line in maps):
            return "memory-mapped"
    return None


def _windows_replace(src: str | os.PathLike, dst: str | os.PathLike, **kwargs: object) -> None:
    if os.path.exists(dst) and (how := _held_open(os.fspath(dst))):
        raise PermissionError(13, f"The process cannot access the file because it is being used "
                                  f"by another process ({how})", os.fspath(dst))
    _posix_replace(src, dst, **kwargs)


os.replace = _windows_replace

from napari_mrcz.codec import positioned  # noqa: E402  (after the removals, on purpose)

positioned.REPLACE_NEEDS_CLOSED_FILES = True


def pytest_report_header(config: object) -> str:
    """Say in the run's header that this is the portable path."""
    return f"portable path: removed {', '.join(REMOVED)}; os.replace refuses open files"
