"""strategies.framing.anonymous_blocks: the one response-block layout every strategy shows answers in."""

from __future__ import annotations

import random

from composite_llm.strategies.framing import Framing, anonymous_blocks, framed_spans

TEXTS = ["first answer", "second answer", "third answer"]


def test_blocks_in_given_order_when_not_shuffled():
    framing = Framing.for_texts(TEXTS)
    text, labels, order = anonymous_blocks(TEXTS, None, framing)
    assert labels == ["Response A", "Response B", "Response C"] and order == [0, 1, 2]
    assert framed_spans(text, framing.nonce) == list(zip(labels, TEXTS))


def test_a_shuffle_maps_labels_back_to_texts_and_a_seed_repeats_it():
    framing = Framing.for_texts(TEXTS)
    text, labels, order = anonymous_blocks(TEXTS, random.Random(3), framing)
    assert sorted(order) == [0, 1, 2]
    assert framed_spans(text, framing.nonce) == [(label, TEXTS[i]) for label, i in zip(labels, order)]
    assert anonymous_blocks(TEXTS, random.Random(3), framing) == (text, labels, order)
    expected = list(range(3))
    random.Random(3).shuffle(expected)  # the same permutation the strategies' seeded shuffles produced before
    assert order == expected


def test_no_texts_no_blocks():
    assert anonymous_blocks([], None, Framing.for_texts([])) == ("", [], [])
