"""Prequential scores: each prediction is scored before the model learns from its label.

Kept lean on purpose: the speed layer updates three of these per event.
"""

import math
from dataclasses import dataclass, field

from models.blend import LOSS_CAP, Probabilities


@dataclass
class WindowScore:
    """Accuracy and log loss over everything so far and over consecutive windows of events."""

    window: int = 1000
    seen: int = 0
    correct: int = 0
    loss: float = 0.0
    window_correct: int = 0
    window_seen: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, probabilities: Probabilities, intent: str) -> bool:
        """Score one prediction; returns whether its top intent was right."""
        right = bool(probabilities) and max(probabilities, key=probabilities.__getitem__) == intent
        p = probabilities.get(intent, 0.0) if probabilities else 0.0
        self.loss += min(LOSS_CAP, -math.log(p)) if p > 0 else LOSS_CAP
        self.seen += 1
        self.correct += right
        self.window_seen += 1
        self.window_correct += right
        if self.window_seen == self.window:
            self.history.append(self.window_correct / self.window)
            self.window_seen = self.window_correct = 0
        return right

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else 0.0

    @property
    def log_loss(self) -> float:
        return self.loss / self.seen if self.seen else 0.0

    @property
    def last_window_accuracy(self) -> float:
        """The latest complete window, or the running one before any window is complete."""
        if self.history:
            return self.history[-1]
        return self.window_correct / self.window_seen if self.window_seen else 0.0
