"""Offline, prequential evaluation of the three views: batch only, speed only, and the blend.

One process replays a scenario through the same model code the services run: the batch model
is retrained on the whole history at scheduled points, the speed model re-bases on each new
batch model's cut-off and learns online after it, and the blender learns its weights from both.
Every labelled event is predicted by all three before anything learns from it.

Query texts repeat, so every score is kept apart for texts a model has trained on (repeated)
and texts it has not (first-seen); `novel` events are those no model has trained on, the same
events for all three views, and the headline figures are on them. A probe set (rows that
enter the stream once each and never reach any model's training data) gives a second yardstick
that no repeat can flatter. On novel events each view's in-scope accuracy and out-of-scope
recall are scored too, under the champion's scope decision (`models.scope`).

With late labels (`ReplayOptions.label_delay`, `label_share`: the same labels `produce` sends
to the feedback topic), each query is answered when it arrives and its answers are kept; its
label, when one comes, scores those answers, teaches the blender from them and is learnt then
(`models.late_labels`), in the window where it arrives. Only labels that have arrived reach the
batch model's history. Probes keep their labels inline: they are scored, never learnt.
"""

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from models.batch.recipe import fit_on_counts, prepare_batch_model
from models.blend import Blender
from models.contracts import check_speed_model
from models.late_labels import Prediction, learn_late_label, predict_queries
from models.metrics import SplitScore
from models.model_spec import ModelSpec
from models.prequential import BatchAnswer, ViewScores, prequential_step
from models.registry import ChampionInfo, ChampionModel
from models.scope import OOS_LABEL, ScopeDecision
from models.texts import TextMemory, normalise
from pipelines.batch.counts import count_examples_from_pairs
from pipelines.produce import ReplayOptions, scenario_for
from streams.dataset import Example, load_dataset
from streams.labels import Label, delayed_labels
from streams.scenarios import Scenario, StreamItem, replay

VIEWS = ("batch", "speed", "blend")
GROUPS = ("all", "first_seen", "repeated", "novel")
PHASES = ("no batch model yet", "before drift", "after drift", "after retrain")
# A window's novel accuracy enters the worst-window figure only over this many novel events:
# fewer is noise, not a measurement.
MIN_NOVEL_PER_WINDOW = 100


@dataclass(frozen=True)
class EvaluationPlan:
    """What to replay, when the batch layer retrains, how events are grouped into windows, and
    which share of the dataset's distinct texts is held out as probes."""

    replay: ReplayOptions
    retrain_at: tuple[int, ...]
    window: int = 1000
    probe_fraction: float = 0.0
    speed_model: ModelSpec = ModelSpec("models.speed_model:build_speed_model")
    batch_model: ModelSpec = ModelSpec("models.batch.recipe:build_batch_model")

    def __post_init__(self) -> None:
        if not 0.0 <= self.probe_fraction < 1.0:
            raise ValueError(f"the probe fraction must lie in [0, 1); got {self.probe_fraction}")


@dataclass(frozen=True)
class Window:
    """One window's counts: `counts[view][group]` is [events, correct]; `probes[view]` the same
    over the probe events in the window; `scope[view]` is [in-scope events, answered right,
    out-of-scope events, turned away] over its novel events."""

    start: int
    end: int
    phase: str
    batch_version: int
    labelled: int
    synthetic: int
    counts: dict[str, dict[str, list[int]]]
    probes: dict[str, list[int]]
    scope: dict[str, list[int]] = field(default_factory=dict)

    def accuracy(self, view: str, group: str = "all") -> float | None:
        events, correct = self.counts[view][group]
        return correct / events if events else None


@dataclass
class EvaluationResult:
    scenario: dict
    drift_at: int
    retrain_at: list[int]
    windows: list[Window] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            **self.summary,
            "scenario": self.scenario,
            "drift_at": self.drift_at,
            "retrain_at": self.retrain_at,
            "windows": [asdict(w) for w in self.windows],
        }


def _phase(start: int, drift_at: int, retrains: list[int]) -> str:
    if not retrains or start < retrains[0]:
        return "no batch model yet"
    if start < drift_at:
        return "before drift"
    if any(drift_at < r <= start for r in retrains):
        return "after retrain"
    return "after drift"


def _ratio(whole: int, part: int) -> float | None:
    """part / whole, or None for an empty whole."""
    return part / whole if whole else None


def _rounded(value: float | None) -> float:
    return round(value, 4) if value is not None else float("nan")


def _points(value: float | None) -> float:
    return round(100 * value, 2) if value is not None else float("nan")


