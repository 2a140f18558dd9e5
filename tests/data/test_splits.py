"""The train/evaluation split: disjoint, stable across calls, subsets and orders, about EVAL_FRACTION held out."""
import datasets
import pytest

from faithful.data.splits import EVAL_FRACTION, part_indices, part_of, take_part

TEXTS = [f"document {i}: the {w} of the day" for i, w in enumerate(["news", "story", "recipe", "review"] * 500)]


def test_split_is_disjoint_complete_and_near_the_fraction():
    train, held = take_part(TEXTS, "train"), take_part(TEXTS, "eval")
    assert not set(train) & set(held) and len(train) + len(held) == len(TEXTS)
    # 2,000 documents: the held-out share is within 3 standard deviations of EVAL_FRACTION
    sd = (EVAL_FRACTION * (1 - EVAL_FRACTION) / len(TEXTS)) ** 0.5
    assert abs(len(held) / len(TEXTS) - EVAL_FRACTION) < 3 * sd


def test_split_depends_on_the_text_only():
    held = set(take_part(TEXTS, "eval"))
    assert set(take_part(TEXTS[::-1], "eval")) == held  # any order
    assert set(take_part(TEXTS[:700], "eval")) == held & set(TEXTS[:700])  # any subset
    assert take_part(TEXTS, "eval") == take_part(list(TEXTS), "eval")  # every call
    ds = datasets.Dataset.from_dict({"text": TEXTS, "n": list(range(len(TEXTS)))})
    assert take_part(ds, "eval")["text"] == take_part(TEXTS, "eval")
    # a known answer, so that the rule itself cannot drift (sha256("hello") starts 2cf24dba…, 0.175 of 2**64)
    assert part_of("hello") == "train" and int("2cf24dba5fb0a30e", 16) / 2 ** 64 > EVAL_FRACTION


def test_bad_input():
    with pytest.raises(ValueError, match="part must be one of"):
        part_indices(TEXTS, "test")
    with pytest.raises(ValueError, match="eval split of this dataset is empty"):
        take_part(["hello"], "eval")
    with pytest.raises(ValueError, match="without a 'text' column"):
        take_part(datasets.Dataset.from_dict({"sentence": ["a"]}), "train")
