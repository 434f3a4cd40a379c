"""Text identity: normalisation, stable keys, the text-hash holdout and the memory of texts."""

import pickle
import subprocess
import sys

import numpy as np

from models.texts import TextMemory, in_holdout, normalise, text_key, text_keys


def test_keys_are_stable_across_processes():
    here = text_key("Book a flight to Paris")
    there = subprocess.run(
        [
            sys.executable,
            "-c",
            "from models.texts import text_key; print(text_key('book a flight to  paris'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(there.stdout) == here


def test_the_holdout_keeps_every_repeat_of_a_text_on_one_side():
    texts = [f"query number {i}" for i in range(5000)]
    held = in_holdout(text_keys(texts), 0.1)
    assert 0.08 < held.mean() < 0.12
    variants = [t.upper() + "  " for t in texts]
    assert (in_holdout(text_keys(variants), 0.1) == held).all()
    # A larger fraction only adds texts to the holdout: none moves back to training.
    assert (in_holdout(text_keys(texts), 0.2) >= held).all()


def test_memory_holds_frozen_and_added_texts_and_survives_a_pickle():
    memory = TextMemory.of(["Set an alarm", "play jazz"])
    memory.add("what's the weather")
    memory.add("PLAY JAZZ")  # already there
    assert len(memory) == 3
    restored = pickle.loads(pickle.dumps(memory))
    assert "set an  alarm" in restored and "what's the weather" in restored
    assert "book a taxi" not in restored
    assert np.array_equal(restored.keys(), memory.keys())


def test_normalise_folds_case_and_space_only():
    assert normalise("  Hey\tSIRI  ") == "hey siri"
    assert normalise("hey, siri") != normalise("hey siri")


def test_many_texts_are_looked_up_as_one_at_a_time():
    memory = TextMemory.of([f"query {i}" for i in range(0, 500, 2)])
    memory.add("added later")
    texts = [f"query {i}" for i in range(500)] + ["added later", "never seen", ""]
    assert memory.contains_keys(text_keys(texts)).tolist() == [text in memory for text in texts]
    assert TextMemory().contains_keys(text_keys(["anything"])).tolist() == [False]


def test_docstring_examples():
    import doctest

    import models.texts

    result = doctest.testmod(models.texts)
    assert result.attempted > 0 and result.failed == 0
