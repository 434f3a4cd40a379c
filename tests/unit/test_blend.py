"""The blender starts from the champion, follows the model that is right on each kind of text,
lets the speed model claim intents the champion never saw, and has one numeric path."""

import math
import pickle

import numpy as np
import pytest

from models.blend import Blender, HedgeBlender

BATCH = {"alarm": 0.7, "timer": 0.2, "weather": 0.1}


def top(probabilities: dict) -> str:
    return max(probabilities, key=probabilities.get)


def test_a_new_blender_serves_the_champion():
    blender = Blender()
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    assert blender.layer_weights == (1.0, 0.0)
    blended = blender.blend(BATCH, speed)
    assert top(blended) == "alarm" and math.isclose(sum(blended.values()), 1.0)


def test_the_weights_move_to_the_model_that_is_right():
    """The speed model is right and the champion wrong, on two intents in turn (so no intent's
    bias can stand in for the weights)."""
    blender = Blender()
    first = (
        {"alarm": 0.7, "timer": 0.2, "weather": 0.1},
        {"alarm": 0.2, "timer": 0.7, "weather": 0.1},
    )
    second = first[1], first[0]
    for _ in range(100):
        blender.learn(*first, "timer")
        blender.learn(*second, "alarm")
    batch_weight, speed_weight = blender.layer_weights
    assert speed_weight > 0.9 and math.isclose(batch_weight + speed_weight, 1.0)
    assert top(blender.blend(*first)) == "timer" and top(blender.blend(*second)) == "alarm"
    assert blender.learnt == 200


def test_after_a_drift_an_intent_only_the_speed_model_knows_wins():
    blender = Blender()
    for _ in range(100):
        blender.learn(BATCH, {"alarm": 0.4, "timer": 0.3, "weather": 0.3}, "alarm")
    unsure = {"alarm": 0.3, "timer": 0.3, "book_flight": 0.4}
    assert top(blender.blend(BATCH, unsure)) == "alarm"
    for _ in range(30):
        blender.learn(BATCH, {"alarm": 0.3, "timer": 0.2, "book_flight": 0.5}, "book_flight")
    assert top(blender.blend(BATCH, unsure)) == "book_flight"


@pytest.mark.parametrize("kind", ["batch_seen", "speed_seen"])
def test_each_kind_of_text_learns_its_own_weights(kind):
    """Repeats a model trained on teach nothing about how far to trust it on new texts."""
    blender = Blender()
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    right_on_repeats = "alarm" if kind == "batch_seen" else "timer"
    right_on_new = "timer" if kind == "batch_seen" else "alarm"
    for _ in range(60):
        blender.learn(BATCH, speed, right_on_repeats, **{kind: True})
        blender.learn(BATCH, speed, right_on_new)
    assert top(blender.blend(BATCH, speed, **{kind: True})) == right_on_repeats
    assert top(blender.blend(BATCH, speed)) == right_on_new
    repeats = blender.weights_for(**{"batch_seen": False, "speed_seen": False, kind: True})
    assert repeats != blender.layer_weights


def test_an_intent_asked_often_wins_a_tie():
    blender = Blender()
    flat = {"alarm": 1 / 3, "timer": 1 / 3, "weather": 1 / 3}
    for _ in range(20):
        blender.learn(flat, flat, "weather")
    assert top(blender.blend(flat, flat)) == "weather"


def test_one_model_alone_is_passed_through():
    blender = Blender()
    assert blender.blend(BATCH, None) == BATCH
    assert blender.blend(None, {"a": 1.0}) == {"a": 1.0}
    assert blender.blend(None, None) == {}


def test_without_both_models_nothing_is_learnt():
    blender = Blender()
    blender.learn(None, {"book_flight": 1.0}, "book_flight")
    blender.learn(BATCH, None, "alarm")
    assert blender.learnt == 0
    assert blender.layer_weights == (1.0, 0.0)


def test_an_intent_neither_model_knows_is_counted_but_moves_nothing():
    blender = Blender()
    before = blender.pools.copy()
    blender.learn(BATCH, {"alarm": 0.5, "timer": 0.5}, "play_music")
    assert blender.learnt == 1 and np.array_equal(blender.pools, before)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        Blender(learning_rate=0)
    with pytest.raises(ValueError):
        Blender(intent_learning_rate=-1)
    with pytest.raises(ValueError):
        Blender(unknown_learning_rate=0)


