"""python-mrcz 0.6.0's own test suite, run against our codec under the name ``mrcz``.

The suite ships in the python-mrcz wheel (``mrcz/test_mrcz.py``, 72 tests). It
is loaded from there, with ``sys.modules['mrcz']`` (and ``mrcz.ioMRC``,
``mrcz.ioDM``) pointing at :mod:`napari_mrcz.codec` while its module body runs
and while each of its tests runs, so ``import mrcz`` and ``from mrcz import
ioMRC`` inside it reach our codec. The rest of our suite keeps the real
python-mrcz as its oracle: the swap is undone after every test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from napari_mrcz import codec
from napari_mrcz.codec import ioDM, ioMRC

OURS = {"mrcz": codec, "mrcz.ioMRC": ioMRC, "mrcz.ioDM": ioDM}


def _upstream_suite():
    spec = importlib.util.find_spec("mrcz")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("python-mrcz 0.6.0 is not installed: make test installs it (the 'test' extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "test_mrcz.py"
    saved = {name: sys.modules.get(name) for name in OURS}
    sys.modules.update(OURS)
    try:
        module_spec = importlib.util.spec_from_file_location("python_mrcz_upstream_suite", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    assert module.mrcz is codec
    return module


_suite = _upstream_suite()
# Re-export its tests and its own fixture (rng seeded 42) so pytest collects them here.
globals().update({name: value for name, value in vars(_suite).items()
                  if name.startswith(("Test", "test_")) or name == "rng"})


@pytest.fixture(autouse=True)
def _mrcz_is_our_codec(monkeypatch):
    for name, module in OURS.items():
        monkeypatch.setitem(sys.modules, name, module)
