"""The figures the reliability tests measure, kept as `reports/reliability.{json,md}`.

A test records each figure with the goal it is held to; the report marks it with the outcome of
the test that measured it, so a figure is never shown as met by a test that failed. Figures are
merged into the existing report by test: running one test replaces all of its rows (renamed
figures do not linger) and keeps the other tests' rows with the time they were measured.
"""

import json
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REPORT_DIR = Path(__file__).resolve().parents[1] / "reports"


@dataclass
class Figure:
    scenario: str
    figure: str
    value: float | int | str
    goal: str
    test: str
    measured_at: str
    outcome: str = "running"
    commit: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.scenario, self.figure


class ReliabilityReport:
    """Collects figures during a session; `write` merges them into the saved report."""

    def __init__(self, directory: Path = REPORT_DIR) -> None:
        self.directory = directory
        self.figures: list[Figure] = []
        self.commit = _commit()

    def record(
        self, test: str, scenario: str, figure: str, value: float | int | str, goal: str = ""
    ) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.figures = [f for f in self.figures if f.key != (scenario, figure)]
        self.figures.append(Figure(scenario, figure, value, goal, test, now, commit=self.commit))

    def settle(self, test: str, outcome: str) -> None:
        """Mark the figures of `test` with how it ended (passed or failed)."""
        for f in self.figures:
            if f.test == test and (f.outcome == "running" or outcome == "failed"):
                f.outcome = outcome

    def write(self) -> Path | None:
        if not self.figures:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "reliability.json"
        fresh_tests = {f.test for f in self.figures}
        kept = [f for f in _load(path) if f.test not in fresh_tests]
        figures = sorted(kept + self.figures, key=lambda f: f.scenario)  # stable: as recorded
        body = {"figures": [asdict(f) for f in figures]}
        path.write_text(json.dumps(body, indent=2) + "\n")
        (self.directory / "reliability.md").write_text(markdown_report(figures))
        return path


def markdown_report(figures: list[Figure]) -> str:
    """One table per scenario: figure, value, goal, and how the test that measured it ended."""
    failed = sum(f.outcome != "passed" for f in figures)
    tests = len({f.test for f in figures})
    verdict = "all from passing tests" if not failed else f"{failed} from tests that did not pass"
    commits = Counter(f.commit or "unknown" for f in figures)
    if len(commits) == 1:
        at = f"commit {next(iter(commits))}"
    else:
        counts = (f"{c} ({n} figure{'s' if n != 1 else ''})" for c, n in commits.most_common())
        at = "commits " + ", ".join(counts)
    lines = [
        "# Reliability figures",
        "",
        f"{len(figures)} figures from {tests} tests, {verdict}; measured at {at}.",
    ]
    for scenario in sorted({f.scenario for f in figures}):
        rows = [f for f in figures if f.scenario == scenario]
        when = sorted(f.measured_at for f in rows)
        lines += [
            "",
            f"## {scenario}",
            "",
            f"Measured {when[0]}" + (f" to {when[-1]}" if when[-1] != when[0] else "") + ".",
            "",
            "| figure | value | goal | test |",
            "|---|---|---|---|",
        ]
        lines += [f"| {f.figure} | {_format(f.value)} | {f.goal} | {f.outcome} |" for f in rows]
    return "\n".join(lines) + "\n"


def _format(value: float | int | str) -> str:
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, float) and abs(value) < 100:
        return f"{value:.3g}"
    return f"{value:,.0f}"


def _load(path: Path) -> list[Figure]:
    if not path.exists():
        return []
    try:
        return [Figure(**row) for row in json.loads(path.read_text())["figures"]]
    except (ValueError, KeyError, TypeError):
        return []  # an unreadable old report is replaced, not fatal


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPORT_DIR.parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()
