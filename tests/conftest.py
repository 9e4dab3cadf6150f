"""Shared fixtures: the real test files in ../shared/data and small helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MRCZ_DATA", ROOT.parent / "shared" / "data"))


def data_path(*parts: str) -> Path:
    """A file of the shared test data; skips (saying why) only where the folder is absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared test data not found at {DATA} (set NAPARI_MRCZ_DATA)")
    return DATA.joinpath(*parts)


def expected(folder: str) -> dict:
    """The expected.json of one data folder ({} when the data is absent, so nothing is generated)."""
    path = DATA / folder / "expected.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def make_stack(rng: np.random.Generator, dtype: str, shape=(3, 20, 24)) -> np.ndarray:
    """Random data that uses the type's range (negative values included where it has them)."""
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dt)
    if dt.kind == "f":
        return (rng.normal(size=shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
