"""The blender follows the better model, lets the speed model claim novel intents, sums to 1."""

import math

import pytest

from models.blend import HedgeBlender, novel_mass

BATCH = {"alarm": 0.7, "timer": 0.2, "weather": 0.1}


def test_weights_move_towards_the_model_with_lower_recent_loss():
    blender = HedgeBlender(learning_rate=1.0, decay=0.99)
    assert blender.weights == (0.5, 0.5)
    speed = {"alarm": 0.1, "timer": 0.8, "weather": 0.1}
    for _ in range(20):
        blender.learn(BATCH, speed, "timer")
    batch_weight, speed_weight = blender.weights
    assert speed_weight > 0.99 and math.isclose(batch_weight + speed_weight, 1.0)


def test_recent_losses_matter_more_than_old_ones():
    blender = HedgeBlender(learning_rate=0.5, decay=0.9)
    good_speed = {"alarm": 0.05, "timer": 0.9, "weather": 0.05}
    for _ in range(50):
        blender.learn(BATCH, good_speed, "alarm")  # batch right, speed wrong
    assert blender.weights[0] > 0.9
    for _ in range(50):
        blender.learn(BATCH, good_speed, "timer")  # the world changed
    assert blender.weights[1] > 0.9


def test_an_intent_only_the_speed_model_knows_can_win():
    blender = HedgeBlender()
    for _ in range(30):
        blender.learn(BATCH, {"alarm": 0.3, "timer": 0.3, "weather": 0.4}, "alarm")
    assert blender.expert_weights["batch"] > blender.expert_weights["speed"]
    speed = {"alarm": 0.05, "timer": 0.05, "book_flight": 0.9}
    blended = blender.blend(BATCH, speed)
    assert max(blended, key=blended.get) == "book_flight"
    assert math.isclose(sum(blended.values()), 1.0)
    assert novel_mass(BATCH.keys(), speed) == pytest.approx(0.9)


def test_after_a_drift_the_weights_follow_the_model_that_knows_the_new_intents():
    blender = HedgeBlender()
    for _ in range(100):
        blender.learn(BATCH, {"alarm": 0.4, "timer": 0.3, "weather": 0.3}, "alarm")
    speed = {"alarm": 0.1, "timer": 0.1, "book_flight": 0.8}
    for _ in range(20):
        blender.learn(BATCH, speed, "book_flight")
    assert blender.expert_weights["batch"] < 0.01
    assert blender.weights[1] > 0.3
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
    assert blender.weights == pytest.approx((0.5, 0.5))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        HedgeBlender(learning_rate=0)
    with pytest.raises(ValueError):
        HedgeBlender(decay=1.5)