def _pooled(windows: Sequence[Window], view: str, group: str) -> float | None:
    events = sum(w.counts[view][group][0] for w in windows)
    return _ratio(events, sum(w.counts[view][group][1] for w in windows))


def _gain_vs_batch(windows: Sequence[Window], group: str) -> float:
    """Blend minus batch accuracy after the drift, before the next retrain, pooled over the
    events of that phase that have a batch answer."""
    post = [w for w in windows if w.phase == "after drift" and w.counts["batch"]["all"][0]]
    blend, batch = _pooled(post, "blend", group), _pooled(post, "batch", group)
    return _points(None if blend is None or batch is None else blend - batch)


def _worst_gap(windows: Sequence[Window], group: str, min_events: int) -> float:
    """The largest shortfall of the blend below the better of batch and speed, over windows
    with at least `min_events` events of `group` (before the first batch model, the better
    view is the speed model alone)."""
    gaps = []
    for w in windows:
        if w.counts["blend"][group][0] < min_events:
            continue
        best = max(
            a for a in (w.accuracy("batch", group), w.accuracy("speed", group)) if a is not None
        )
        gaps.append(best - (w.accuracy("blend", group) or 0.0))
    return _points(max(gaps)) if gaps else float("nan")


def _summarise(windows: list[Window]) -> dict[str, float]:
    """The headline figures on novel texts first, then the same on all texts, then each view's
    accuracy per phase and group with the shares that say how much each group weighs."""
    labelled = sum(w.labelled for w in windows)
    novel = sum(w.counts["blend"]["novel"][0] for w in windows)
    summary: dict[str, float] = {
        "first_seen_post_drift_gain_vs_batch_points": _gain_vs_batch(windows, "novel"),
        "first_seen_worst_window_gap_vs_best_points": _worst_gap(
            windows, "novel", MIN_NOVEL_PER_WINDOW
        ),
        "first_seen_share": _rounded(_ratio(labelled, novel)),
        "synthetic_share": _rounded(_ratio(labelled, sum(w.synthetic for w in windows))),
        "post_drift_gain_vs_batch_points": _gain_vs_batch(windows, "all"),
        "worst_window_gap_vs_best_points": _worst_gap(windows, "all", 1),
        "labelled_events": labelled,
        "min_novel_events_per_window": MIN_NOVEL_PER_WINDOW,
    }
    for phase in PHASES:
        chosen = [w for w in windows if w.phase == phase]
        key = phase.replace(" ", "_")
        for view in VIEWS:
            for group in GROUPS:
                summary[f"{key}_{view}_{group}_accuracy"] = _rounded(_pooled(chosen, view, group))
            events = sum(w.counts[view]["all"][0] for w in chosen)
            first_seen = sum(w.counts[view]["first_seen"][0] for w in chosen)
            summary[f"{key}_{view}_first_seen_share"] = _rounded(_ratio(events, first_seen))
            probe_events = sum(w.probes[view][0] for w in chosen)
            probe_correct = sum(w.probes[view][1] for w in chosen)
            summary[f"{key}_{view}_probe_accuracy"] = _rounded(_ratio(probe_events, probe_correct))
        summary[f"{key}_probe_events"] = sum(w.probes["blend"][0] for w in chosen)
    return summary | _scope_summary([w for w in windows if w.phase != PHASES[0]])


def _scope_summary(windows: Sequence[Window]) -> dict[str, float]:
    """Each view's in-scope accuracy and out-of-scope recall on novel events, pooled over the
    windows given (those with a batch model), with the numbers of events they are over."""
    summary: dict[str, float] = {}
    for view in VIEWS:
        in_scope, answered, out, turned_away = (
            sum(w.scope.get(view, [0, 0, 0, 0])[i] for w in windows) for i in range(4)
        )
        summary[f"first_seen_{view}_in_scope_accuracy"] = _rounded(_ratio(in_scope, answered))
        summary[f"first_seen_{view}_oos_recall"] = _rounded(_ratio(out, turned_away))
        if view == "blend":
            summary["first_seen_in_scope_events"] = in_scope
            summary["first_seen_oos_events"] = out
    return summary


