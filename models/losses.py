"""The one log loss of the project: capped, so a single confident mistake cannot outweigh
everything else in an average, and the same for prequential scores, blend weights and holdouts.
"""

import math

import numpy as np

LOSS_CAP = -math.log(1e-4)
"""The loss of a probability of 1e-4 or less (an intent the model does not know scores 0)."""


def capped_log_loss(p: float) -> float:
    """-log(p), capped at `LOSS_CAP`.

    >>> capped_log_loss(1.0), capped_log_loss(0.0) == LOSS_CAP
    (-0.0, True)
    """
    return min(LOSS_CAP, -math.log(p)) if p > 0 else LOSS_CAP


def capped_log_losses(p: np.ndarray) -> np.ndarray:
    """`capped_log_loss` of each probability.

    >>> capped_log_losses(np.array([1.0, 0.0])).tolist() == [0.0, LOSS_CAP]
    True
    """
    with np.errstate(divide="ignore"):
        return np.minimum(LOSS_CAP, -np.log(np.asarray(p, dtype=np.float64)))
