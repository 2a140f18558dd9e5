"""Disjoint training and evaluation texts for every corpus, by a rule that needs no bookkeeping.

A document belongs to the evaluation split when the first 8 bytes of the SHA-256 of its text
(UTF-8), read as an unsigned number, fall in the lowest :data:`EVAL_FRACTION` of their range; every other document is training text.
The rule depends on the text alone, so it is the same on every call, for any subset or order
of a corpus, on every machine, and a duplicated text falls on one side only. SAEs train on
``"train"`` (:func:`faithful.train_saes`); every evaluation (reconstruction faithfulness, the
Fake Feature Ratio's own-text frequencies, the feature browser) reads ``"eval"``
(:func:`faithful.activations.eval_contexts`). Probing tasks keep their own train/test splits.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

EVAL_FRACTION = 0.1
"""Share of each corpus's documents held out for evaluation."""
PARTS = ("train", "eval")
RULE = f"first 8 bytes of sha256(text) / 2**64 < {EVAL_FRACTION} → eval, else train"
"""The split rule as recorded in run and result metadata."""


def split_rule(part: str | None) -> str:
    """How a result's documents were chosen, for its metadata: ``part`` and :data:`RULE`, or ``"all"``."""
    return "all" if part is None else f"{part}: {RULE}"


def part_of(text: str) -> str:
    """``"eval"`` or ``"train"``: the split ``text`` belongs to."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return "eval" if h < EVAL_FRACTION * 2 ** 64 else "train"


def part_indices(texts: Sequence[str], part: str) -> list[int]:
    """Indices of the documents of ``texts`` in split ``part`` (``"train"`` or ``"eval"``)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return [i for i, t in enumerate(texts) if part_of(t) == part]


def take_part(dataset, part: str):
    """The documents of ``dataset`` (a ``datasets.Dataset`` with a ``text`` column, or a list of
    texts) in split ``part``, in their order."""
    if isinstance(dataset, (list, tuple)):
        kept = [dataset[i] for i in part_indices(dataset, part)]
    elif "text" not in dataset.column_names:
        raise ValueError(f"cannot split a dataset without a 'text' column (columns: {dataset.column_names}); "
                         "load it with faithful.load_corpus")
    else:
        kept = dataset.select(part_indices(dataset["text"], part))
    if len(kept) == 0:
        raise ValueError(f"the {part} split of this dataset is empty ({len(dataset)} documents, "
                         f"{EVAL_FRACTION:.0%} held out for evaluation): give it more documents, "
                         "or pass split=None to use them all")
    return kept
