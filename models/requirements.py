"""The pip requirements of a model, derived from what it is made of rather than typed by hand.

MLflow can infer requirements itself, but for this model it lists the project's own
distribution (whose `models` package already travels as `code_paths`), and it loads the model
in a subprocess whose timeout falls back to MLflow and cloudpickle alone: docs/model-format.md.

A model logged to MLflow must load where this repository is not: its pickle names classes
(scikit-learn's, the project's), and the project's modules import others in turn. So the
requirements are found by walking the fitted object (its `get_params(deep=True)` values, its
attributes, the classes and functions of all of them), following the imports of the project's
own modules (those shipped with the model as `code_paths`) through their source, and mapping
every third-party top-level module to its installed distribution, pinned to the installed
version.

Only the imports a module runs when it is imported are followed (module level, class bodies,
`try`/`if` blocks, but not `if TYPE_CHECKING:`): an import inside a function is lazy, made by
code that loading and scoring a model do not run (`models.pyfunc_model` imports `mlflow.sklearn`
only to load versions logged in MLflow's scikit-learn flavour). Pass such a module in `modules`
if a model does need it.
"""

import ast
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache, partial
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

import numpy as np

ALWAYS = ("mlflow", "cloudpickle")
"""Modules every logged model needs: MLflow loads it, cloudpickle unpickles it."""

SHIPPED = ("models",)
"""The project's packages logged with a model (`code_paths`): this package."""

# Values whose type is all that matters: their contents name no other module.
_LEAVES = (str, bytes, bool, int, float, complex, type(None), np.generic)
_NOT_FOLLOWED = {"__main__", "builtins"}


class RequirementsError(RuntimeError):
    """A module a model needs can neither be shipped with it nor installed from a distribution;
    the message names it."""


def model_requirements(
    model: Any,
    *,
    modules: Iterable[str] = (),
    shipped: Iterable[str] = SHIPPED,
    always: Iterable[str] = ALWAYS,
) -> list[str]:
    """Pinned pip requirements (`name==version`, sorted by name) of `model`.

    Parameters
    ----------
    model
        The fitted object to be pickled (an estimator; any object graph works).
    modules
        More modules the logged model imports, such as its pyfunc wrapper's.
    shipped
        Top-level packages of the project shipped with the model (`code_paths`): they are not
        requirements, and their imports are followed.
    always
        Modules required whatever the model is made of.

    Returns
    -------
    list of str
        One pinned distribution per line of a requirements file; never a shipped package.

    Raises
    ------
    RequirementsError
        When a module needed is the project's own code but not shipped, or is installed from
        no distribution.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> fitted = LogisticRegression().fit([[0.0], [1.0]], [0, 1])  # its coefficients: numpy
    >>> [pin.split("==")[0] for pin in model_requirements(fitted, always=())]
    ['numpy', 'scikit-learn']
    """
    shipped = tuple(shipped)
    needed = referenced_modules(model) | set(modules) | set(always)
    third_party = {_top(name) for name in imported_modules(needed, shipped)}
    third_party -= set(shipped)
    pins = {_pin(dist) for top in third_party for dist in _distributions(top, shipped)}
    return sorted(pins, key=lambda pin: pin.lower())


def referenced_modules(model: Any) -> set[str]:
    """The modules defining the classes and functions that `model`'s object graph is made of.

    Estimators are walked through `get_params(deep=True)` and their attributes (fitted state
    included); containers through their items; arrays through their dtype (and the types of
    an object array's items).

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> sorted(m for m in referenced_modules(make_pipeline(StandardScaler())) if "sklearn" in m)
    ['sklearn.pipeline', 'sklearn.preprocessing._data']
    """
    found: set[str] = set()
    seen: set[int] = set()
    stack = [model]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        found.add(type(value).__module__)
        if isinstance(value, type | FunctionType | BuiltinFunctionType):
            found.add(getattr(value, "__module__", None) or "builtins")
            continue
        if isinstance(value, ModuleType):
            found.add(value.__name__)
            continue
        for child in _children(value):
            if isinstance(child, _LEAVES):
                found.add(type(child).__module__)
            else:
                stack.append(child)
    return found


