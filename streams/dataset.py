"""Reading a `{text, intent}` JSONL dataset for replay, reporting bad lines instead of dying."""

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# Shipped inside the package (package data), so an installed copy finds it as a checkout does.
CLINC150_DIR = Path(str(resources.files("streams") / "data" / "clinc150"))
CLINC150_DATA = CLINC150_DIR / "data.jsonl"
CLINC150_DOMAINS = CLINC150_DIR / "domains.json"


@dataclass(frozen=True)
class Example:
    """One labelled utterance of a dataset; `split` is the dataset's own split name, if any."""

    text: str
    intent: str
    split: str = ""


@dataclass(frozen=True)
class BadLine:
    line_number: int
    reason: str


@dataclass
class LoadedDataset:
    examples: list[Example]
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def intents(self) -> list[str]:
        return sorted({e.intent for e in self.examples})


def _parse_line(line: str) -> Example:
    try:
        body = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    text, intent = body.get("text"), body.get("intent")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no text")
    if not isinstance(intent, str) or not intent.strip():
        raise ValueError("no intent")
    split = body.get("split")
    return Example(" ".join(text.split()), intent.strip(), split if isinstance(split, str) else "")


def load_dataset(path: Path, splits: frozenset[str] | None = None) -> LoadedDataset:
    """Load a JSONL file of `{text, intent[, split]}` objects.

    Lines that are not JSON or lack a text or an intent are collected in `bad_lines` with their
    1-based line numbers and skipped; blank lines are ignored. `splits` keeps only those splits.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path}")
    loaded = LoadedDataset(examples=[])
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                example = _parse_line(line)
            except ValueError as exc:
                loaded.bad_lines.append(BadLine(number, str(exc)))
                continue
            if splits is None or example.split in splits:
                loaded.examples.append(example)
    if not loaded.examples:
        raise ValueError(f"no usable examples in {path}")
    return loaded


def load_domains(path: Path = CLINC150_DOMAINS) -> dict[str, list[str]]:
    """CLINC150's domain -> intents map, used to pick whole domains for drift scenarios."""
    return json.loads(path.read_text(encoding="utf-8"))