class _Views:
    """The batch model, speed model and blender as the system holds them at one moment, with
    the texts each has trained on."""

    def __init__(self, speed_model: ModelSpec, batch_model: ModelSpec) -> None:
        self.speed_model, self.batch_model = speed_model, batch_model
        self.batch: ChampionModel | None = None
        self.version = 0
        self.speed = self._new_speed_model()
        self.speed_texts = TextMemory()
        self.blender = Blender()
        self.scope: ScopeDecision | None = None

    def _new_speed_model(self):
        return check_speed_model(self.speed_model.build(), self.speed_model.factory)

    def retrain(self, history: list[tuple[str, str]]) -> None:
        texts, intents, weights = count_examples_from_pairs(history)
        self.version += 1
        info = ChampionInfo("evaluation", str(self.version), run_id="", cutoff_offsets={})
        model, _ = prepare_batch_model(self.batch_model.build())
        model = fit_on_counts(model, texts, intents, weights)
        self.batch = ChampionModel(info, model, TextMemory.of(texts))
        self.scope = self.batch.scope or ScopeDecision.top_intent(OOS_LABEL)
        self.speed = self._new_speed_model()  # re-base: the batch model now covers all before
        self.speed_texts = TextMemory()
        self.blender = Blender()

    def batch_answers(self, texts: list[str]) -> list[BatchAnswer | None]:
        if self.batch is None:
            return [None] * len(texts)
        classes = self.batch.classes
        return [(classes, row) for row in self.batch.predict_proba_matrix(texts)]


@dataclass(frozen=True)
class _Event:
    item: StreamItem
    probe: bool = False


