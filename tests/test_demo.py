"""The demo's tomogram in 3D, in a real napari window: what it draws shows the phantom's structures.

The phantom (``samples.Tomogram``) puts a plasma membrane, vesicles,
filaments and ribosomes in noise at a per-voxel signal-to-noise ratio of a
real tomogram. These tests take what napari draws of each visible layer (a
slab averaged across, or a projection), and the noiseless phantom treated the
same way, and ask what a user would ask of the picture: does each kind of
structure stand out from the ice around it, and do the contrast limits show
it (not clipped to black or white with the ice)?
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

from napari_mrcz import _pyramid, demo, samples
from napari_mrcz.codec.pyramid import plan_levels

#: A small tomogram (25 MB) whose slabs at mid-depth and at the front meet every kind of structure.
DEPTH, SIZE = 64, 320
#: Coarsest levels of at most 4 MB here: this one is binned 2x, as the demo's 0.5 GB tomogram.
COARSEST = 4 << 20
#: How far (in the drawn image's own noise SDs) a structure must stand from the ice around it.
MIN_SDS = 4.0


@pytest.fixture
def tomogram(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MRCZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_pyramid, "plan_levels", functools.partial(plan_levels, coarsest_bytes=COARSEST))
    return demo.write_tomogram(tmp_path, depth=DEPTH, size=SIZE)


def binned(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block means, as the coarse levels are made (the sizes here divide evenly)."""
    d, y, x = (s // factor for s in volume.shape)
    return volume.reshape(d, factor, y, factor, x, factor).mean(axis=(1, 3, 5))


def parts(factor: int) -> dict[str, np.ndarray]:
    """The noiseless phantom, one kind of structure at a time, binned ``factor``."""
    full = samples.Tomogram(DEPTH, SIZE)
    out = {}
    for kind in ("membrane", "vesicles", "filaments", "ribosomes"):
        part = copy.copy(full)
        part.vesicles, part.particles, part.filaments = full.vesicles[:0], full.particles[:0], []
        part.membrane = (-1e6, 0.0, 1.0)  # far away: no membrane
        if kind == "membrane":
            part.membrane = full.membrane
        elif kind == "vesicles":
            part.vesicles = full.vesicles
        elif kind == "filaments":
            part.filaments = full.filaments
        else:
            part.particles = full.particles
        out[kind] = binned(np.stack([part.density(i) for i in range(DEPTH)]), factor)
    return out


def drawn(layer, volume: np.ndarray, density: bool = False) -> np.ndarray:
    """What napari draws of ``volume`` for ``layer`` in 3D: a slab's mean (or min, max), or a projection.

    With ``density``, ``volume`` is the phantom's (dense matter high, not
    dark): the darkest voxel napari picks is then the densest one.
    """
    reductions = {"average": (np.mean, np.mean), "minip": (np.min, np.max), "mip": (np.max, np.min)}
    assert layer.rendering in reductions, f"{layer.rendering}: not measured here"
    reduce = reductions[layer.rendering][density]
    if layer.depiction != "plane":  # a volume: seen along z
        return reduce(volume, axis=0)
    normal = np.abs(np.asarray(layer.plane.normal, dtype=float))
    assert np.count_nonzero(normal) == 1, "an oblique slab: not measured here"
    axis = int(np.argmax(normal))
    middle, half = float(layer.plane.position[axis]), float(layer.plane.thickness) / 2
    planes = [i for i in range(volume.shape[axis]) if abs(i - middle) <= half + 1e-6]
    assert planes, (middle, half)
    return reduce(np.take(volume, planes, axis=axis), axis=axis)


def measure(layer, phantom: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float, int]]:
    """Each kind of structure in what ``layer`` draws: (its mean, the ice's mean, the ice's SD, pixels)."""
    data = np.asarray(layer.data[-1] if layer.multiscale else layer.data, dtype=np.float32)
    image = drawn(layer, data)
    truth = {kind: drawn(layer, density, density=True) for kind, density in phantom.items()}
    ice = sum(truth.values()) < 0.01
    assert ice.sum() > 500, "too little ice in the slab to measure the noise"
    out = {}
    for kind, density in truth.items():
        on = density > 0.5 * max(float(density.max()), 1e-6)
        if density.max() > 0.05 and on.sum() >= 20:
            out[kind] = (float(image[on].mean()), float(image[ice].mean()), float(image[ice].std()),
                         int(on.sum()))
    return out


def test_the_3d_view_shows_membrane_vesicles_filaments_and_ribosomes(make_napari_viewer, qtbot, tomogram):
    viewer = make_napari_viewer(show=True)
    view = demo.TomogramView(viewer, tomogram)
    qtbot.waitUntil(lambda: view.done, timeout=60_000)
    assert view.layer.multiscale and view.factor == 2  # the file's layer, binned as in the demo
    shown = [layer for layer in viewer.layers if layer.visible]
    assert shown and view.layer not in shown
    for layer in shown:  # honest about what it is: a filtered view
        assert "low-pass" in layer.name and "binned 2×" in layer.name, layer.name
    phantom = parts(view.factor)
    best: dict[str, float] = {}
    for layer in shown:
        lo, hi = layer.contrast_limits
        for kind, (inside, ice, sd, n) in measure(layer, phantom).items():
            sds = (ice - inside) / sd  # dense matter is dark
            best[kind] = max(best.get(kind, -np.inf), sds)
            print(f"{layer.name}: {kind} ({n} px) {sds:.1f} SD darker than the ice; "
                  f"{(ice - inside) / (hi - lo):.2f} of the contrast range")
            assert lo < ice < hi, f"{layer.name}: the ice is clipped ({ice:.3f} outside {lo:.3f}..{hi:.3f})"
            if sds >= MIN_SDS:  # seen here: within the range, a visible step darker than the ice
                assert (ice - inside) / (hi - lo) > 0.15, (layer.name, kind)
                if kind != "ribosomes":  # the densest: may go black
                    assert inside > lo, f"{layer.name}: {kind} clipped to black"
    for kind in ("membrane", "vesicles", "filaments", "ribosomes"):
        assert best.get(kind, -np.inf) >= MIN_SDS, f"{kind}: at most {best.get(kind)} SD off the ice ({best})"
