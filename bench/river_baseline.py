"""The River baseline the speed model is measured against, and a fair way to set its smoothing.

`river_baseline` is the plain River recipe, `BagOfWords | MultinomialNB`, tokenising exactly like
`HashedTextNB`'s defaults (`SPEED_TOKEN_PATTERN`, lowercased, accents kept) but counting unigrams
only. River's default smoothing (`alpha=1`) drowns the few words of a query, so a comparison
against it would flatter the speed model: `tune_alpha` picks the smoothing by prequential
accuracy on a tuning stream instead, and the speed model's own `alpha` gets the same treatment
(`tune_alpha(events, grid, build=lambda a: build_speed_model(alpha=a))`). Tune on a different
replay from the one measured, so neither model's setting is fitted to the measured events.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from river import compose, feature_extraction, naive_bayes

from models.metrics import SplitScore
from models.speed_model import SPEED_TOKEN_PATTERN
from models.texts import TextMemory, text_key

__all__ = ["ALPHA_GRID", "prequential_scores", "river_baseline", "score_then_learn", "tune_alpha"]

ALPHA_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""The smoothing values both models are tuned over: River's default and three orders of magnitude
below it. A best value on the grid's edge would mean the grid is too narrow."""

LabelledText = tuple[str, str]
"""(text, intent) of one labelled event."""


def river_baseline(alpha: float) -> compose.Pipeline:
    """River's `BagOfWords | MultinomialNB` with additive smoothing `alpha`.

    >>> model = river_baseline(alpha=0.1)
    >>> model.learn_one({"text": "book a flight to Paris"}, "book_flight")
    >>> model.learn_one({"text": "play some jazz"}, "play_music")
    >>> model.predict_one({"text": "a flight please"})
    'book_flight'
    """
    return feature_extraction.BagOfWords(
        on="text", lowercase=True, strip_accents=False, tokenizer_pattern=SPEED_TOKEN_PATTERN
    ) | naive_bayes.MultinomialNB(alpha=alpha)


def prequential_scores(model: Any, events: Iterable[LabelledText]) -> SplitScore:
    """Predict each event, score it, then learn it; scores split by whether the model had
    trained on the text before (see `models.texts`).

    >>> score = prequential_scores(river_baseline(0.1), [("hi", "a"), ("bye", "b"), ("hi", "a")])
    >>> score.seen, score.first_seen.seen, score.repeated.accuracy
    (3, 2, 1.0)
    """
    score = SplitScore()
    learnt = TextMemory()
    for text, intent in events:
        score_then_learn(model, score, learnt, text, intent)
    return score


def score_then_learn(
    model: Any, score: SplitScore, learnt: TextMemory, text: str, intent: str
) -> None:
    """One prequential step of a plain River model: predict and score `text` (split by whether
    `learnt` holds it), then learn it and remember it in `learnt`."""
    x = {"text": text}
    key = text_key(text)
    seen = learnt.contains_key(key)
    score.update(model.predict_proba_one(x), intent, seen=seen, seen_by_any=seen)
    model.learn_one(x, intent)
    learnt.add_key(key)


def tune_alpha(
    events: Sequence[LabelledText],
    grid: Sequence[float] = ALPHA_GRID,
    build: Callable[[float], Any] = river_baseline,
) -> tuple[float, dict[float, SplitScore]]:
    """The `alpha` of `grid` whose `build(alpha)` has the best prequential accuracy over
    `events` (the first such in `grid` on a tie), and every alpha's scores.

    >>> events = [("set an alarm", "alarm"), ("weather today", "weather")] * 3
    >>> best, scores = tune_alpha(events, grid=(0.1, 1.0))
    >>> best in (0.1, 1.0), sorted(scores)
    (True, [0.1, 1.0])
    """
    if not grid:
        raise ValueError("the alpha grid is empty")
    scores = {alpha: prequential_scores(build(alpha), events) for alpha in grid}
    best = max(grid, key=lambda alpha: scores[alpha].accuracy)
    return best, scores
