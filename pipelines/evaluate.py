"""Offline, prequential evaluation of the three views: batch only, speed only, and the blend.

One process replays a scenario through the same model code the services run: the batch model
is retrained on the whole history at scheduled points, the speed model re-bases on each new
batch model's cut-off and learns online after it, and the blender learns its weights from both.
Every labelled event is predicted by all three before anything learns from it.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from models.batch_model import (
    build_batch_model,
    count_examples_from_pairs,
    fit_on_counts,
)
from models.blend import HedgeBlender
from models.prequential import ViewScores, prequential_step
from models.registry import ChampionInfo, ChampionModel
from models.speed_model import build_speed_model
from pipelines.produce import ReplayOptions, scenario_for
from streams.dataset import load_dataset
from streams.scenarios import Scenario, StreamItem, replay


@dataclass(frozen=True)
class EvaluationPlan:
    """What to replay, when the batch layer retrains, and how events are grouped into windows."""

    replay: ReplayOptions
    retrain_at: tuple[int, ...]
    window: int = 1000


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    phase: str
    batch_accuracy: float | None
    speed_accuracy: float
    blend_accuracy: float
    batch_version: int


@dataclass
class EvaluationResult:
    scenario: dict
    drift_at: int
    retrain_at: list[int]
    windows: list[Window] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "scenario": self.scenario,
            "drift_at": self.drift_at,
            "retrain_at": self.retrain_at,
            "windows": [asdict(w) for w in self.windows],
            **self.summary,
        }


def _phase(start: int, drift_at: int, retrains: list[int]) -> str:
    if start < drift_at:
        return "before drift"
    if any(drift_at < r <= start for r in retrains):
        return "after retrain"
    return "after drift"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _summarise(windows: list[Window]) -> dict[str, float]:
    """The two figures the blend is judged by, plus each view's accuracy per phase.

    A window before the first batch model has no batch accuracy; there the better view is the
    speed model alone.
    """
    post = [w for w in windows if w.phase == "after drift" and w.batch_accuracy is not None]
    gains = [w.blend_accuracy - (w.batch_accuracy or 0.0) for w in post]
    gaps = [max(w.batch_accuracy or 0.0, w.speed_accuracy) - w.blend_accuracy for w in windows]
    summary = {
        "post_drift_gain_vs_batch_points": round(100 * _mean(gains), 2),
        "worst_window_gap_vs_best_points": round(100 * max(gaps), 2) if gaps else float("nan"),
    }
    for phase in ("before drift", "after drift", "after retrain"):
        chosen = [w for w in windows if w.phase == phase]
        key = phase.replace(" ", "_")
        batch = [w.batch_accuracy for w in chosen if w.batch_accuracy is not None]
        summary[f"{key}_batch_accuracy"] = round(_mean(batch), 4)
        summary[f"{key}_speed_accuracy"] = round(_mean([w.speed_accuracy for w in chosen]), 4)
        summary[f"{key}_blend_accuracy"] = round(_mean([w.blend_accuracy for w in chosen]), 4)
    return summary


class _Views:
    """The batch model, speed model and blender as the system holds them at one moment."""

    def __init__(self) -> None:
        self.batch: ChampionModel | None = None
        self.version = 0
        self.speed = build_speed_model()
        self.blender = HedgeBlender()

    def retrain(self, history: list[tuple[str, str]]) -> None:
        texts, intents, weights = count_examples_from_pairs(history)
        self.version += 1
        info = ChampionInfo("evaluation", str(self.version), run_id="", cutoff_offsets={})
        self.batch = ChampionModel(
            info, fit_on_counts(build_batch_model(), texts, intents, weights)
        )
        self.speed = build_speed_model()  # re-base: the batch model now covers all before
        self.blender = HedgeBlender()

    def batch_probabilities(self, texts: list[str]) -> list[dict[str, float]] | list[None]:
        if self.batch is None:
            return [None] * len(texts)
        return self.batch.predict_proba_many(texts)


def run_evaluation(
    plan: EvaluationPlan, advance: Callable[[int], None] = lambda n: None
) -> EvaluationResult:
    """Replay `plan` prequentially; `advance(n)` is called as events are processed."""
    dataset = load_dataset(plan.replay.data, plan.replay.splits)
    scenario: Scenario = scenario_for(plan.replay, len(dataset.examples))
    items: list[StreamItem] = list(replay(dataset.examples, scenario))
    retrains = sorted(r for r in plan.retrain_at if 0 < r < len(items))
    result = EvaluationResult(
        scenario={
            "name": scenario.name,
            "length": scenario.length,
            "seed": scenario.seed,
            "late_intents": sorted(scenario.late_intents),
            "data": str(plan.replay.data),
        },
        drift_at=scenario.drift_at,
        retrain_at=retrains,
    )
    views = _Views()
    history: list[tuple[str, str]] = []
    boundaries = sorted(set(retrains) | set(range(0, len(items), plan.window)) | {len(items)})
    scores = ViewScores.with_window(plan.window)
    window_start = 0
    for start, end in zip(boundaries, boundaries[1:], strict=False):
        if start in retrains:
            views.retrain(history)
        chunk = items[start:end]
        batch_probs = views.batch_probabilities([item.example.text for item in chunk])
        for item, batch in zip(chunk, batch_probs, strict=True):
            if item.labelled:
                text, intent = item.example.text, item.example.intent
                prequential_step(views.speed, views.blender, scores, text, intent, batch)
                history.append((text, intent))
        advance(len(chunk))
        if end % plan.window == 0 or end == len(items):
            result.windows.append(
                Window(
                    start=window_start,
                    end=end,
                    phase=_phase(window_start, scenario.drift_at, retrains),
                    batch_accuracy=scores.batch.accuracy if scores.batch.seen else None,
                    speed_accuracy=scores.speed.accuracy,
                    blend_accuracy=scores.blend.accuracy,
                    batch_version=views.version,
                )
            )
            scores = ViewScores.with_window(plan.window)
            window_start = end
    result.summary = _summarise(result.windows)
    return result
