"""The structure holds: imports run one way, and settings are read only at the edges.

The import contracts are import-linter's, declared in pyproject.toml (`[tool.importlinter]`);
`make lint` runs the same check as `lint-imports`.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
RUNTIME = ("common", "streams", "models", "serving", "pipelines", "bench")
# The modules that read the environment into settings: the CLI's edge, and the serving
# process's own (BentoML imports the service in each worker, with no CLI above it).
EDGES = {"pipelines/cli/edge.py", "serving/runtime.py"}
SETTINGS_TYPES = {
    name
    for name, value in vars(settings_module).items()
    if isinstance(value, type) and name.endswith("Settings")
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the packages under `root`, with the project's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layer_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout


def test_a_wrong_import_breaks_a_contract(tmp_path: Path):
    """The contracts are not vacuous: serving importing pipelines is caught."""
    for package in (*RUNTIME, "tests"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("results", "kafka")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    init = tmp_path / "serving" / "__init__.py"
    init.write_text(init.read_text() + "\nimport pipelines.cli.main  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "serving is not allowed to import pipelines" in done.stdout


def _environment_reads(path: Path) -> list[str]:
    """Where `path` builds settings from the environment: a settings type called with no
    arguments, or `Settings.from_environment()`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name in SETTINGS_TYPES and not node.args and not node.keywords:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
        if name == "from_environment":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} from_environment()")
    return found


def test_nothing_below_the_edges_reads_settings_from_the_environment():
    reads = [
        read
        for package in RUNTIME
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in EDGES | {"common/settings.py"}
        for read in _environment_reads(path)
    ]
    assert not reads, "settings built below the edge:\n" + "\n".join(reads)


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_each_edge_exists_and_reads_the_settings(edge: str):
    """The allowed list names real modules that do read settings (no stale exemption)."""
    path = ROOT / edge
    assert path.is_file(), edge
    assert _environment_reads(path), f"{edge} reads no settings: drop it from EDGES"


def test_importing_the_service_reads_no_settings():
    """Nothing happens at import time: a worker reads its settings when it builds its app."""
    script = (
        "import serving.runtime as runtime, serving.service; "
        "print(runtime.process_settings.cache_info().currsize)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"
