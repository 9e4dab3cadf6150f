"""The npe2 manifest at the repository root is the one shipped, editable and in the wheel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

from .conftest import data_path, script
from .plain_install import plain_python

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


def test_a_plain_pip_install_of_the_checkout_brings_only_what_the_codec_needs(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                           "--no-build-isolation", "--quiet", "--report", str(report), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert names == {"napari-mrcz", "numpy", "blosc", "platformdirs"}


def test_the_codec_and_info_run_with_the_base_dependencies_alone(tmp_path):
    python, env = plain_python(tmp_path / "plain-install")
    check = subprocess.run([*python, "-c", "import napari"], capture_output=True, text=True, env=env)
    assert "No module named 'napari'" in check.stderr, "the plain Python sees more than the base install"
    code = ("import sys, numpy as np\n"
            "from napari_mrcz import codec\n"
            f"path = {str(tmp_path / 'x.mrcz')!r}\n"
            "codec.writeMRC(np.arange(24, dtype=np.float32).reshape(2, 3, 4), path, compressor='zstd')\n"
            "image, meta = codec.readMRC(path)\n"
            "assert image.tolist() == np.arange(24).reshape(2, 3, 4).tolist()\n"
            "print(sorted(m for m in sys.modules if '.' not in m and m not in sys.stdlib_module_names\n"
            "             and not m.startswith('__')))\n")
    done = subprocess.run([*python, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['blosc', 'napari_mrcz', 'numpy']", "import napari_mrcz.codec stays light"
    dm = data_path("dm", "ncempy_dmTest_3D_int16_64-65-66.dm4")
    info = subprocess.run([*python, "-m", "napari_mrcz", "info", str(tmp_path / "x.mrcz"), str(dm)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert info.returncode == 0, info.stderr
    assert "MRCZ (zstd)" in info.stdout and "DM4" in info.stdout


def test_the_install_lines_of_the_docs_install_from_a_checkout_with_extras_that_exist():
    from importlib.metadata import metadata

    extras = set(metadata("napari-mrcz").get_all("Provides-Extra"))
    found: dict[str, set[str]] = {}
    for doc in ("README.md", "docs/index.md", "docs/scaling.md"):
        text = (ROOT / doc).read_text()
        assert "pip install napari-mrcz" not in text and 'pip install "napari-mrcz' not in text, \
            f"{doc} installs a release that is not on PyPI"
        found[doc] = {e for group in re.findall(r'pip install (?:-e )?"\.\[([a-z0-9,]+)\]"', text)
                      for e in group.split(",")}
        assert found[doc] <= extras, f"{doc} names extras pyproject.toml lacks: {found[doc] - extras}"
    assert found["docs/index.md"] <= found["README.md"], "the guide's install lines are the README's"
