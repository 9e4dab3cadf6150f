"""The npe2 manifest at the repository root is the one shipped, editable and in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

from .conftest import script

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_ships_the_root_manifest_and_npe2_accepts_it():
    shipped = resources.files("napari_mrcz").joinpath("napari.yaml").read_text()
    assert shipped == (ROOT / "napari.yaml").read_text()
    npe2 = script("npe2")
    result = subprocess.run([npe2, "validate", "napari-mrcz"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_wheel_ships_the_root_manifest(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("napari_mrcz-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("napari_mrcz/napari.yaml").decode() == (ROOT / "napari.yaml").read_text()
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "napari-mrcz = napari_mrcz:napari.yaml" in zf.read(entry_points).decode()
        assert "napari_mrcz/codec/selftest/test_codec.py" in zf.namelist()


def test_the_ci_workflow_covers_three_systems_and_four_pythons():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["test"]
    assert job["strategy"]["matrix"] == {"platform": ["ubuntu-latest", "windows-latest", "macos-latest"],
                                         "python-version": ["3.10", "3.11", "3.12", "3.13"]}
    steps = {step.get("name", step.get("uses")): step for step in job["steps"]}
    assert steps["make test"]["run"] == "make test" and steps["make test"]["if"] == "runner.os == 'Linux'"
    assert "pytest" in steps["pytest"]["with"]["run"] and steps["pytest"]["if"] == "runner.os != 'Linux'"
    from importlib.metadata import metadata

    classifiers = metadata("napari-mrcz").get_all("Classifier")
    assert {"Operating System :: Microsoft :: Windows", "Operating System :: MacOS",
            "Operating System :: POSIX :: Linux"} <= set(classifiers)
