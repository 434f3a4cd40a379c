"""The promotion gate: does the challenger really beat the champion on texts neither trained on?

The holdout is split by a hash of the normalised text (`models.texts.in_holdout`), so it shares
no text with any version's training data. Both models answer every distinct holdout text once,
so a popular text counts once and memorising repeats earns nothing. The challenger becomes
champion only if

- it wins on more texts than it loses and McNemar's exact test (one-sided: the challenger is
  better) rejects "no difference" at level `alpha`, and
- no intent with at least `min_intent_texts` holdout texts loses more than `max_intent_drop`
  of its accuracy.
"""

from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import binomtest

from common.settings import BatchSettings


@dataclass(frozen=True)
class GateRules:
    """The gate's thresholds (settings `BATCH_GATE_*`)."""

    alpha: float = 0.05
    max_intent_drop: float = 0.10
    min_intent_texts: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"the gate's alpha must lie in (0, 1); got {self.alpha}")
        if not 0 <= self.max_intent_drop <= 1:
            raise ValueError(f"max_intent_drop must lie in [0, 1]; got {self.max_intent_drop}")

    @classmethod
    def of(cls, batch: BatchSettings) -> "GateRules":
        """The rules that `BATCH_GATE_*` set."""
        return cls(batch.gate_alpha, batch.gate_max_intent_drop, batch.gate_min_intent_texts)


@dataclass(frozen=True)
class Verdict:
    """The gate's answer, with the figures behind it (they go on the run)."""

    promote: bool
    reason: str
    wins: int = 0
    losses: int = 0
    p_value: float = 1.0
    worst_intent: str = ""
    worst_intent_drop: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "gate_wins": float(self.wins),
            "gate_losses": float(self.losses),
            "gate_p_value": self.p_value,
            "gate_worst_intent_drop": self.worst_intent_drop,
        }


def first_version(accuracy: float, min_accuracy: float) -> Verdict:
    """With no champion, the first version only has to reach `min_accuracy` on first-seen texts."""
    promote = accuracy >= min_accuracy
    relation = ">=" if promote else "<"
    return Verdict(
        promote, f"first version: first-seen accuracy {accuracy:.4f} {relation} {min_accuracy}"
    )


def _intent_drops(
    challenger: np.ndarray, champion: np.ndarray, intents: list[str], min_texts: int
) -> dict[str, float]:
    """Champion minus challenger accuracy per intent with at least `min_texts` texts."""
    rows: dict[str, list[int]] = defaultdict(list)
    for row, intent in enumerate(intents):
        rows[intent].append(row)
    return {
        intent: float(champion[r].mean() - challenger[r].mean())
        for intent, r in rows.items()
        if len(r) >= min_texts
    }


def compare(
    challenger_right: np.ndarray,
    champion_right: np.ndarray,
    intents: list[str],
    rules: GateRules,
) -> Verdict:
    """The verdict on paired answers: row i says whether each model got distinct holdout text i
    (of intent `intents[i]`) right.

    >>> right = np.array([True] * 60 + [False] * 40)
    >>> wrong = np.array([True] * 40 + [False] * 60)
    >>> compare(right, wrong, ["a"] * 100, GateRules()).promote
    True
    >>> compare(right, right, ["a"] * 100, GateRules()).promote
    False
    """
    challenger_right = np.asarray(challenger_right, dtype=bool)
    champion_right = np.asarray(champion_right, dtype=bool)
    wins = int((challenger_right & ~champion_right).sum())
    losses = int((champion_right & ~challenger_right).sum())
    p_value = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins else 1.0
    drops = _intent_drops(challenger_right, champion_right, intents, rules.min_intent_texts)
    worst = max(drops, key=drops.__getitem__, default="")
    worst_drop = drops.get(worst, 0.0)
    refused = Verdict(False, "", wins, losses, float(p_value), worst, worst_drop)
    paired = (
        f"on {len(intents)} first-seen holdout texts the challenger is right where the champion "
        f"is wrong {wins} times and the reverse {losses} times (McNemar p = {p_value:.3g})"
    )
    if wins <= losses or p_value >= rules.alpha:
        return replace(refused, reason=f"not significantly better: {paired}, alpha {rules.alpha}")
    if worst_drop > rules.max_intent_drop:
        return replace(
            refused,
            reason=f"{paired}, but intent {worst!r} drops by {100 * worst_drop:.1f} points "
            f"(more than {100 * rules.max_intent_drop:.0f})",
        )
    return replace(
        refused, promote=True, reason=f"beats the champion: {paired}, below alpha {rules.alpha}"
    )
