"""The batch champion as an MLflow pyfunc model that loads where this repository is not.

The registered model is `IntentProbabilities`: texts in (a list or Series of strings, a
DataFrame with a `text` column or a single column, or `{"text": [...]}`), one row per text and
one column per intent out, the columns named by the estimator's `classes_` and each row a
probability distribution. Its signature's input is one unnamed string column, which MLflow's
schema check accepts in each of those shapes (a named `text` column refuses a plain list).
The fitted estimator is a cloudpickle artifact beside it; the project's `models` package goes
with it as `code_paths`, and its pip requirements are derived from what it is made of
(`models.requirements`: MLflow's own inference lists the project itself, see
docs/model-format.md). So `mlflow.pyfunc.load_model("models:/<name>@champion")` and
`mlflow models serve` work in a fresh environment that has only those requirements installed.

The speed layer and serving load the estimator itself (`load_estimator`), without MLflow's
pyfunc machinery: they run the same code the model was trained with.
"""

import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from models.requirements import SHIPPED, model_requirements, package_folders

ESTIMATOR_ARTIFACT = "estimator"
"""The key of the fitted estimator among the pyfunc model's artifacts."""
TEXT_COLUMN = "text"
"""The input column the model reads from a DataFrame or a dict of columns."""
MODEL_NAME = "model"
"""Where in its run the model is logged."""


class IntentProbabilities(PythonModel):
    """An MLflow pyfunc model of a fitted text classifier: a probability per intent per text.

    Parameters
    ----------
    estimator
        A fitted classifier with `predict_proba` and `classes_`; None until `load_context`
        reads it from the model's `estimator` artifact.
    """

    def __init__(self, estimator: Any = None) -> None:
        self.estimator = estimator

    def load_context(self, context) -> None:
        """Read the fitted estimator from the model's artifacts."""
        with open(context.artifacts[ESTIMATOR_ARTIFACT], "rb") as handle:
            self.estimator = cloudpickle.load(handle)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per text of `model_input`, one column per intent, each row summing to 1.

        `model_input` is what `texts_of` reads; the DataFrame hint tells MLflow to check inputs
        against the logged signature rather than against the hint.
        """
        return intent_frame(self.estimator, texts_of(model_input))

    def __getstate__(self) -> dict[str, Any]:
        # The estimator is an artifact of its own: the pickled wrapper stays small.
        return {**self.__dict__, "estimator": None}


def texts_of(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame's `text` column (or its only column), a Series,
    or a sequence of strings. A cell holding a list of texts gives each of them: MLflow's schema
    check turns `{"text": [...]}` into one row holding the list.

    >>> texts_of(pd.DataFrame({"text": ["set an alarm"]})), texts_of(["hi", "bye"])
    (['set an alarm'], ['hi', 'bye'])
    >>> texts_of(pd.DataFrame([{"text": ["hi", "bye"]}]))
    ['hi', 'bye']
    """
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            column = model_input[TEXT_COLUMN]
        elif len(model_input.columns) == 1:
            column = model_input.iloc[:, 0]
        else:
            raise ValueError(
                f"expected a `{TEXT_COLUMN}` column; got columns {list(model_input.columns)}"
            )
        texts: list[Any] = []
        for cell in column.tolist():
            texts.extend(cell if isinstance(cell, list | tuple | np.ndarray) else [cell])
        return [str(text) for text in texts]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.Series | np.ndarray | Sequence):
        return [str(text) for text in list(model_input)]
    raise TypeError(f"expected texts; got {type(model_input).__name__}")


def intent_frame(estimator: Any, texts: list[str]) -> pd.DataFrame:
    """`estimator`'s probabilities for `texts` as a DataFrame, one column per intent (as str)."""
    columns = [str(intent) for intent in estimator.classes_]
    if not texts:
        return pd.DataFrame(np.zeros((0, len(columns))), columns=columns)
    return pd.DataFrame(np.asarray(estimator.predict_proba(texts), dtype=float), columns=columns)


def log_intent_model(
    estimator: Any,
    example_texts: list[str],
    registered_model_name: str | None = None,
    shipped: Sequence[str] = SHIPPED,
):
    """Log `estimator` as an `IntentProbabilities` model on the active MLflow run.

    Parameters
    ----------
    estimator
        The fitted classifier.
    example_texts
        A few texts: the input example, from which the signature (a string column in, one
        column per intent out) is inferred.
    registered_model_name
        Register the logged model under this name too.
    shipped
        The project's packages logged with the model as `code_paths`.

    Returns
    -------
    mlflow.models.model.ModelInfo
        What MLflow returns; `registered_model_version` is the new version.
    """
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    example = list(example_texts)
    signature = infer_signature(example, intent_frame(estimator, example))
    requirements = model_requirements(estimator, modules=[__name__], shipped=shipped)
    with tempfile.TemporaryDirectory(prefix="intent-model-") as folder:
        path = Path(folder) / "estimator.pkl"
        with path.open("wb") as handle:
            cloudpickle.dump(estimator, handle)
        with _sys_path_kept():  # MLflow loads the model once to check the input example
            return mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=IntentProbabilities(),
                artifacts={ESTIMATOR_ARTIFACT: str(path)},
                code_paths=package_folders(shipped),
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
                registered_model_name=registered_model_name,
            )


@contextmanager
def _sys_path_kept() -> Iterator[None]:
    """Put `sys.path` back as it was: loading a model with `code_paths` prepends its folder."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def load_estimator(model_dir: Path) -> Any:
    """The fitted estimator of a model downloaded from the registry into `model_dir`.

    Reads this module's format (the `estimator` artifact of an `IntentProbabilities` model),
    and, for versions registered before it, MLflow's scikit-learn flavour.
    """
    from mlflow.models import Model

    flavors = Model.load(str(model_dir)).flavors
    artifacts = flavors.get("python_function", {}).get("artifacts", {})
    if ESTIMATOR_ARTIFACT in artifacts:
        with (model_dir / artifacts[ESTIMATOR_ARTIFACT]["path"]).open("rb") as handle:
            return cloudpickle.load(handle)
    if "sklearn" in flavors:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(model_dir))
    raise ValueError(
        f"the model in {model_dir} is neither an {IntentProbabilities.__name__} model nor a "
        f"scikit-learn one (flavours: {', '.join(flavors) or 'none'})"
    )
