"""Late labels score what was predicted when their query arrived, exactly as the prequential
step scores an inline label."""

import copy

import numpy as np
import pytest

from models.blend import Blender
from models.late_labels import FLOOR, learn_late_label, predict_queries
from models.prequential import ViewScores, prequential_step
from models.speed_model import build_speed_model
from models.texts import TextMemory

HISTORY = [
    ("set an alarm for seven", "alarm"),
    ("play a song by queen", "music"),
    ("what is the weather in paris", "weather"),
    ("wake me up at six", "alarm"),
]
BATCH_CLASSES = ["alarm", "music", "weather"]


def trained():
    model = build_speed_model()
    texts = TextMemory()
    for text, intent in HISTORY:
        model.learn_one({"text": text}, intent)
        texts.add(text)
    return model, texts


def champion_row(intent: str) -> np.ndarray:
    row = np.full(len(BATCH_CLASSES), 1e-5)
    row[BATCH_CLASSES.index(intent)] = 1.0
    return row / row.sum()


@pytest.mark.parametrize("with_champion", [True, False])
def test_a_label_learnt_at_once_scores_and_teaches_as_the_prequential_step(with_champion):
    text, intent = "set an alarm for nine", "alarm"
    batch = (BATCH_CLASSES, champion_row("music")[None, :]) if with_champion else None
    batch_texts = TextMemory.of(["play a song by queen"])
    late_model, late_texts = trained()
    inline_model, inline_texts = copy.deepcopy((late_model, late_texts))
    late_blender, inline_blender = Blender(), Blender()
    late_scores, inline_scores = ViewScores.with_window(10), ViewScores.with_window(10)

    (kept,) = predict_queries(late_model, late_blender, [text], batch, late_texts, batch_texts)
    late_right = learn_late_label(
        kept, text, intent, late_blender, late_scores, [late_model], late_texts
    )
    inline_right = prequential_step(
        inline_model,
        inline_blender,
        inline_scores,
        text,
        intent,
        (BATCH_CLASSES, batch[1][0]) if batch else None,
        inline_texts,
        batch_texts,
    )

    assert late_right == inline_right == (False if with_champion else None)
    assert late_scores.figures() == pytest.approx(inline_scores.figures())
    assert np.array_equal(late_blender.pools, inline_blender.pools)
    assert late_blender.learnt == inline_blender.learnt == int(with_champion)
    x = {"text": "wake me up at nine"}
    assert late_model.predict_proba_one(x) == pytest.approx(inline_model.predict_proba_one(x))
    assert text in late_texts


def test_the_answer_scored_is_the_one_given_before_anything_was_learnt_after_it():
    model, texts = trained()
    blender, scores = Blender(), ViewScores.with_window(10)
    text = "turn on the lights"  # an intent the model does not know yet
    (kept,) = predict_queries(model, blender, [text], None, texts, None)
    model.learn_one({"text": text}, "lights")  # the same text learnt meanwhile, elsewhere
    texts.add(text)

    learn_late_label(kept, text, "lights", blender, scores, [model], texts)

    assert scores.speed.seen == 1 and scores.speed.accuracy == 0.0
    assert scores.speed.first_seen.seen == 1  # not yet trained on when it was asked


def test_kept_rows_leave_out_only_what_scores_as_zero_and_keep_the_top():
    model, texts = trained()
    rows = np.array([[0.9, 0.1 - 2e-5, 2e-5], [FLOOR / 3, FLOOR / 3, FLOOR / 3]])
    (first, second) = predict_queries(
        model, Blender(), ["a", "b"], (BATCH_CLASSES, rows), texts, TextMemory()
    )
    assert first.batch_classes == tuple(BATCH_CLASSES)
    _, batch, _ = first.rows(len(BATCH_CLASSES))
    assert batch is not None and batch.tolist() == pytest.approx([0.9, 0.1 - 2e-5, 0.0])
    _, batch, _ = second.rows(len(BATCH_CLASSES))
    assert batch is not None and np.count_nonzero(batch) == 1 and np.argmax(batch) == 0