def _split_probes(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(rows to replay, probe rows): `fraction` of the distinct normalised texts, chosen with
    `seed`, held out whole, so no repeat of a probe text is in the stream."""
    if fraction <= 0:
        return examples, []
    texts = sorted({normalise(e.text) for e in examples})
    chosen = set(random.Random(seed).sample(texts, int(len(texts) * fraction)))
    probes, kept, used = [], [], set()
    for example in examples:
        text = normalise(example.text)
        if text not in chosen:
            kept.append(example)
        elif text not in used:  # each probe text enters the stream once
            used.add(text)
            probes.append(example)
    return kept, probes


def _with_probes(
    items: list[StreamItem], probes: list[Example], scenario: Scenario, seed: int
) -> list[_Event]:
    """The stream with each probe inserted once at a random place; a probe of a late intent
    only after the drift point, as the scenario would have it."""
    rng = random.Random(seed + 3)
    events = [_Event(item) for item in items]
    slots = []
    for example in probes:
        earliest = scenario.drift_at if example.intent in scenario.late_intents else 0
        slots.append((rng.randint(earliest, len(items)), example))
    for position, example in sorted(slots, key=lambda slot: slot[0], reverse=True):
        events.insert(position, _Event(StreamItem(example, labelled=True), probe=True))
    return events


def _counts(scores: ViewScores) -> dict[str, dict[str, list[int]]]:
    def of(score: SplitScore) -> dict[str, list[int]]:
        return {g: [getattr(score, g).seen, getattr(score, g).correct] for g in GROUPS}

    return {view: of(getattr(scores, view)) for view in VIEWS}


def _stream(plan: EvaluationPlan) -> tuple[list[_Event], Scenario, int]:
    """The events to replay, probes inserted, with their scenario and the number of probes."""
    dataset = load_dataset(plan.replay.data, plan.replay.splits)
    replayed, probes = _split_probes(dataset.examples, plan.probe_fraction, plan.replay.seed)
    scenario: Scenario = scenario_for(plan.replay, len(replayed))
    events = _with_probes(list(replay(replayed, scenario)), probes, scenario, plan.replay.seed)
    return events, scenario, len(probes)


def _scenario_facts(plan: EvaluationPlan, scenario: Scenario, probes: int) -> dict:
    """What the result records about the replay, so a report says what it measured."""
    return {
        "name": scenario.name,
        "length": scenario.length,
        "seed": scenario.seed,
        "late_intents": sorted(scenario.late_intents),
        "data": str(plan.replay.data),
        "tail_fraction": plan.replay.tail_fraction,
        "probe_fraction": plan.probe_fraction,
        "probes": probes,
        "window": plan.window,
        "label_delay": plan.replay.label_delay,
        "label_share": plan.replay.label_share,
    }


class _Tally:
    """The scores of the window being replayed, from its start; `close` turns them into a
    `Window` and opens the next, so no count runs across windows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._open(0)

    def _open(self, start: int) -> None:
        self.start = start
        self.synthetic = 0
        self.scores = ViewScores.with_window(self.size)
        self.probe_scores = ViewScores.with_window(self.size)

    def close(self, end: int, phase: str, batch_version: int) -> Window:
        window = Window(
            start=self.start,
            end=end,
            phase=phase,
            batch_version=batch_version,
            labelled=self.scores.blend.seen,
            synthetic=self.synthetic,
            counts=_counts(self.scores),
            probes={v: groups["all"] for v, groups in _counts(self.probe_scores).items()},
            scope={view: getattr(self.scores, view).scope.counts() for view in VIEWS},
        )
        self._open(end)
        return window


class _LateLabels:
    """The queries' answers kept until their labels come, and when each label comes: after
    the event at position `after`, as `streams.labels.delayed_labels` plans them."""

    def __init__(self, events: list[_Event], plan: EvaluationPlan) -> None:
        self.due: defaultdict[int, list[int]] = defaultdict(list)
        labelling = plan.replay.labelling
        for planned in delayed_labels((event.item for event in events), labelling):
            if isinstance(planned, Label) and not events[planned.index].probe:
                self.due[planned.after].append(planned.index)
        self.awaited = {index for indices in self.due.values() for index in indices}
        self.kept: dict[int, Prediction] = {}
        self.item_at: dict[int, StreamItem] = {}


def _replay_chunk(
    views: _Views,
    chunk: list[_Event],
    first: int,
    tally: _Tally,
    history: list[tuple[str, str]],
    late: _LateLabels | None,
) -> None:
    """Predict every labelled event of `chunk` (at positions `first` on) with all three views
    before any learns from it.

    Probes are scored apart and never learnt; every other labelled event joins `history`, the
    batch model's training data at its next retrain. With `late`, a query's answers are kept
    and its label, if it gets one, is learnt when it arrives.
    """
    answers = views.batch_answers([event.item.example.text for event in chunk])
    for position, (event, batch) in enumerate(zip(chunk, answers, strict=True), start=first):
        if late is not None and not event.probe:
            _answer_then_learn_arrived(views, event, batch, position, tally, history, late)
            continue
        if not event.item.labelled:
            continue
        text, intent = event.item.example.text, event.item.example.intent
        prequential_step(
            views.speed,
            views.blender,
            tally.probe_scores if event.probe else tally.scores,
            text,
            intent,
            batch,
            speed_texts=views.speed_texts,
            batch_texts=views.batch.training_texts if views.batch else None,
            learn=not event.probe,
            scope=views.scope,
        )
        if not event.probe:
            history.append((text, intent))
            tally.synthetic += event.item.synthetic


def _answer_then_learn_arrived(
    views: _Views,
    event: _Event,
    batch: tuple | None,
    position: int,
    tally: _Tally,
    history: list[tuple[str, str]],
    late: _LateLabels,
) -> None:
    """Answer the query at `position` (keeping the answers if a label will come), then learn
    the labels that arrive after it, each scored on the answers kept for it."""
    if position in late.awaited:
        (late.kept[position],) = predict_queries(
            views.speed,
            views.blender,
            [event.item.example.text],
            None if batch is None else (batch[0], batch[1][None, :]),
            views.speed_texts,
            views.batch.training_texts if views.batch else None,
            scope=views.scope,
        )
        late.item_at[position] = event.item
    for labelled in late.due.pop(position, []):
        item = late.item_at.pop(labelled)
        text, intent = item.example.text, item.example.intent
        learn_late_label(
            late.kept.pop(labelled),
            text,
            intent,
            views.blender,
            tally.scores,
            [views.speed],
            views.speed_texts,
            views.scope.oos_label if views.scope else OOS_LABEL,
        )
        history.append((text, intent))
        tally.synthetic += item.synthetic


def run_evaluation(
    plan: EvaluationPlan, advance: Callable[[int], None] = lambda n: None
) -> EvaluationResult:
    """Replay `plan` prequentially; `advance(n)` is called as events are processed."""
    events, scenario, probes = _stream(plan)
    retrains = sorted(r for r in plan.retrain_at if 0 < r < len(events))
    result = EvaluationResult(
        scenario=_scenario_facts(plan, scenario, probes),
        drift_at=scenario.drift_at,
        retrain_at=retrains,
    )
    views = _Views(plan.speed_model, plan.batch_model)
    history: list[tuple[str, str]] = []
    boundaries = sorted(set(retrains) | set(range(0, len(events), plan.window)) | {len(events)})
    tally = _Tally(plan.window)
    late = None if plan.replay.labelling.inline else _LateLabels(events, plan)
    for start, end in zip(boundaries, boundaries[1:], strict=False):
        if start in retrains:
            views.retrain(history)
        chunk = events[start:end]
        _replay_chunk(views, chunk, start, tally, history, late)
        advance(len(chunk))
        if end % plan.window == 0 or end == len(events):
            phase = _phase(tally.start, scenario.drift_at, retrains)
            result.windows.append(tally.close(end, phase, views.version))
    result.summary = _summarise(result.windows)
    return result
