"""A retrain as an orchestrator's task: under the scheduler's lock, with an outcome and an exit
code a scheduler can act on, and that outcome kept in the registry for `lambda-ml status`.

Exit codes: 0, a version was registered (champion or challenger, the outcome says which and
why); 99, the champion or the challenger was trained on this very history by this very model
(nothing archived since its cut-off, the same model spec) and nothing was registered (Airflow's
BashOperator marks the task skipped); 1, the run failed or another run held the lock.
"""

import json
import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlflow.exceptions import MlflowException

from common.settings import MlflowSettings, StorageSettings
from common.storage import Location
from pipelines.batch.retrain import NothingNew, RetrainResult
from pipelines.batch.schedule import run_locked
from pipelines.services.tracking_server import is_healthy
from pipelines.tracking import tracking_client

log = logging.getLogger(__name__)

SKIPPED_EXIT_CODE = 99
LAST_RETRAIN_TAG = "last_retrain"
"""The registered model's tag holding the latest retrain's outcome (`Outcome.as_record`)."""

Kind = Literal["champion", "challenger", "skipped", "failed", "locked"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(value: float) -> float | None:
    """A score as JSON holds it: counts stay whole, and NaN (no repeats to score) is null."""
    if isinstance(value, numbers.Integral):
        return int(value)
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class Outcome:
    """What one retrain came to: a version registered as champion or challenger, skipped
    (nothing new), failed, or not run because another run held the lock."""

    kind: Kind
    reason: str
    version: str | None = None
    run_id: str | None = None
    scores: dict[str, float | None] | None = None
    champion_scores: dict[str, float | None] | None = None
    cutoff_offsets: dict[str, int] | None = None
    seconds: dict[str, float] | None = None
    finished_at: str = field(default_factory=_now)
    error: Exception | None = field(default=None, repr=False, compare=False)

    @classmethod
    def registered(cls, result: RetrainResult) -> "Outcome":
        def scores(values: Any) -> dict[str, float | None] | None:
            return {k: _plain(v) for k, v in asdict(values).items()} if values else None

        cutoff = json.loads(result.lineage.get("cutoff_offsets", "{}"))
        return cls(
            "champion" if result.promoted else "challenger",
            result.reason,
            version=result.version,
            run_id=result.run_id,
            scores=scores(result.scores),
            champion_scores=scores(result.champion_scores),
            cutoff_offsets=cutoff,
            seconds={k: round(v, 3) for k, v in result.seconds.items()},
        )

    @classmethod
    def failed(cls, exc: Exception) -> "Outcome":
        return cls("failed", f"{type(exc).__name__}: {exc}", error=exc)

    @property
    def exit_code(self) -> int:
        if self.kind in ("champion", "challenger"):
            return 0
        return SKIPPED_EXIT_CODE if self.kind == "skipped" else 1

    def as_record(self) -> dict[str, object]:
        """The outcome as one JSON-ready object (what `retrain --json` prints)."""
        record = {k: v for k, v in asdict(self).items() if k != "error"}
        return record | {"registered": self.exit_code == 0, "exit_code": self.exit_code}

    def reraise(self) -> None:
        """Raise what ended the run, if anything did, for a caller that acts on exceptions."""
        if self.error is not None:
            raise self.error


def attempt(run: Callable[[], RetrainResult], tracking: MlflowSettings) -> Outcome:
    """Run one retrain and record its outcome on the registered model; never raises for a
    failed run (the outcome carries the error)."""
    try:
        outcome = Outcome.registered(run())
    except NothingNew as exc:
        outcome = Outcome("skipped", str(exc), error=exc)
    except Exception as exc:
        log.exception("retrain failed")
        outcome = Outcome.failed(exc)
    record_outcome(tracking, outcome)
    return outcome


def retrain_task(
    run: Callable[[], RetrainResult],
    tracking: MlflowSettings,
    lock_path: Location,
    storage: StorageSettings | None = None,
    wait: bool = False,
) -> Outcome:
    """One retrain under the scheduler's lock, failing fast if another run holds it (or, with
    `wait`, waiting for it)."""
    attempts: list[Outcome] = []
    try:
        ran = run_locked(lambda: attempts.append(attempt(run, tracking)), lock_path, storage, wait)
    except Exception as exc:  # the lock's store unreachable
        log.exception("could not take the retrain lock %s", lock_path)
        return Outcome.failed(exc)
    if not ran:
        return Outcome("locked", f"another run holds the lock {lock_path}: nothing done")
    return attempts[0]


def record_outcome(tracking: MlflowSettings, outcome: Outcome) -> None:
    """Keep `outcome` as the registered model's `last_retrain` tag (the model is created if no
    version exists yet); with MLflow away it is only logged."""
    if not is_healthy(tracking.uri):
        log.warning("MLflow at %s is not up: the retrain's outcome is not recorded", tracking.uri)
        return
    client, name = tracking_client(tracking), tracking.registered_model
    value = json.dumps(outcome.as_record())
    try:
        try:
            client.set_registered_model_tag(name, LAST_RETRAIN_TAG, value)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name)
            client.set_registered_model_tag(name, LAST_RETRAIN_TAG, value)
    except MlflowException as exc:
        log.warning("could not record the retrain's outcome on %s: %s", name, exc)


def last_outcome(tracking: MlflowSettings) -> dict[str, Any] | None:
    """The latest recorded outcome (`Outcome.as_record`), or None before the first."""
    client = tracking_client(tracking)
    try:
        model = client.get_registered_model(tracking.registered_model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    value = model.tags.get(LAST_RETRAIN_TAG)
    return json.loads(value) if value else None
