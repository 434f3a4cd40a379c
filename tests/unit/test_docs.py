"""The README and docs/ say what the tree and the result files say: every module is in the
module map, the import picture is the code's, every headline figure is its result file's, and
every relative link leads somewhere."""

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import grimp

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGES = ("common", "streams", "models", "serving", "pipelines")
# The folders of `pipelines/` that are nodes of the README's picture; its root modules are one.
PIPELINE_FOLDERS = ("speed", "batch", "services", "cli", "evaluation")
ARROW = re.compile(r"^(?P<source>\S+)\s+-->\s+(?P<targets>.+)$")
FIGURE_ROW = re.compile(
    r"^\|(?P<figure>[^|]+)\|(?P<value>[^|]+)\|.*`(?P<file>[\w/.-]+\.json)`: `(?P<key>[\w.]+)` \|$"
)
LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")
# A file or folder of the repository named in backticks, as `pipelines/speed/layer.py`.
REPO_PATH = re.compile(
    r"`((?:common|streams|models|serving|pipelines|bench|tests|deploy|docs|mlflow|scripts)/[\w./-]*)`"
)


def modules() -> list[str]:
    """Every Python module of the runtime packages, as a path from the repository root."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__init__.py":
                found.append(path.relative_to(ROOT).as_posix())
    return found


def subpackages() -> list[str]:
    """Every package below the top-level ones, as `folder/`."""
    return [
        path.parent.relative_to(ROOT).as_posix() + "/"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("__init__.py"))
        if path.parent.parent != ROOT
    ]


def test_the_module_map_names_every_module_and_package():
    text = ARCHITECTURE.read_text()
    missing = [name for name in [*modules(), *subpackages()] if f"`{name}`" not in text]
    assert not missing, f"docs/architecture.md leaves out {missing}"


def test_the_module_map_names_no_module_that_is_gone():
    named = set(
        re.findall(r"`((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)`", ARCHITECTURE.read_text())
    )
    assert named, "the module map names no module"
    assert not named - set(modules()), f"docs/architecture.md names {named - set(modules())}"


def node(module: str) -> str:
    """A module's node in the README's picture of the imports."""
    parts = module.split(".")
    if parts[0] != "pipelines":
        return parts[0]
    if len(parts) > 1 and parts[1] in PIPELINE_FOLDERS:
        return f"pipelines/{parts[1]}"
    return "pipelines/*.py"


def code_imports() -> dict[str, set[str]]:
    """Which node imports which other, from every import in the runtime packages."""
    graph = grimp.build_graph(*PACKAGES, "bench", cache_dir=None)
    edges: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        if module.split(".")[0] == "bench":
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if node(imported) != node(module):
                edges[node(module)].add(node(imported))
    return dict(edges)


def readme_imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for line in README.read_text().splitlines():
        if found := ARROW.match(line):
            edges[found["source"]] = {t.strip() for t in found["targets"].split(",")}
    return edges


def test_the_readme_draws_the_imports_the_code_has():
    drawn, real = readme_imports(), code_imports()
    assert drawn, "the README has no import picture"
    not_in_code = {k: v - real.get(k, set()) for k, v in drawn.items() if v - real.get(k, set())}
    not_drawn = {k: v - drawn.get(k, set()) for k, v in real.items() if v - drawn.get(k, set())}
    assert not not_in_code and not not_drawn, (
        f"README arrows not in the code: {not_in_code}; code imports not drawn: {not_drawn}"
    )


def value_at(record: Any, key: str) -> float:
    """The figure under a dotted key of a result file."""
    for part in key.split("."):
        record = record[part]
    return float(record)


def test_every_headline_figure_is_its_result_file():
    """Each row of the README's figure table quotes the value under the key it names."""
    rows = [found for line in README.read_text().splitlines() if (found := FIGURE_ROW.match(line))]
    assert len(rows) >= 5, "the README's headline figures are gone"
    for row in rows:
        expected = value_at(json.loads((ROOT / row["file"]).read_text()), row["key"])
        quoted = re.search(r"[-+]?\d[\d,]*(?:\.(\d+))?", row["value"])
        assert quoted, row["value"]
        number = float(quoted[0].replace(",", ""))
        if "%" in row["value"]:
            expected *= 100
        decimals = len(quoted[1] or "")
        assert abs(number - expected) <= 0.5 * 10**-decimals + 1e-9, (
            f"README quotes {row['value'].strip()} for {row['file']} {row['key']} = {expected}"
        )


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 250


def test_every_relative_link_of_the_docs_leads_to_a_file():
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "serving" / "README.md"]
    broken = [
        f"{page.relative_to(ROOT)} -> {found['target']}"
        for page in pages
        for found in LINK.finditer(page.read_text())
        if "://" not in found["target"] and not (page.parent / found["target"]).exists()
    ]
    assert not broken, broken


def test_every_file_the_docs_name_exists():
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "serving" / "README.md"]
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in pages
        for path in REPO_PATH.findall(page.read_text())
        if not (ROOT / path).exists()
    ]
    assert not missing, missing
