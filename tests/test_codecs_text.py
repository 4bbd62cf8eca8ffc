"""Text: one caption chosen among several columns (seeded or first), tokenizer, info."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sdsnodes.codecs import Decoded, Text
from sdsnodes.errors import DecodeError

SAMPLE = {"short": "  a cat ", "long": b"a black cat on a mat", "empty": "  ", "none": None}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_old_behaviour_without_columns():
    text = Text()
    assert not text.needs_sample and text.accepts_none  # a missing caption stays None
    assert text(" a ", rng()) == "a" and text(None, rng()) is None


def test_random_choice_is_seeded_and_covers_non_empty_columns():
    codec = Text(columns=["empty", "short", "none", "long"], with_info=True)
    assert codec.needs_sample and codec.accepts_none
    picks = [codec(None, rng(seed), sample=SAMPLE) for seed in range(40)]
    assert {p.value for p in picks} == {"a cat", "a black cat on a mat"}
    assert {p.info["caption_column"] for p in picks} == {"short", "long"}
    assert all((p.info["caption_column"] == "short") == (p.value == "a cat") for p in picks)
    again = [codec(None, rng(seed), sample=SAMPLE).value for seed in range(40)]
    assert again == [p.value for p in picks]


def test_first_non_empty_column():
    codec = Text(columns=["none", "empty", "long", "short"], choice="first", with_info=True)
    out = codec("ignored", rng(), sample=SAMPLE)
    assert out == Decoded("a black cat on a mat", {"caption_column": "long"})
    unstripped = Text(columns=["empty", "short"], choice="first", strip=False)
    assert unstripped(None, rng(), sample=SAMPLE) == "  a cat "  # blank still counts as empty


def test_no_caption_in_any_column_raises():
    with pytest.raises(DecodeError, match="no caption"):
        Text(columns=["empty", "none", "absent"])(None, rng(), sample=SAMPLE)
    with pytest.raises(DecodeError, match="not UTF-8"):
        Text(columns=["bad"])(None, rng(), sample={"bad": b"\xff\xfe"})


def test_tokenizer_applied_after_choice_and_errors_wrapped():
    codec = Text(columns=["short"], tokenizer=str.split)
    assert codec(None, rng(), sample=SAMPLE) == ["a", "cat"]
    assert Text(tokenizer=len)(" abc ", rng()) == 3
    assert Text(tokenizer=len)(None, rng()) is None

    def broken(text):
        raise RuntimeError("vocab missing")

    with pytest.raises(DecodeError, match="vocab missing"):
        Text(tokenizer=broken)("a cat", rng())


def test_with_info_without_columns():
    assert Text(with_info=True)(" x ", rng()) == Decoded("x", {"caption_column": None})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": []}, "columns=\\[\\]"),
        ({"columns": "caption"}, "columns='caption'"),
        ({"columns": ["a", 1]}, "columns="),
        ({"choice": "longest"}, "choice='longest'"),
        ({"tokenizer": "bert"}, "tokenizer='bert'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Text(**kwargs)


def test_pickle():
    codec = Text(columns=["short", "long"], choice="first", tokenizer=str.upper)
    clone = pickle.loads(pickle.dumps(codec))
    assert repr(clone) == repr(codec)
    assert clone(None, rng(), sample=SAMPLE) == "A CAT"
