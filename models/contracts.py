"""What a speed model and a batch model must be, checked when one is configured.

A speed model is a River classifier: it learns one event at a time and gives a probability per
intent. A batch model is a scikit-learn classifier that gives probabilities (`predict_proba`)
or margins (`decision_function`, which the batch layer calibrates). Any model that keeps these
contracts runs the whole pipeline (Kafka, snapshots, the registry, the HTTP answer); a model
that breaks one is refused with an error naming what is missing, before it learns anything.
"""

from collections.abc import Iterable
from typing import Any


class ModelContractError(TypeError):
    """A configured model lacks what the pipeline needs; the message says what."""


def _missing(model: Any, methods: Iterable[str]) -> list[str]:
    return [name for name in methods if not callable(getattr(model, name, None))]


def check_speed_model(model: Any, where: str = "the speed model") -> Any:
    """`model` if it keeps River's classifier contract; else `ModelContractError`.

    >>> try:
    ...     check_speed_model(object())
    ... except ModelContractError as error:
    ...     print(error)
    the speed model (object) lacks learn_one, predict_proba_one: it must be a River classifier
    """
    missing = _missing(model, ("learn_one", "predict_proba_one"))
    if missing:
        raise ModelContractError(
            f"{where} ({type(model).__name__}) lacks {', '.join(missing)}: "
            "it must be a River classifier"
        )
    return model


def has_vectorised_proba(model: Any) -> bool:
    """Whether `model` scores many texts in one call (`predict_proba_many`).

    A River pipeline always has the method, but it only works when its last step has it too.
    """
    if not callable(getattr(model, "predict_proba_many", None)):
        return False
    steps = getattr(model, "steps", None)
    if isinstance(steps, dict) and steps:
        return callable(getattr(list(steps.values())[-1], "predict_proba_many", None))
    return True


def check_batch_model(estimator: Any, where: str = "the batch model") -> Any:
    """`estimator` if it is a scikit-learn estimator that gives probabilities or margins.

    A margin-only estimator (`decision_function`, no `predict_proba`) passes here; the batch
    layer wraps it in the project's temperature calibration
    (`models.batch.recipe.prepare_batch_model`).
    """
    missing = _missing(estimator, ("fit", "get_params"))
    if missing:
        raise ModelContractError(
            f"{where} ({type(estimator).__name__}) lacks {', '.join(missing)}: "
            "it must be a scikit-learn estimator"
        )
    if not gives_probabilities(estimator) and not gives_margins(estimator):
        raise ModelContractError(
            f"{where} ({type(estimator).__name__}) has neither predict_proba nor "
            "decision_function: the blend needs a score per intent"
        )
    return estimator


def gives_probabilities(estimator: Any) -> bool:
    """Whether the estimator (or a pipeline's final step) has `predict_proba`."""
    return _final_has(estimator, "predict_proba")


def gives_margins(estimator: Any) -> bool:
    """Whether the estimator (or a pipeline's final step) has `decision_function`."""
    return _final_has(estimator, "decision_function")


def _final_has(estimator: Any, method: str) -> bool:
    """scikit-learn hides a pipeline's missing methods behind `available_if`: `hasattr` on the
    pipeline asks its final step."""
    try:
        return callable(getattr(estimator, method, None))
    except AttributeError:
        return False
