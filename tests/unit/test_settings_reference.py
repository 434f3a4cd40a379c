"""The committed settings reference is what the settings classes render now, and what it shows
is what the environment really does."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli.main import app
from pipelines.cli.settings_reference import (
    COMMAND,
    default_text,
    env_name,
    render,
    settings_classes,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration-reference.md"
FIELDS = [(cls, name) for cls in settings_classes() for name in cls.model_fields]


def test_the_committed_reference_is_what_the_settings_classes_render():
    assert REFERENCE.read_text() == render(), f"docs/configuration-reference.md is stale: {COMMAND}"


def test_every_settings_class_and_variable_is_in_the_reference():
    from common.settings import Settings

    text = render()
    tree = {type(section) for section in vars(Settings()).values()}
    assert tree <= set(settings_classes()), "a class of the settings tree is left out"
    for cls, name in FIELDS:
        assert f"| `{env_name(cls, name)}` |" in text
        assert (cls.__doc__ or "").split("\n")[0].strip() in text, f"{cls.__name__}'s docstring"


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=[env_name(cls, name) for cls, name in FIELDS])
def test_each_default_shown_reads_back_as_the_default(cls, name, monkeypatch):
    """Setting a variable to the default the reference shows leaves the setting unchanged."""
    info = cls.model_fields[name]
    shown = default_text(info)
    for other in cls.model_fields:
        monkeypatch.delenv(env_name(cls, other), raising=False)
    if info.is_required():
        assert shown == "(required)"
        return
    if shown.startswith("(empty: "):  # named after another setting
        pattern = shown.removeprefix("(empty: `").removesuffix("`)")
        assert cls().model_dump()[name] == pattern.format(**cls().model_dump())
        return
    if shown in ("(unset)", "(empty)"):
        assert cls().model_dump()[name] in (None, "")
        return
    monkeypatch.setenv(env_name(cls, name), shown.strip("`").replace("\\|", "|"))
    assert cls().model_dump()[name] == info.get_default(call_default_factory=True)


def test_the_command_prints_or_writes_the_reference(tmp_path: Path):
    printed = CliRunner().invoke(app, ["settings-reference"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == render()
    target = tmp_path / "reference.md"
    written = CliRunner().invoke(app, ["settings-reference", "--write", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == render()