def _rows(rng, n: int, classes: list[str]):
    matrix = rng.random((n, len(classes))) ** 3
    matrix /= matrix.sum(axis=1, keepdims=True)
    return matrix, [dict(zip(classes, row.tolist(), strict=True)) for row in matrix]


@pytest.mark.parametrize("seed", range(5))
def test_blend_many_matches_blend_row_by_row(seed):
    rng = np.random.default_rng(seed)
    blender = Blender()
    batch_classes = [f"b{i}" for i in range(20)] + [f"both{i}" for i in range(30)]
    speed_classes = [f"both{i}" for i in range(29, -1, -1)] + [f"s{i}" for i in range(5)]
    batch_m, batch_d = _rows(rng, 40, batch_classes)
    speed_m, speed_d = _rows(rng, 40, speed_classes)
    speed_m[0] = 0.0  # all mass on an intent the batch model does not know
    speed_m[0, -1] = 1.0
    speed_d[0] = dict(zip(speed_classes, speed_m[0].tolist(), strict=True))
    flags = rng.random((2, 40)) < 0.5
    intents = ["b1", "both3", "s2", "b1", "both3", "s2", "b1", "both3", "s2", "b1"]
    for b, s, y, seen in zip(batch_d[:10], speed_d[:10], intents, flags.T[:10], strict=True):
        blender.learn(b, s, y, batch_seen=bool(seen[0]), speed_seen=bool(seen[1]))
    classes, matrix = blender.blend_many(batch_classes, batch_m, speed_classes, speed_m, *flags)
    assert matrix.shape == (40, len(classes)) and len(set(classes)) == 55
    for row, b, s, seen in zip(matrix, batch_d, speed_d, flags.T, strict=True):
        expected = blender.blend(b, s, batch_seen=bool(seen[0]), speed_seen=bool(seen[1]))
        assert set(expected) == set(classes)
        assert row.tolist() == pytest.approx([expected[c] for c in classes], rel=1e-12, abs=1e-15)


def test_blend_many_with_a_side_missing_returns_the_other():
    rng = np.random.default_rng(0)
    blender = Blender()
    batch_m, _ = _rows(rng, 3, ["a", "b"])
    speed_m, _ = _rows(rng, 3, ["c", "a"])
    for classes, matrix in (
        blender.blend_many(["a", "b"], batch_m, [], None),
        blender.blend_many(["a", "b"], batch_m, [], np.zeros((3, 0))),
    ):
        assert classes == ["a", "b"] and np.array_equal(matrix, batch_m)
    for classes, matrix in (
        blender.blend_many([], None, ["c", "a"], speed_m),
        blender.blend_many([], np.zeros((3, 0)), ["c", "a"], speed_m),
    ):
        assert classes == ["c", "a"] and np.array_equal(matrix, speed_m)
    assert blender.blend_many([], None, [], np.zeros((3, 0)))[1].shape == (3, 0)


def test_a_pickled_blender_answers_as_before():
    blender = Blender()
    speed = {"alarm": 0.1, "timer": 0.6, "book_flight": 0.3}
    for intent in ["timer", "book_flight", "alarm"] * 10:
        blender.learn(BATCH, speed, intent)
    restored = pickle.loads(pickle.dumps(blender))
    assert restored.blend(BATCH, speed) == blender.blend(BATCH, speed)
    assert restored.learnt == blender.learnt


def test_a_blender_pickled_by_the_hedge_blend_starts_afresh():
    """Snapshots written before name the class `HedgeBlender` and hold Hedge losses."""
    old_state = {"learning_rate": 0.3, "decay": 0.9, "expert_loss": [1.0, 2.0, 3.0]}
    restored = HedgeBlender.__new__(HedgeBlender)
    restored.__setstate__(old_state)
    assert restored.layer_weights == (1.0, 0.0) and restored.learnt == 0
    assert top(restored.blend(BATCH, {"timer": 1.0})) == "alarm"


@pytest.mark.parametrize("name", ["models.losses", "models.metrics", "models.blend"])
def test_docstring_examples_of_the_scoring_modules(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
