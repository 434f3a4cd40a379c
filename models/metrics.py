"""Prequential scores: each prediction is scored before the model learns from its label.

Kept lean on purpose: the speed layer updates three of these per event.
"""

from dataclasses import dataclass, field

import numpy as np

from models.blend import Probabilities
from models.losses import capped_log_loss


def outcome(probabilities: Probabilities, intent: object) -> tuple[bool, float]:
    """Whether the top intent of `probabilities` is `intent`, and the probability it gave it.

    >>> outcome({"a": 0.7, "b": 0.3}, "b"), outcome({}, "a")
    ((False, 0.3), (False, 0.0))
    """
    if not probabilities:
        return False, 0.0
    right = max(probabilities, key=probabilities.__getitem__) == intent
    return right, probabilities.get(intent, 0.0)


def row_outcome(row: np.ndarray, column: int | None) -> tuple[bool, float]:
    """`outcome` for probabilities as a row, the true intent at `column` (None: unknown)."""
    if column is None or not len(row):
        return False, 0.0
    return int(np.argmax(row)) == column, float(row[column])


@dataclass
class WindowScore:
    """Accuracy and log loss over everything so far and over consecutive windows of events.

    Parameters
    ----------
    window
        Events per window.

    Attributes
    ----------
    seen, correct, loss
        Events scored, how many had the right top intent, and their summed capped log loss.
    window_seen, window_correct
        The same for the window in progress.
    history
        Accuracy of each complete window, oldest first.
    accuracy, log_loss, last_window_accuracy
        The figures derived from them (0 before any event).

    Examples
    --------
    >>> score = WindowScore(window=2)
    >>> for right in (True, False, True):
    ...     score.record(right, 0.5 if right else 0.1)
    >>> score.seen, score.history, score.last_window_accuracy, round(score.accuracy, 3)
    (3, [0.5], 0.5, 0.667)
    """

    window: int = 1000
    seen: int = 0
    correct: int = 0
    loss: float = 0.0
    window_correct: int = 0
    window_seen: int = 0
    history: list[float] = field(default_factory=list)

    def record(self, right: bool, p: float) -> None:
        """Score one prediction by whether its top intent was right and the probability it
        gave the true intent."""
        self.loss += capped_log_loss(p)
        self.seen += 1
        self.correct += right
        self.window_seen += 1
        self.window_correct += right
        if self.window_seen == self.window:
            self.history.append(self.window_correct / self.window)
            self.window_seen = self.window_correct = 0

    @property
    def accuracy(self) -> float:
        """Share of events whose top intent was right."""
        return self.correct / self.seen if self.seen else 0.0

    @property
    def log_loss(self) -> float:
        """Mean capped log loss of the true intent."""
        return self.loss / self.seen if self.seen else 0.0

    @property
    def last_window_accuracy(self) -> float:
        """The latest complete window, or the running one before any window is complete."""
        if self.history:
            return self.history[-1]
        return self.window_correct / self.window_seen if self.window_seen else 0.0


@dataclass
class ScopeScore:
    """How one view judges whether queries are in scope: in-scope queries and how many it
    answered with the right intent, out-of-scope queries and how many it turned away.

    Examples
    --------
    >>> score = ScopeScore()
    >>> score.record(judged_in_scope=True, right=True, out_of_scope=False)
    >>> score.record(judged_in_scope=True, right=False, out_of_scope=True)
    >>> score.in_scope_accuracy, score.oos_recall
    (1.0, 0.0)
    """

    in_scope: int = 0
    answered: int = 0
    out_of_scope: int = 0
    turned_away: int = 0

    def record(self, *, judged_in_scope: bool, right: bool, out_of_scope: bool) -> None:
        """Count one query: `right` is whether the best in-scope intent was its intent."""
        if out_of_scope:
            self.out_of_scope += 1
            self.turned_away += not judged_in_scope
        else:
            self.in_scope += 1
            self.answered += judged_in_scope and right

    @property
    def in_scope_accuracy(self) -> float:
        """Share of in-scope queries judged in scope and given the right intent."""
        return self.answered / self.in_scope if self.in_scope else 0.0

    @property
    def oos_recall(self) -> float:
        """Share of out-of-scope queries turned away."""
        return self.turned_away / self.out_of_scope if self.out_of_scope else 0.0

    def counts(self) -> list[int]:
        """[in_scope, answered, out_of_scope, turned_away]."""
        return [self.in_scope, self.answered, self.out_of_scope, self.turned_away]


