"""Token statistics of a training corpus against the model (paper Table 1 and App. C).

``dataset_stats(model, dataset)`` works for any corpus, so rows compare side by side:

* a Faithful dataset (a folder from ``generate_faithful_dataset``, or a ``datasets.Dataset``
  with ``token_ids``): the generated tokens, the start token not included;
* any text corpus (a ``datasets.Dataset`` with a ``text`` column, or a list of str): each text
  is tokenised *without* the start token, so its first token is the first text token;
* a list of token-id lists.

Definitions (every percentage is over the model's vocabulary of ``V = d_vocab`` ids):

* all-token coverage = distinct token ids anywhere in the corpus / V;
* first-token coverage = distinct first tokens of the documents / V;
* ``P`` = the model's next-token distribution after the start token, restricted to the
  non-special tokens ``S`` and renormalised (a corpus never starts with a special token, and
  the Faithful dataset keeps no sample that stopped at once); ``Q`` = the documents' first-token
  frequencies over ``S``;
* ``kl_model_data`` = KL(P ‖ Q_ε), the paper's column, with additive smoothing on the dataset
  side: ``Q_ε(x) = (c(x) + ε) / (N + ε|S|)`` for first-token counts ``c`` over ``N`` documents,
  default ``ε = 1e-3`` (a pseudo-mass of ≈49 documents over SmolLM2's 49k tokens: seen tokens
  barely move; an unseen token costs about ``P(x) log(P(x) N / ε)``, so this number grows with
  the model mass the corpus misses and depends on ε; report ε with it);
* ``kl_data_model`` = KL(Q ‖ P): finite without smoothing, since ``P > 0`` on ``S``;
* ``js`` = Jensen–Shannon divergence of P and Q (no smoothing; in nats, at most ln 2).

Every number but the lengths depends on the sample's size: a larger sample sees more distinct
tokens (coverage grows) and more of the start distribution's tail (KL(model ‖ data) usually
falls; for the model's own text, towards 0).
Compare corpora at one token count (``dataset_stats(..., max_tokens=n)``), and read KL(model ‖ data)
with its ε (:func:`stats_table` prints it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import datasets as hfds
import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import storage
from ..intervals import bootstrap_statistic
from ..models import model_name, special_token_ids, start_token_id
from ..storage import Result
from .corpora import dataset_label, load_corpus
from .generate import META_FILE, load_faithful_dataset

EPSILON = 1e-3
"""Default additive smoothing (pseudo-count per token) of the dataset side of KL(model ‖ data)."""


@dataclass
class DatasetStats(Result):
    """Table 1 / App. C statistics of one corpus for one model."""

    name: str
    """Corpus name (folder name for a Faithful dataset)."""
    model: str
    """Model whose vocabulary and start-token distribution are the reference."""
    total_tokens: int
    """Tokens in all documents measured (start token not counted; after any ``max_tokens`` cut)."""
    sequences: int
    """Non-empty documents."""
    length_mean: float
    """Mean tokens per document."""
    length_median: float
    """Median tokens per document."""
    length_std: float
    """Standard deviation of tokens per document."""
    length_min: int
    """Shortest document, in tokens."""
    length_max: int
    """Longest document, in tokens."""
    vocab_size: int
    """The model's vocabulary size V."""
    unique_tokens: int
    """Distinct token ids anywhere in the corpus."""
    all_token_coverage: float
    """unique_tokens / V, in %."""
    unique_first_tokens: int
    """Distinct first tokens of the documents."""
    first_token_coverage: float
    """unique_first_tokens / V, in %."""
    kl_model_data: float
    """KL(P_model ‖ Q_ε) in nats over the non-special tokens (the paper's column)."""
    kl_data_model: float
    """KL(Q ‖ P_model) in nats (no smoothing needed)."""
    js: float
    """Jensen–Shannon divergence of P_model and Q, in nats (≤ ln 2)."""
    epsilon: float
    """Additive smoothing used for kl_model_data."""
    top_model: list = field(default_factory=list)
    """The model's 10 most likely first tokens: dicts id, token, model_p, data_freq."""
    top_data: list = field(default_factory=list)
    """The corpus's 10 most frequent first tokens: dicts id, token, model_p, data_freq."""
    intervals: dict = field(default_factory=dict)
    """Bootstrap intervals over the documents (:func:`faithful.intervals.bootstrap_statistic`):
    ``kl_model_data`` and ``coverage_gap`` (first-token minus all-token coverage, in %), each an
    :class:`~faithful.intervals.Estimate` as a dict; empty for fewer than 2 documents."""
    rank_curves: dict = field(default_factory=dict)
    """Rank-frequency curves (``model_first``, ``data_first``, ``data_all``): [[rank, p], …], log-spaced ranks."""

    def row(self) -> dict:
        """The Table 1 columns only."""
        keep = ("name", "total_tokens", "sequences", "length_mean", "unique_tokens",
                "all_token_coverage", "first_token_coverage", "kl_model_data", "epsilon",
                "kl_data_model", "js")
        return {k: getattr(self, k) for k in keep}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetStats":
        """Read back the JSON :meth:`save` wrote."""
        return cls(**storage.read_json(path))

    def figure(self):
        """App. C: top-10 first tokens (model's, corpus's) and rank-frequency curves (log)."""
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        for ax, top, title in ((axes[0], self.top_model, "model's top-10 first tokens"),
                               (axes[1], self.top_data, f"{self.name}: top-10 first tokens")):
            x = np.arange(len(top))
            ax.bar(x - 0.2, [t["model_p"] for t in top], 0.4, label="model P(x | start)")
            ax.bar(x + 0.2, [t["data_freq"] for t in top], 0.4, label="dataset first-token freq.")
            ax.set_xticks(x, [repr(t["token"])[1:-1][:12] for t in top], rotation=60, fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        labels = {"model_first": "model P(x | start)", "data_first": "dataset first tokens",
                  "data_all": "dataset all tokens"}
        for key, label in labels.items():
            curve = np.asarray(self.rank_curves.get(key, []), dtype=float)
            if len(curve):
                axes[2].loglog(curve[:, 0], curve[:, 1], label=label)
        axes[2].set_xlabel("rank")
        axes[2].set_ylabel("probability")
        axes[2].set_title(f"rank-frequency; KL(model‖data) = {self.kl_model_data:.3f}", fontsize=10)
        axes[2].legend(fontsize=8)
        fig.suptitle(f"{self.model} — {self.name}: first-token coverage "
                     f"{self.first_token_coverage:.2f}%, all-token {self.all_token_coverage:.2f}%")
        fig.tight_layout()
        return fig


def dataset_stats(model, dataset, *, name: str | None = None, max_docs: int | None = None,
                  max_tokens: int | None = None, epsilon: float = EPSILON) -> DatasetStats:
    """Statistics of ``dataset`` (see the module docstring) for ``model``.

    ``dataset``: a ``datasets.Dataset`` (``token_ids`` or ``text``), a list of texts or of token-id
    lists, or anything :func:`faithful.load_corpus` takes (a name, a file, a saved dataset; a
    Faithful dataset folder's generated token ids are used as they are).

    ``max_docs`` keeps the first ``max_docs`` rows (empty ones included in the count, then dropped).
    ``max_tokens`` keeps the non-empty documents in order until their token total reaches
    ``max_tokens``; the document that crosses it is **cut** to its first tokens, so the total is
    exactly ``max_tokens`` (its first token still counts; the cut shortens it, which shows in the
    length columns only). Corpora of different document lengths then compare at one token count.
    A corpus with fewer tokens is used whole: ``total_tokens`` records the tokens actually used.
    Both limits may be given: whichever is reached first stops. Texts are tokenised only as far as
    needed."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0 (additive smoothing), got {epsilon}")
    for arg, value in (("max_docs", max_docs), ("max_tokens", max_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value <= 0):
            raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
    docs, default_name = _documents(model, dataset, max_docs, max_tokens)
    if not docs:
        raise ValueError(f"{default_name} has no non-empty document: nothing to measure")
    V = int(model.cfg.d_vocab)
    lengths = np.array([len(d) for d in docs])
    all_counts = np.zeros(V, dtype=np.int64)
    for i in range(0, len(docs), 4096):
        all_counts += np.bincount(np.concatenate(docs[i:i + 4096]), minlength=V)[:V]
    first = np.bincount(np.array([d[0] for d in docs]), minlength=V)[:V]
    support = np.ones(V, dtype=bool)
    support[[i for i in special_token_ids(model) if i < V]] = False
    p = np.where(support, start_distribution(model), 0.0)
    p = p / p.sum()  # P: renormalised over the non-special tokens
    div = first_token_divergences(p[support], first[support], epsilon)
    q_all = first / first.sum()
    decode = model.tokenizer.decode

    def top(order):
        return [dict(id=int(i), token=decode([int(i)]), model_p=float(p[i]), data_freq=float(q_all[i]))
                for i in order[:10]]

    return DatasetStats(
        name=name or default_name, model=model_name(model), total_tokens=int(lengths.sum()),
        sequences=len(docs), length_mean=float(lengths.mean()), length_median=float(np.median(lengths)),
        length_std=float(lengths.std()), length_min=int(lengths.min()), length_max=int(lengths.max()),
        vocab_size=V, unique_tokens=int((all_counts > 0).sum()),
        all_token_coverage=100.0 * float((all_counts > 0).sum()) / V,
        unique_first_tokens=int((first > 0).sum()), first_token_coverage=100.0 * float((first > 0).sum()) / V,
        epsilon=float(epsilon), top_model=top(np.argsort(-p, kind="stable")),
        top_data=top(np.argsort(-first, kind="stable")), **div,
        intervals=_bootstrap(docs, p, support, epsilon, div["kl_model_data"],
                             100.0 * float((first > 0).sum() - (all_counts > 0).sum()) / V),
        rank_curves={"model_first": _rank_curve(p), "data_first": _rank_curve(q_all),
                     "data_all": _rank_curve(all_counts / all_counts.sum())})


def _bootstrap(docs: list[np.ndarray], p: np.ndarray, support: np.ndarray, epsilon: float, kl: float,
               gap: float, n_boot: int = 200, seed: int = 0) -> dict:
    """KL(model ‖ data) and the coverage gap recomputed on ``n_boot`` resamples of the documents."""
    if len(docs) < 2:
        return {}
    V = len(p)
    firsts = np.array([d[0] for d in docs])
    distinct = [np.unique(d) for d in docs]
    rng = np.random.default_rng(seed)
    kls, gaps = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(docs), len(docs))
        first = np.bincount(firsts[idx], minlength=V)[:V]
        kls.append(first_token_divergences(p[support], first[support], epsilon)["kl_model_data"])
        n_all = len(np.unique(np.concatenate([distinct[i] for i in idx])))
        gaps.append(100.0 * ((first > 0).sum() - n_all) / V)
    return {"kl_model_data": bootstrap_statistic(kl, kls, "documents").to_dict(),
            "coverage_gap": bootstrap_statistic(gap, gaps, "documents").to_dict()}


def first_token_divergences(p: np.ndarray, counts: np.ndarray, epsilon: float = EPSILON) -> dict:
    """KL(P ‖ Q_ε), KL(Q ‖ P) and JS(P, Q) in nats over one support.

    ``p``: model probabilities (renormalised here); ``counts``: first-token counts;
    ``Q = counts / N``, ``Q_ε = (counts + ε) / (N + ε·len(counts))``.
    """
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    if n == 0:
        nan = float("nan")
        return dict(kl_model_data=nan, kl_data_model=nan, js=nan)
    q = c / n
    q_eps = (c + epsilon) / (n + epsilon * len(c))
    m = 0.5 * (p + q)
    return dict(kl_model_data=_kl(p, q_eps), kl_data_model=_kl(q, p),
                js=0.5 * _kl(p, m) + 0.5 * _kl(q, m))


@torch.inference_mode()
def start_distribution(model) -> np.ndarray:
    """The model's next-token distribution after the start token alone (float64, length V)."""
    device = model.cfg.device or "cpu"
    logits = model(torch.tensor([[start_token_id(model)]], device=device))[0, -1]
    return torch.softmax(logits.double(), dim=-1).cpu().numpy()


def stats_table(stats: Sequence[DatasetStats], markdown: bool = True):
    """Several corpora side by side: a markdown table (default) or a list of row dicts.

    The ε column is the smoothing KL(model ‖ data) was computed with (it changes that number)."""
    rows = [s.row() for s in stats]
    if not markdown:
        return rows
    head = ["dataset", "tokens", "docs", "mean len", "unique tok", "all-tok cov %",
            "first-tok cov %", "KL(model‖data)", "ε", "KL(data‖model)", "JS"]
    fmt = ["{}", "{:,}", "{:,}", "{:.1f}", "{:,}", "{:.2f}", "{:.2f}", "{:.4f}", "{:g}", "{:.4f}", "{:.4f}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(v) for f, v in zip(fmt, r.values())) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
def _kl(a: np.ndarray, b: np.ndarray) -> float:
    mask = a > 0
    return float(np.sum(a[mask] * (np.log(a[mask]) - np.log(b[mask]))))


def _rank_curve(freq: np.ndarray, points: int = 200) -> list:
    f = np.sort(np.asarray(freq, dtype=np.float64))[::-1]
    f = f[f > 0]
    if not len(f):
        return []
    ranks = np.unique(np.geomspace(1, len(f), num=min(points, len(f))).round().astype(int))
    return [[int(r), float(f[r - 1])] for r in ranks]


def _documents(model, dataset, max_docs: int | None,
               max_tokens: int | None = None) -> tuple[list[np.ndarray], str]:
    """Token-id arrays of the non-empty documents (the last one cut at ``max_tokens``), and a default name."""
    name = "dataset"
    if isinstance(dataset, (str, os.PathLike)):  # whatever load_corpus takes: a name, a file, a folder

        name, path = dataset_label(dataset), Path(dataset)
        if (path / META_FILE).is_file():  # the generated token ids, not a re-tokenisation
            dataset = load_faithful_dataset(path)
        elif (path / "dataset_info.json").is_file():  # a saved Dataset: token_ids, or text
            dataset = hfds.load_from_disk(str(path))
        else:
            dataset = load_corpus(dataset, model=model)
    if max_docs is not None:  # validated by dataset_stats
        dataset = dataset.select(range(min(max_docs, len(dataset)))) if isinstance(
            dataset, hfds.Dataset) else list(dataset)[:max_docs]
    docs: list[np.ndarray] = []
    total = 0
    for seq in _sequences(model, dataset):
        if not len(seq):
            continue
        doc = np.asarray(seq, dtype=np.int64)
        if max_tokens is not None and total + len(doc) >= max_tokens:
            docs.append(doc[:max_tokens - total])  # cut: the total is exactly max_tokens
            break
        docs.append(doc)
        total += len(doc)
    V = int(model.cfg.d_vocab)
    for d in docs:
        if d.min() < 0 or d.max() >= V:
            raise ValueError(f"token id {int(d.max() if d.max() >= V else d.min())} is outside the "
                             f"model's vocabulary of {V}: was this dataset made with another model?")
    return docs, name


def _sequences(model, dataset, batch: int = 512):
    """The rows of ``dataset`` as token-id lists, in order; texts are tokenised ``batch`` at a time."""
    if isinstance(dataset, hfds.Dataset):
        if "token_ids" in dataset.column_names:
            column, tokenise = "token_ids", False
        elif "text" in dataset.column_names:
            column, tokenise = "text", True
        else:
            raise ValueError(f"dataset has neither 'token_ids' nor 'text' (columns: {dataset.column_names})")
        for i in range(0, len(dataset), batch):
            rows = dataset[i:i + batch][column]
            yield from (_tokenize(model, rows) if tokenise else rows)
    elif isinstance(dataset, Sequence) and all(isinstance(d, str) for d in dataset):
        texts = list(dataset)
        for i in range(0, len(texts), batch):
            yield from _tokenize(model, texts[i:i + batch])
    elif isinstance(dataset, Sequence):
        yield from dataset
    else:
        raise TypeError(f"cannot read a {type(dataset).__name__}: pass a Faithful dataset folder, a "
                        "datasets.Dataset with 'text' or 'token_ids', a list of str or of token-id lists")


def _tokenize(model, texts: list[str]) -> list[list[int]]:
    tok = model.tokenizer
    out: list[list[int]] = []
    for i in range(0, len(texts), 512):
        out += tok(texts[i:i + 512], add_special_tokens=False)["input_ids"]
    return out
