"""The probing tasks of §4.4 and where their splits come from.

Tasks (:data:`TASKS`): ``sst2`` (train / validation), ``cola`` (train / validation), ``ag_news``
(train / test) and ``yelp_polarity`` (train / test). They are read from the shared data folder
when it holds them, else from the Hugging Face hub. Here Yelp Polarity is represented by the
1,000 ``yelp_labelled_sentences`` (Kotzias et al.), split deterministically 80/20 (a fixed
permutation, seed 0): a stand-in, not the paper's Yelp Polarity.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .corpora import load_corpus, local_corpora


@dataclass(frozen=True)
class ProbeTask:
    """A classification task and where its splits live."""

    name: str
    """Task name accepted by :func:`probe`."""
    labels: tuple[str, ...]
    """Label names, by label id."""
    train: str
    """Shared-data file of the training split (also the registry ``<name>_<split>`` name)."""
    test: str
    """Shared-data file of the test split."""
    hub_splits: tuple[str, str] = ("train", "test")
    """(train, test) split names on the hub, through ``faithful.load_corpus(name, split)``."""
    local_stand_in: str | None = None
    """A shared-data file used instead of both splits when present, split 80/20 (seed 0)."""


TASKS: dict[str, ProbeTask] = {t.name: t for t in [
    ProbeTask("sst2", ("negative", "positive"), "sst2_train", "sst2_validation", ("train", "validation")),
    ProbeTask("cola", ("unacceptable", "acceptable"), "cola_train", "cola_validation", ("train", "validation")),
    ProbeTask("ag_news", ("World", "Sports", "Business", "Sci/Tech"), "ag_news_train", "ag_news_test"),
    ProbeTask("yelp_polarity", ("negative", "positive"), "yelp_polarity_train", "yelp_polarity_test",
              local_stand_in="yelp_labelled_sentences"),
]}
"""The paper's probing tasks (§4.4)."""

STAND_IN_TEST_FRACTION = 0.2
"""Share of a stand-in file held out as its test split."""


def load_task(task: str, *, n_train: int, n_test: int, seed: int = 0):
    """``(train_texts, train_labels, test_texts, test_labels, source)``, seeded subsamples."""
    if task not in TASKS:
        raise ValueError(f"unknown probing task {task!r}; choose one of {sorted(TASKS)}")
    if n_train < 2 or n_test < 1:
        raise ValueError(f"need n_train ≥ 2 and n_test ≥ 1, got {n_train} and {n_test}")

    spec, local = TASKS[task], set(local_corpora())
    if spec.local_stand_in and spec.local_stand_in in local:
        ds = load_corpus(spec.local_stand_in)
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
        n_out = int(round(len(ds) * STAND_IN_TEST_FRACTION))
        train, test = ds.select(perm[n_out:]), ds.select(perm[:n_out])
        source = (f"stand-in: {spec.local_stand_in} split {1 - STAND_IN_TEST_FRACTION:.0%}/"
                  f"{STAND_IN_TEST_FRACTION:.0%} (fixed permutation, seed 0)")
    elif spec.train in local and spec.test in local:
        train, test = load_corpus(spec.train), load_corpus(spec.test)
        source = f"shared data: {spec.train} / {spec.test}"
    else:
        train, test = (load_corpus(task, split=s) for s in spec.hub_splits)
        source = f"hub: {task} {spec.hub_splits[0]} / {spec.hub_splits[1]}"
    out = []
    for ds, n, which, offset in ((train, n_train, "train", 0), (test, n_test, "test", 1)):
        if "label" not in ds.column_names:
            raise ValueError(f"the {which} split of {task} has no 'label' column ({ds.column_names})")
        if n > len(ds):
            warnings.warn(f"{task} {which} has {len(ds)} rows, fewer than the {n} asked for; using them all",
                          stacklevel=2)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(seed) + offset))[:n].tolist()
        sub = ds.select(sorted(idx))
        out += [list(sub["text"]), [int(v) for v in sub["label"]]]
    return (*out, source)
