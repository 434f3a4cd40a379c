"""`lambda-ml settings-reference`: every environment variable, written from the settings classes.

The reference is rendered from `common.settings` itself (each class's docstring, env prefix,
fields, types, defaults and bounds), so `docs/configuration-reference.md` is regenerated rather
than edited, and a unit test fails when the committed file differs from what this renders.
"""

import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import typer
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from common import settings as settings_module

COMMAND = "lambda-ml settings-reference --write docs/configuration-reference.md"

HEADER = f"""# Settings reference

Generated from the settings classes in `common/settings.py` by
`{COMMAND}`: do not edit it by hand.
Every job reads these variables once, at the command line's edge (`serving/runtime.py` in a
service worker), and passes them down; [configuration.md](configuration.md) says how they fit
together.
"""

BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


def settings_classes() -> list[type[BaseSettings]]:
    """The pydantic-settings classes `common.settings` defines, in the order it defines them."""
    found = [
        cls
        for cls in vars(settings_module).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseSettings)
        and cls is not BaseSettings
        and cls.__module__ == settings_module.__name__
    ]
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from (pydantic-settings matches it in any case)."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def type_name(info: FieldInfo) -> str:
    """The field's type as a reader writes it, with its bounds: `float > 0`, `Path | None`."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        text = "one of " + ", ".join(f"`{choice}`" for choice in get_args(annotation))
    elif get_origin(annotation) is dict:
        text = "JSON object"
    elif inspect.isclass(annotation) and not get_args(annotation):
        text = annotation.__name__
    else:
        text = repr(annotation).replace("typing.", "").replace("pathlib.", "")
    bounds = [
        f"{sign} {getattr(item, attribute)}"
        for item in info.metadata
        for kind, attribute, sign in BOUNDS
        if isinstance(item, kind)
    ]
    return ", ".join([text, " and ".join(bounds)]) if bounds else text


def markdown_text(docstring: str) -> str:
    """A docstring as markdown: `<` outside code spans is escaped, so `libs-<version>` shows."""
    parts = docstring.split("`")
    return "`".join(
        part if index % 2 else part.replace("<", "&lt;") for index, part in enumerate(parts)
    )


def default_text(info: FieldInfo) -> str:
    """The default as it would be written in the environment, or why there is none to write."""
    if info.is_required():
        return "(required)"
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if value == "":
        derived = (info.json_schema_extra or {}).get("empty_means")  # type: ignore[union-attr]
        return f"(empty: `{derived}`)" if derived else "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value)}`"
    return f"`{value}`".replace("|", "\\|")


def render_class(cls: type[BaseSettings]) -> str:
    """One class: its name and prefix, its docstring, and a row per variable."""
    prefix = cls.model_config.get("env_prefix", "")
    doc = markdown_text(inspect.cleandoc(cls.__doc__ or ""))
    lines = [f"## `{prefix}*`: {cls.__name__}", "", doc, ""]
    lines += ["| variable | type | default |", "|---|---|---|"]
    for field, info in cls.model_fields.items():
        kind = type_name(info).replace("|", "\\|")
        lines.append(f"| `{env_name(cls, field)}` | {kind} | {default_text(info)} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference, as markdown."""
    return "\n".join([HEADER, *(render_class(cls) for cls in settings_classes())])


def settings_reference(
    write: Annotated[
        Path | None,
        typer.Option(help="Write the reference to this file instead of printing it."),
    ] = None,
) -> None:
    """Print (or write) the reference of every setting, generated from the settings classes."""
    text = render()
    if write is None:
        typer.echo(text, nl=False)
        return
    write.write_text(text)
    typer.echo(f"wrote {write}")
