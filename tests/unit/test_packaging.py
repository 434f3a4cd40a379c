"""The wheel holds what an installed copy needs: every package, and CLINC150 inside `streams`."""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_packages_and_the_dataset(tmp_path: Path):
    """`lambda-ml produce` defaults to CLINC150: an installed (not editable) copy must find it
    in its own package, not next to a source checkout."""
    source = tmp_path / "source"
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = [pattern.rstrip("*") for pattern in include]
    for package in packages:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("results"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("data.jsonl", "domains.json", "README.md"):
        assert f"streams/data/clinc150/{data}" in names
    assert {f"{package}/__init__.py" for package in packages} <= names
