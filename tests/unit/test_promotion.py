"""The promotion gate on paired answers: significance, the per-intent margin, and the reasons."""

import numpy as np
import pytest

from pipelines.batch.promotion import GateRules, compare, first_version


def paired(wins: int, losses: int, both_right: int = 50, both_wrong: int = 10):
    """Answers of a challenger and a champion on distinct texts with these win/loss counts."""
    challenger = [True] * wins + [False] * losses + [True] * both_right + [False] * both_wrong
    champion = [False] * wins + [True] * losses + [True] * both_right + [False] * both_wrong
    return np.array(challenger), np.array(champion)


def test_a_clear_win_is_promoted_and_says_why():
    challenger, champion = paired(wins=30, losses=5)
    verdict = compare(challenger, champion, ["a"] * len(challenger), GateRules())
    assert verdict.promote
    assert (verdict.wins, verdict.losses) == (30, 5)
    assert verdict.p_value < 0.001
    assert "beats the champion" in verdict.reason and "30 times" in verdict.reason


@pytest.mark.parametrize(("wins", "losses"), [(6, 3), (5, 5), (2, 9), (0, 0)])
def test_a_win_that_could_be_chance_is_refused(wins, losses):
    challenger, champion = paired(wins, losses)
    verdict = compare(challenger, champion, ["a"] * len(challenger), GateRules())
    assert not verdict.promote
    assert verdict.reason.startswith("not significantly better")


def test_the_level_is_a_setting():
    challenger, champion = paired(wins=14, losses=5)  # one-sided p about 0.03
    intents = ["a"] * len(challenger)
    assert compare(challenger, champion, intents, GateRules(alpha=0.05)).promote
    assert not compare(challenger, champion, intents, GateRules(alpha=0.01)).promote


def test_an_intent_that_drops_too_far_blocks_promotion():
    # 40 wins spread over intent "a", while intent "b" (25 texts) loses 8 of its 25.
    challenger_a, champion_a = paired(wins=40, losses=0, both_right=20, both_wrong=0)
    challenger_b, champion_b = paired(wins=0, losses=8, both_right=17, both_wrong=0)
    challenger = np.concatenate([challenger_a, challenger_b])
    champion = np.concatenate([champion_a, champion_b])
    intents = ["a"] * len(challenger_a) + ["b"] * len(challenger_b)
    verdict = compare(challenger, champion, intents, GateRules(max_intent_drop=0.1))
    assert not verdict.promote
    assert verdict.worst_intent == "b" and verdict.worst_intent_drop == pytest.approx(8 / 25)
    assert "intent 'b' drops by 32.0 points" in verdict.reason
    # The same drop on an intent with too few texts to judge does not block.
    few = GateRules(max_intent_drop=0.1, min_intent_texts=30)
    assert compare(challenger, champion, intents, few).promote


def test_the_first_version_needs_the_minimum_accuracy():
    assert first_version(0.8, 0.5).promote
    refused = first_version(0.3, 0.5)
    assert not refused.promote and "0.3000 < 0.5" in refused.reason


def test_rules_refuse_impossible_values():
    with pytest.raises(ValueError, match="alpha"):
        GateRules(alpha=1.5)
    with pytest.raises(ValueError, match="max_intent_drop"):
        GateRules(max_intent_drop=-0.1)