@dataclass
class SplitScore:
    """Prequential scores of one view over all events, and apart on first-seen and repeated
    texts, so memory is never mistaken for understanding.

    Parameters
    ----------
    window
        Events per window of each group.

    Attributes
    ----------
    all
        Every event.
    first_seen
        Events whose text the view's model(s) never trained on.
    repeated
        The others.
    novel
        Events whose text no model of the system trained on: the same events for every view,
        so views can be compared on them.
    scope
        The view's in-scope accuracy and out-of-scope recall on the novel events, when the
        caller judges scope (`models.prequential.prequential_step` with a scope decision).
    seen, accuracy, log_loss, last_window_accuracy
        `all`'s figures.
    first_seen_share
        Share of the events that were first seen.

    Examples
    --------
    >>> score = SplitScore(window=10)
    >>> _ = score.update({"a": 0.9, "b": 0.1}, "a", seen=True, seen_by_any=True)
    >>> _ = score.update({"a": 0.9, "b": 0.1}, "b", seen=False, seen_by_any=False)
    >>> score.accuracy, score.first_seen.accuracy, score.repeated.accuracy, score.first_seen_share
    (0.5, 0.0, 1.0, 0.5)
    """

    window: int = 1000
    all: WindowScore = field(init=False)
    first_seen: WindowScore = field(init=False)
    repeated: WindowScore = field(init=False)
    novel: WindowScore = field(init=False)
    scope: ScopeScore = field(init=False)

    def __post_init__(self) -> None:
        self.all = WindowScore(self.window)
        self.first_seen = WindowScore(self.window)
        self.repeated = WindowScore(self.window)
        self.novel = WindowScore(self.window)
        self.scope = ScopeScore()

    def update(
        self, probabilities: Probabilities, intent: str, *, seen: bool, seen_by_any: bool
    ) -> bool:
        """Score one prediction in each group it belongs to; returns whether it was right."""
        right, p = outcome(probabilities, intent)
        self.record(right, p, seen=seen, seen_by_any=seen_by_any)
        return right

    def record(self, right: bool, p: float, *, seen: bool, seen_by_any: bool) -> None:
        """`WindowScore.record` in each group the prediction belongs to."""
        self.all.record(right, p)
        (self.repeated if seen else self.first_seen).record(right, p)
        if not seen_by_any:
            self.novel.record(right, p)

    @property
    def seen(self) -> int:
        return self.all.seen

    @property
    def accuracy(self) -> float:
        return self.all.accuracy

    @property
    def log_loss(self) -> float:
        return self.all.log_loss

    @property
    def last_window_accuracy(self) -> float:
        return self.all.last_window_accuracy

    @property
    def first_seen_share(self) -> float:
        return self.first_seen.seen / self.all.seen if self.all.seen else 0.0

    def figures(self, prefix: str) -> dict[str, float]:
        """Accuracy overall, first-seen and repeated, with the first-seen share, as metrics."""
        figures = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}window_accuracy": self.last_window_accuracy,
            f"{prefix}log_loss": self.log_loss,
            f"{prefix}first_seen_share": self.first_seen_share,
        }
        for name in ("first_seen", "repeated", "novel"):
            group: WindowScore = getattr(self, name)
            if group.seen:
                figures[f"{prefix}{name}_accuracy"] = group.accuracy
        if self.scope.in_scope:
            figures[f"{prefix}novel_in_scope_accuracy"] = self.scope.in_scope_accuracy
        if self.scope.out_of_scope:
            figures[f"{prefix}novel_oos_recall"] = self.scope.oos_recall
        return figures
