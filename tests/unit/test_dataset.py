"""Input files: bad lines are reported with their numbers and skipped, the rest is loaded."""

import json

import pytest

from streams.dataset import CLINC150_DATA, load_dataset


def test_clinc150_ships_with_the_repository():
    dataset = load_dataset(CLINC150_DATA)
    assert len(dataset.examples) == 23_700
    assert len(dataset.intents) == 151
    assert not dataset.bad_lines
    assert (CLINC150_DATA.parent / "README.md").read_text().count("CC BY 3.0") >= 1


def test_bad_lines_are_reported_and_skipped(tmp_path):
    good = [json.dumps({"text": f"query {i}", "intent": "a"}) for i in range(20)]
    bad = [
        "{not json",
        json.dumps({"intent": "a"}),
        json.dumps({"text": "  ", "intent": "a"}),
        json.dumps([1]),
        json.dumps({"text": "no label"}),
    ]
    lines = good[:10] + bad + [""] + good[10:]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(path)
    assert len(dataset.examples) == 20
    assert [b.line_number for b in dataset.bad_lines] == [11, 12, 13, 14, 15]
    assert [b.reason.split(" (")[0] for b in dataset.bad_lines] == [
        "not JSON",
        "no text",
        "no text",
        "not a JSON object",
        "no intent",
    ]


def test_split_filter_and_clear_errors(tmp_path):
    train = load_dataset(CLINC150_DATA, frozenset({"train"}))
    assert len(train.examples) == 15_000
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_dataset(tmp_path / "nowhere.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("garbage\n")
    with pytest.raises(ValueError, match="no usable examples"):
        load_dataset(empty)
