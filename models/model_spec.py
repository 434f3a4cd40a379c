"""A model chosen by configuration: `package.module:factory` and its keyword parameters.

`SPEED_MODEL`/`BATCH_MODEL` (and `--speed-model`/`--batch-model`) hold the factory, and
`..._PARAMS` a JSON object of its arguments. The spec is recorded with what it built (in a
snapshot's header, in an MLflow run's parameters, on a registered version), so a model can be
traced to its code, and a retrain can tell a new model from one already registered.
"""

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ModelSpecError(ValueError):
    """A model spec that cannot be imported or called; the message says which part failed."""


@dataclass(frozen=True)
class ModelSpec:
    """Which factory builds a model, and with which keyword arguments.

    Parameters
    ----------
    factory
        `package.module:callable`, importable from the running environment.
    params
        Keyword arguments of the call (JSON-serialisable, so that they can be recorded).

    >>> spec = ModelSpec.parse("fractions:Fraction", '{"numerator": 3, "denominator": 4}')
    >>> spec.build()
    Fraction(3, 4)
    >>> spec.describe()
    'fractions:Fraction {"denominator": 4, "numerator": 3}'
    >>> reordered = ModelSpec("fractions:Fraction", {"denominator": 4, "numerator": 3})
    >>> spec.as_json() == reordered.as_json()
    True
    """

    factory: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, factory: str, params: str | Mapping[str, Any] | None = None) -> "ModelSpec":
        """A spec from settings: `params` may be a JSON object's text."""
        if params is None:
            params = {}
        if isinstance(params, str):
            try:
                params = json.loads(params) if params.strip() else {}
            except json.JSONDecodeError as exc:
                raise ModelSpecError(f"parameters of {factory} are not JSON: {exc}") from None
        if not isinstance(params, Mapping):
            raise ModelSpecError(f"parameters of {factory} must be a JSON object")
        spec = cls(factory.strip(), dict(params))
        spec.load()  # fail now, at configuration, not at the first event
        return spec

    def load(self) -> Callable[..., Any]:
        """The factory itself, imported."""
        module_name, _, attribute = self.factory.partition(":")
        if not module_name or not attribute:
            raise ModelSpecError(
                f"model factory {self.factory!r} must look like package.module:factory"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelSpecError(f"cannot import {module_name} for {self.factory}: {exc}") from exc
        target: Any = module
        for part in attribute.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ModelSpecError(f"{module_name} has no {attribute} (from {self.factory})")
        if not callable(target):
            raise ModelSpecError(f"{self.factory} is not callable")
        return target

    def build(self) -> Any:
        """A new, unfitted model."""
        try:
            return self.load()(**self.params)
        except TypeError as exc:
            raise ModelSpecError(f"{self.describe()} could not be called: {exc}") from exc

    def describe(self) -> str:
        """The spec in one line, as logs and run parameters show it."""
        return f"{self.factory} {json.dumps(dict(self.params), sort_keys=True)}"

    def as_record(self) -> dict[str, Any]:
        """What a snapshot header or a run stores to say which model this is."""
        return {"factory": self.factory, "params": dict(self.params)}

    def as_json(self) -> str:
        """The record (`as_record`) as one JSON text, the same for equal specs whatever the order
        of their parameters (tuples read as lists): what a registered version is tagged with."""
        return json.dumps(self.as_record(), sort_keys=True)
