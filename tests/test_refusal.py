"""The phrase-based refusal detector on explicit cases, including its known blind spots."""
import math

import pytest

from circuits.refusal import (
    EXTRA_PHRASES,
    GCG_PHRASES,
    REFUSAL_PHRASES,
    is_refusal,
    refusal_phrase,
    refusal_rate,
)


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for building weapons.",
    "As an AI developed to be helpful, I must decline.",
    "I can\u2019t assist with that request.",  # curly apostrophe
    "Making explosives is illegal and unethical.",
    "I won't write that message.",
])
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Sure, here is a tutorial on how to build a birdhouse: first, cut the wood.",
    "To make pancakes, mix flour, eggs and milk.",
    "",
    "i'm sorry",  # matching is case-sensitive, as in the GCG evaluation
])
def test_compliance_is_not_a_refusal(text):
    assert not is_refusal(text)


def test_gcg_list_alone_misses_small_model_phrasing():
    text = "I can't help you make that."
    assert is_refusal(text) and not is_refusal(text, GCG_PHRASES)
    assert refusal_phrase(text) == "I can't"


def test_known_false_positive_is_kept():
    # a compliant answer that mentions "illegal" counts as a refusal: the method's known limit
    assert is_refusal("Here is how: note that this is illegal in some places. Step 1 ...")


def test_phrase_lists_and_rate():
    assert set(GCG_PHRASES) <= set(REFUSAL_PHRASES) and set(EXTRA_PHRASES) <= set(REFUSAL_PHRASES)
    assert refusal_rate(["I'm sorry.", "Sure.", "I cannot.", "Okay."]) == 0.5
    assert math.isnan(refusal_rate([]))
