"""The blender follows the better model, lets the speed model claim novel intents, sums to 1."""

import math

import numpy as np
import pytest

from models.blend import HedgeBlender

BATCH = {"alarm": 0.7, "timer": 0.2, "weather": 0.1}


def test_weights_move_towards_the_model_with_lower_recent_loss():
    blender = HedgeBlender(learning_rate=1.0, decay=0.99)
    assert blender.layer_weights == (0.5, 0.5)
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    for _ in range(20):
        blender.learn(BATCH, speed, "timer")
    batch_weight, speed_weight = blender.layer_weights
    assert speed_weight > 0.99 and math.isclose(batch_weight + speed_weight, 1.0)


def test_recent_losses_matter_more_than_old_ones():
    blender = HedgeBlender(learning_rate=0.5, decay=0.9)
    good_speed = {"alarm": 0.05, "timer": 0.9, "weather": 0.05}
    for _ in range(50):
        blender.learn(BATCH, good_speed, "alarm")  # batch right, speed wrong
    assert blender.layer_weights[0] > 0.9
    for _ in range(50):
        blender.learn(BATCH, good_speed, "timer")  # the world changed
    assert blender.layer_weights[1] > 0.9


def test_an_intent_only_the_speed_model_knows_can_win():
    blender = HedgeBlender()
    for _ in range(30):
        blender.learn(BATCH, {"alarm": 0.3, "timer": 0.3, "weather": 0.4}, "alarm")
    assert blender.expert_weights["batch"] > blender.expert_weights["speed"]
    speed = {"alarm": 0.05, "timer": 0.05, "book_flight": 0.9}
    blended = blender.blend(BATCH, speed)
    assert max(blended, key=blended.get) == "book_flight"
    assert math.isclose(sum(blended.values()), 1.0)


def test_after_a_drift_the_weights_follow_the_model_that_knows_the_new_intents():
    blender = HedgeBlender()
    for _ in range(100):
        blender.learn(BATCH, {"alarm": 0.4, "timer": 0.3, "weather": 0.3}, "alarm")
    speed = {"alarm": 0.1, "timer": 0.1, "book_flight": 0.8}
    for _ in range(20):
        blender.learn(BATCH, speed, "book_flight")
    assert blender.expert_weights["batch"] < 0.01
    assert blender.layer_weights[1] > 0.3
    blended = blender.blend(BATCH, {"alarm": 0.3, "timer": 0.2, "book_flight": 0.5})
    assert max(blended, key=blended.get) == "book_flight"


def test_one_model_alone_is_passed_through():
    blender = HedgeBlender()
    assert blender.blend(BATCH, None) == BATCH
    assert blender.blend(None, {"a": 1.0}) == {"a": 1.0}
    assert blender.blend(None, None) == {}


def test_without_both_models_nothing_is_learnt():
    blender = HedgeBlender()
    blender.learn(None, {"book_flight": 1.0}, "book_flight")
    blender.learn(BATCH, None, "alarm")
    assert blender.learnt == 0
    assert blender.layer_weights == pytest.approx((0.5, 0.5))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        HedgeBlender(learning_rate=0)
    with pytest.raises(ValueError):
        HedgeBlender(decay=1.5)


def _rows(rng, n: int, classes: list[str]):
    matrix = rng.random((n, len(classes))) ** 3
    matrix /= matrix.sum(axis=1, keepdims=True)
    return matrix, [dict(zip(classes, row.tolist(), strict=True)) for row in matrix]


@pytest.mark.parametrize("seed", range(5))
def test_blend_many_matches_blend_row_by_row(seed):
    rng = np.random.default_rng(seed)
    blender = HedgeBlender()
    batch_classes = [f"b{i}" for i in range(20)] + [f"both{i}" for i in range(30)]
    speed_classes = [f"both{i}" for i in range(29, -1, -1)] + [f"s{i}" for i in range(5)]
    batch_m, batch_d = _rows(rng, 40, batch_classes)
    speed_m, speed_d = _rows(rng, 40, speed_classes)
    speed_m[0] = 0.0  # all mass on intents the batch model does not know: nothing known left
    speed_m[0, -1] = 1.0
    speed_d[0] = dict(zip(speed_classes, speed_m[0].tolist(), strict=True))
    for b, s, y in zip(batch_d[:10], speed_d[:10], ["b1", "both3", "s2"] * 4, strict=False):
        blender.learn(b, s, y)
    classes, matrix = blender.blend_many(batch_classes, batch_m, speed_classes, speed_m)
    assert matrix.shape == (40, len(classes)) and len(set(classes)) == 55
    for row, b, s in zip(matrix, batch_d, speed_d, strict=True):
        expected = blender.blend(b, s)
        assert set(expected) == set(classes)
        assert row.tolist() == [expected[c] for c in classes]  # one implementation


def test_blend_many_with_a_side_missing_returns_the_other():
    rng = np.random.default_rng(0)
    blender = HedgeBlender()
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


def test_weights_for_texts_the_batch_model_trained_on_are_learnt_apart():
    """Repeats the champion trained on teach nothing about how far to trust it on new texts."""
    blender = HedgeBlender()
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    for _ in range(40):
        blender.learn(BATCH, speed, "alarm", batch_seen=True)  # batch right on its repeats
        blender.learn(BATCH, speed, "timer", batch_seen=False)  # speed right on new texts
    seen_batch, _ = blender.weights_for(batch_seen=True)
    new_batch, _ = blender.weights_for(batch_seen=False)
    assert seen_batch > 0.9 and new_batch < 0.1
    assert blender.layer_weights == blender.weights_for(batch_seen=False)
    assert max(blender.blend(BATCH, speed, batch_seen=True).items(), key=lambda kv: kv[1])[0] == (
        "alarm"
    )
    assert max(blender.blend(BATCH, speed).items(), key=lambda kv: kv[1])[0] == "timer"
    assert blender.learnt == 80


def test_a_blender_pickled_with_one_set_of_weights_serves_both():
    import pickle

    blender = HedgeBlender()
    for _ in range(10):
        blender.learn(BATCH, {"alarm": 0.1, "timer": 0.9}, "timer")
    old = {
        "learning_rate": blender.learning_rate,
        "decay": blender.decay,
        "expert_loss": list(blender.new_texts.expert_loss),
        "inner_loss": list(blender.new_texts.inner_loss),
        "learnt": blender.new_texts.learnt,
    }
    restored = HedgeBlender.__new__(HedgeBlender)
    restored.__setstate__(pickle.loads(pickle.dumps(old)))
    assert restored.weights_for(batch_seen=True) == restored.layer_weights == blender.layer_weights
    assert restored.learnt == 10


def test_blend_many_picks_each_rows_weights_like_blend():
    rng = np.random.default_rng(0)
    blender = HedgeBlender()
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    for _ in range(20):
        blender.learn(BATCH, speed, "alarm", batch_seen=True)
        blender.learn(BATCH, speed, "timer", batch_seen=False)
    batch_m, batch_d = _rows(rng, 6, list(BATCH))
    speed_m, speed_d = _rows(rng, 6, ["timer", "book_flight"])
    seen = np.array([True, False, False, True, True, False])
    classes, matrix = blender.blend_many(
        list(BATCH), batch_m, ["timer", "book_flight"], speed_m, seen
    )
    for row, b, s, flag in zip(matrix, batch_d, speed_d, seen, strict=True):
        expected = blender.blend(b, s, batch_seen=bool(flag))
        assert row.tolist() == [expected[c] for c in classes]


@pytest.mark.parametrize("name", ["models.losses", "models.metrics"])
def test_docstring_examples_of_the_scoring_modules(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