def _children(value: Any) -> Iterator[Any]:
    """What `value` holds that may name other modules."""
    if isinstance(value, np.ndarray):
        yield value.dtype
        if value.dtype == object:
            yield from {type(item) for item in value.ravel().tolist()}
        return
    if isinstance(value, dict):
        yield from value.keys()
        yield from value.values()
        return
    if isinstance(value, list | tuple | set | frozenset):
        yield from value
        return
    if isinstance(value, partial):
        yield value.func
        yield from value.args
        yield from value.keywords.values()
        return
    if isinstance(value, MethodType):
        yield value.__func__
        yield value.__self__
        return
    get_params = getattr(value, "get_params", None)
    if callable(get_params) and not isinstance(value, type):
        try:
            params = get_params(deep=True)
        except TypeError:  # a `get_params` of another meaning
            params = {}
        yield from params.values()
    yield from getattr(value, "__dict__", {}).values()


def imported_modules(modules: Iterable[str], shipped: Iterable[str] = SHIPPED) -> set[str]:
    """`modules`, and every module that the shipped ones among them import, transitively.

    The shipped modules' sources are read (`ast`), not run; modules outside `shipped` are
    returned as found, not followed: their distribution brings its own dependencies.
    """
    shipped = tuple(shipped)
    found: set[str] = set()
    queue = [name for name in modules if name]
    while queue:
        name = queue.pop()
        if name in found:
            continue
        found.add(name)
        if _top(name) not in shipped:
            continue
        parts = name.split(".")
        queue += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        queue += _imports_of(name)
    return found


def _imports_of(module: str) -> list[str]:
    """The modules `module`'s source imports when it is imported (see the module's docstring)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RequirementsError(f"the source of {module} cannot be found to follow its imports")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    names = []
    for node in _run_on_import(tree.body):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            names.append(base)
            names += [
                f"{base}.{alias.name}"
                for alias in node.names
                if alias.name != "*" and _is_submodule(f"{base}.{alias.name}")
            ]
    return names


def _run_on_import(body: list) -> Iterator[ast.AST]:
    """The statements of `body` that importing the module runs: not function bodies, nor
    `if TYPE_CHECKING:` blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _run_on_import(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _run_on_import([n for n in inner if isinstance(n, ast.AST)])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_submodule(name: str) -> bool:
    """Whether `name` is a module (`from package import module`), not an attribute."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _top(module: str) -> str:
    return module.partition(".")[0]


@cache
def _all_distributions() -> Mapping[str, list[str]]:
    return packages_distributions()


def _distributions(top: str, shipped: tuple[str, ...]) -> list[str]:
    """The distributions to install for the top-level module `top`: none for the standard
    library or a module not installed here (an optional import the model ran without)."""
    if top in sys.stdlib_module_names or top in _NOT_FOLLOWED:
        return []
    own = {dist for package in shipped for dist in _all_distributions().get(package, [])}
    dists = list(dict.fromkeys(_all_distributions().get(top, [])))
    if own & set(dists) or _beside_shipped(top, shipped):
        raise RequirementsError(
            f"the model needs {top}, the project's own code, which is not shipped with it: "
            f"add it to the shipped packages ({', '.join(shipped)})"
        )
    if not dists:
        if importlib.util.find_spec(top) is None:
            return []
        raise RequirementsError(
            f"the model needs {top}, which no installed distribution provides: install it as "
            "a package, or ship it with the model"
        )
    # `mlflow` is provided by mlflow, mlflow-skinny and mlflow-tracing: mlflow brings the rest.
    named = [dist for dist in dists if _canonical(dist) == _canonical(top)]
    return named or dists


def _beside_shipped(top: str, shipped: tuple[str, ...]) -> bool:
    """Whether the top-level module `top` lies in the folder the shipped packages lie in: the
    project's code, whether or not the project is installed as a distribution."""
    roots = {Path(folder).parent for folder in package_folders(shipped)}
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
    return any(Path(place).resolve().parent in roots for place in places if place)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pin(dist: str) -> str:
    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError as exc:
        raise RequirementsError(f"{dist} is not installed: its version cannot be pinned") from exc


def package_folders(shipped: Iterable[str] = SHIPPED) -> list[str]:
    """The folders of the shipped packages, as MLflow's `code_paths` takes them."""
    folders = []
    for package in shipped:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RequirementsError(f"{package} is not a package that can be shipped")
        folders.append(str(Path(list(spec.submodule_search_locations)[0]).resolve()))
    return folders
