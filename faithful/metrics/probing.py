"""SAE probing (§3.6, §4.4, App. C.1): logistic-regression probes on mean-pooled representations.

For a classification task, three inputs are compared, each mean-pooled over a text's content
tokens (no start token, no special tokens, no padding – :func:`faithful.content_mask`):

* ``baseline`` – the model's activations at the SAE's hook;
* ``sae`` – the SAE's latents (encoded token by token, *then* pooled: the mean of the latents,
  not the SAE of the mean);
* ``reconstruction`` – the SAE's reconstruction, token by token, then pooled.

Each probe is scikit-learn's ``LogisticRegression`` (fixed ``max_iter``, ``C``) after a
``StandardScaler``, trained on the task's own training split and scored on its test split:
accuracy and F1 (binary F1 of label 1 for two classes, macro F1 otherwise).

Tasks (:data:`TASKS`): ``sst2`` (train / validation), ``cola`` (train / validation), ``ag_news``
(train / test) and ``yelp_polarity`` (train / test). They are read from the shared data folder
when it holds them, else from the Hugging Face hub. Here Yelp Polarity is represented by the
1,000 ``yelp_labelled_sentences`` (Kotzias et al.), split deterministically 80/20 (a fixed
permutation, seed 0): a stand-in, not the paper's Yelp Polarity.

Activations are computed once per (model, hook, task, sizes, seed, context) and cached in
memory and on disk (``results/probe_activations/…safetensors``, per-token, float16): the three
inputs and every SAE share them.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from .. import storage
from ..activations import iter_activations, lm_precision, tokenize_texts
from ..data.tasks import TASKS, load_task
from ..intervals import LEVEL, Estimate, bootstrap_interval
from ..models import model_name
from ..sae.load import load_sae
from ..storage import Result
from .fidelity import check_sae

INPUTS = ("baseline", "sae", "reconstruction")
"""The three representations a probe is trained on."""


_MEMORY: dict[str, dict[str, torch.Tensor]] = {}
"""Activations already read in this process, by cache file."""


# ----------------------------------------------------------------------------- results
@dataclass
class ProbeResult(Result):
    """Probe accuracy and F1 of the three inputs on one task, for one SAE."""

    task: str
    """Task name."""
    accuracy: dict[str, float]
    """Test accuracy per input (``baseline``, ``sae``, ``reconstruction``)."""
    f1: dict[str, float]
    """Test F1 per input."""
    f1_average: str
    """``binary`` (F1 of label 1) for two classes, ``macro`` otherwise."""
    n_train: int
    """Training texts the probes saw."""
    n_test: int
    """Test texts."""
    hook: str
    """Hook the activations were read at."""
    seed: int
    """Seed of the train/test subsampling."""
    context_size: int
    """Tokens per text (start token included; longer texts are truncated)."""
    source: str
    """Where the data came from (shared file, hub, stand-in)."""
    sae: str = ""
    """Label of the SAE (its training dataset, in a table)."""
    sae_run: str = ""
    """Which SAE of that label (checkpoint folder or index)."""
    precision: str = ""
    """The language model's precision, ``bf16`` (autocast) or ``fp32`` (:mod:`faithful.precision`)."""
    correct: dict[str, list[int]] = field(default_factory=dict)
    """Per input, 1 for each test text (in order) its probe labelled right: what intervals resample."""

    name: str = ""
    """Used for file names by :meth:`save` (default ``probe_<task>``)."""

    def __post_init__(self):
        self.name = self.name or f"probe_{self.task}"

    def figure(self):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        x = range(len(INPUTS))
        ax.bar([i - 0.2 for i in x], [self.accuracy[k] for k in INPUTS], 0.4, label="accuracy")
        ax.bar([i + 0.2 for i in x], [self.f1[k] for k in INPUTS], 0.4, label=f"F1 ({self.f1_average})")
        ax.set_xticks(list(x), INPUTS)
        ax.set_ylim(0, 1)
        ax.set_title(f"{self.task} probe – {self.sae or 'SAE'} at {self.hook}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        return fig


@dataclass
class ProbeTable(Result):
    """Table C.1: task × SAE training dataset, seeds averaged."""

    results: list[ProbeResult]
    """One result per (task, SAE)."""
    name: str = "probing"
    """Used for file names by :meth:`save`."""

    def table(self, input: str = "reconstruction", metric: str = "accuracy") -> dict[str, dict[str, float]]:
        """``{task: {training dataset: mean over seeds}}``; ``input="baseline"`` gives the model's own."""
        if input not in INPUTS or metric not in ("accuracy", "f1"):
            raise ValueError(f"input must be one of {INPUTS} and metric 'accuracy' or 'f1'")
        out: dict[str, dict[str, list[float]]] = {}
        for r in self.results:
            out.setdefault(r.task, {}).setdefault(r.sae, []).append(getattr(r, metric)[input])
        return {t: {s: sum(v) / len(v) for s, v in row.items()} for t, row in out.items()}

    def text_scores(self, task: str, sae: str, input: str = "reconstruction") -> np.ndarray:
        """``[n_test]``: for each test text, the share of ``sae``'s seeds whose probe labelled it right."""
        runs = [r.correct[input] for r in self.results if r.task == task and r.sae == sae and input in r.correct]
        if not runs:
            raise ValueError(f"no per-text results for task {task!r}, SAE {sae!r}, input {input!r} "
                             "(results saved before they were recorded: run probe_table again)")
        return np.mean(np.asarray(runs, dtype=float), axis=0)

    def interval(self, task: str, sae: str, input: str = "reconstruction") -> Estimate:
        """Accuracy (mean over seeds) with a bootstrap interval over the test texts."""
        return bootstrap_interval(self.text_scores(task, sae, input), "test texts")

    def difference(self, task: str, a: str, b: str, input: str = "reconstruction") -> Estimate:
        """Accuracy of ``a`` minus ``b``, paired on the same test texts (bootstrap over the texts)."""
        return bootstrap_interval(self.text_scores(task, a, input) - self.text_scores(task, b, input),
                                  "test texts, paired")

    def to_markdown(self, input: str = "reconstruction", metric: str = "accuracy") -> str:
        tab = self.table(input, metric)
        base = self.table("baseline", metric)
        cols = list(dict.fromkeys(s for row in tab.values() for s in row))
        lines = ["| task | baseline | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]

        def cell(task, col, value):
            if metric != "accuracy" or not any(r.correct for r in self.results):
                return f"{value:.4f}"
            ci = self.interval(task, col, input)
            return f"{value:.4f} [{ci.low:.3f}, {ci.high:.3f}]"
        for task, row in tab.items():
            b = sum(base[task].values()) / len(base[task])
            lines.append(f"| {task} | {b:.4f} | " + " | ".join(cell(task, c, row[c]) if c in row else "nan"
                                                            for c in cols) + " |")
        if metric == "accuracy" and any(r.correct for r in self.results):
            lines.append(f"\n[{LEVEL:.0%} bootstrap interval over the test texts, seeds averaged per text]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results],
                "table": {i: self.table(i) for i in INPUTS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProbeTable":
        return cls([ProbeResult(**r) for r in d["results"]])

    def figure(self, metric: str = "accuracy"):
        """Grouped bars per task: baseline, then each training dataset's SAE latents and reconstruction."""
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        base = self.table("baseline", metric)
        for ax, inp in zip(axes, ("sae", "reconstruction")):
            tab = self.table(inp, metric)
            tasks = list(tab)
            cols = list(dict.fromkeys(s for row in tab.values() for s in row))
            w = 0.8 / (len(cols) + 1)
            for j, col in enumerate(["baseline"] + cols):
                vals = [sum(base[t].values()) / len(base[t]) if col == "baseline" else tab[t].get(col, 0.0)
                        for t in tasks]
                err = None
                if col != "baseline" and metric == "accuracy" and any(r.correct for r in self.results):
                    cis = [self.interval(t, col, inp) for t in tasks]
                    err = [[v - c.low for v, c in zip(vals, cis)], [c.high - v for v, c in zip(vals, cis)]]
                ax.bar([i + (j - len(cols) / 2) * w for i in range(len(tasks))], vals, w, label=col,
                       color="0.3" if col == "baseline" else None, yerr=err, capsize=2)
            ax.set_xticks(range(len(tasks)), tasks)
            ax.set_title(f"probe on {'SAE latents' if inp == 'sae' else 'reconstruction'}")
            ax.set_ylim(0, 1)
        axes[0].set_ylabel(f"test {metric} (mean over seeds)")
        axes[1].legend(title="SAE trained on", fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig


def task_activations(model, hook: str, task: str, *, n_train: int, n_test: int, seed: int = 0,
                     context_size: int = 128, batch_size: int = 32, autocast: bool | None = None,
                     progress: bool = True, cache: bool = True) -> dict[str, Any]:
    """Per-token content activations of a task's train and test texts, computed once and cached.

    Returns ``{"train": {"acts", "offsets", "labels"}, "test": {…}, "source": str, "precision": str}``: ``acts``
    ``[n_tokens, d_in]`` (text ``i`` owns rows ``offsets[i]:offsets[i+1]``). Texts without a
    content token are dropped.
    """
    if hook not in model.hook_dict:
        raise ValueError(f"{hook!r} is not a hook of {model_name(model)}")
    prec = lm_precision(model, autocast)  # the cache's name records the precision actually used
    path = (storage.results_dir() / "probe_activations" / model_name(model) /
            f"{task}_{hook}_n{n_train}-{n_test}_s{seed}_c{context_size}_{prec}.safetensors")
    key = str(path)
    if cache and key not in _MEMORY and path.is_file():
        _MEMORY[key] = load_file(path)
    if not cache or key not in _MEMORY:
        tr_x, tr_y, te_x, te_y, source = load_task(task, n_train=n_train, n_test=n_test, seed=seed)
        tensors = {}
        for split, texts, labels in (("train", tr_x, tr_y), ("test", te_x, te_y)):
            acts, offsets, keep = _token_activations(model, hook, texts, context_size, batch_size, prec == "bf16",
                                                     progress, f"{task} {split}")
            tensors[f"{split}_acts"] = acts
            tensors[f"{split}_offsets"] = offsets
            tensors[f"{split}_labels"] = torch.tensor(labels, dtype=torch.long)[keep]
        tensors["source"] = torch.tensor(list(source.encode()), dtype=torch.uint8)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(tensors, str(tmp), metadata={"model": model_name(model), "hook": hook, "task": task})
            os.replace(tmp, path)
            _MEMORY[key] = tensors
    t = _MEMORY[key] if cache else tensors
    return {s: {"acts": t[f"{s}_acts"], "offsets": t[f"{s}_offsets"], "labels": t[f"{s}_labels"]}
            for s in ("train", "test")} | {"source": bytes(t["source"].tolist()).decode(), "precision": prec}


def _token_activations(model, hook, texts, context_size, batch_size, autocast, progress, desc):
    """Content-token activations of each text (float16), their offsets, and the kept text indices."""
    tokens, attn = tokenize_texts(model, texts, context_size)
    lengths = attn.sum(1)
    order = torch.argsort(lengths, stable=True)  # similar lengths together: little padding
    per_text: list[torch.Tensor | None] = [None] * len(texts)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        rows = order[s:s + batch_size]
        width = int(lengths[rows].max())
        for acts, mask, _ in iter_activations(model, tokens[rows, :width], hook, attention_mask=attn[rows, :width],
                                              batch_size=len(rows), autocast=autocast):
            for i, r in enumerate(rows.tolist()):
                per_text[r] = acts[i][mask[i]].cpu()
    keep = [i for i, a in enumerate(per_text) if a is not None and len(a)]
    if not keep:
        raise ValueError(f"{desc}: no text has a content token")
    acts = torch.cat([per_text[i] for i in keep])
    if acts.abs().max() >= 6e4:
        raise ValueError(f"activations at {hook} exceed float16's range; they cannot be cached as float16")
    offsets = torch.tensor([0] + [len(per_text[i]) for i in keep]).cumsum(0)
    return acts.half(), offsets, torch.tensor(keep, dtype=torch.long)


def mean_pool(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``[n_texts, d]`` means of ``values`` rows ``offsets[i]:offsets[i+1]``."""
    counts = offsets[1:] - offsets[:-1]
    if (counts <= 0).any():
        raise ValueError("every text needs at least one token to pool")
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    out = torch.zeros(len(counts), values.shape[1], dtype=torch.float64)
    out.index_add_(0, owner, values.double())
    return (out / counts[:, None]).float()


@torch.no_grad()
def sae_features(sae, acts: torch.Tensor, offsets: torch.Tensor, chunk: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled SAE latents and reconstructions: encode each token, then pool per text."""
    counts = offsets[1:] - offsets[:-1]
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    lat = torch.zeros(len(counts), sae.cfg.d_sae, dtype=torch.float64)
    rec = torch.zeros(len(counts), sae.cfg.d_in, dtype=torch.float64)
    for s in range(0, len(acts), chunk):
        x = acts[s:s + chunk].to(sae.device, sae.dtype)
        z = sae.encode(x)
        if z.is_sparse:
            z = z.to_dense()
        lat.index_add_(0, owner[s:s + chunk], z.double().cpu())
        rec.index_add_(0, owner[s:s + chunk], sae.decode(z).double().cpu())
    return (lat / counts[:, None]).float(), (rec / counts[:, None]).float()


def fit_probe(x_train, y_train, x_test, y_test, *, C: float = 1.0, max_iter: int = 1000
              ) -> tuple[float, float, str, list[int]]:
    """StandardScaler + LogisticRegression; ``(accuracy, f1, f1_average, correct)`` on the test set,
    ``correct`` holding 1 for each test text the probe labels right (for bootstrap intervals)."""
    y_train, y_test = _np(y_train), _np(y_test)
    if len(set(y_train.tolist())) < 2:
        raise ValueError("the training labels hold a single class: a probe needs at least two")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        clf.fit(_np(x_train), y_train)
    pred = clf.predict(_np(x_test))
    average = "binary" if len(set(y_train.tolist()) | set(y_test.tolist())) <= 2 else "macro"
    return (float(accuracy_score(y_test, pred)), float(f1_score(y_test, pred, average=average, zero_division=0)),
            average, (pred == y_test).astype(int).tolist())


def _np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


# ----------------------------------------------------------------------------- probes
def probe(model, sae, task: str, *, n_train: int = 800, n_test: int = 400, seed: int = 0,
          context_size: int = 128, C: float = 1.0, max_iter: int = 1000, batch_size: int = 32,
          autocast: bool | None = None, progress: bool = True, sae_label: str = "") -> ProbeResult:
    """Accuracy and F1 of probes on baseline activations, SAE latents and reconstruction.

    ``sae``: a SAELens SAE or checkpoint folder; its hook (``cfg.metadata.hook_name``) is where the
    activations are read.
    """
    if task not in TASKS:
        raise ValueError(f"unknown probing task {task!r}; choose one of {sorted(TASKS)}")
    run = str(sae) if isinstance(sae, (str, Path)) else ""
    sae = load_sae(sae)
    hook = check_sae(model, sae)
    data = task_activations(model, hook, task, n_train=n_train, n_test=n_test, seed=seed,
                            context_size=context_size, batch_size=batch_size, autocast=autocast, progress=progress)
    return _probe_on(data, sae, task=task, hook=hook, seed=seed, context_size=context_size, C=C,
                     max_iter=max_iter, sae_label=sae_label, sae_run=run)


def _probe_on(data, sae, *, task, hook, seed, context_size, C, max_iter, sae_label="", sae_run="",
              baseline: tuple[float, float, str] | None = None) -> ProbeResult:
    tr, te = data["train"], data["test"]
    d_act = tr["acts"].shape[1]
    if sae.cfg.d_in != d_act:
        raise ValueError(f"the SAE takes d_in={sae.cfg.d_in} but the activations at {hook} have width {d_act}: "
                         "the SAE belongs to another model or hook")
    acc, f1, correct = {}, {}, {}
    if baseline is None:
        baseline = fit_probe(mean_pool(tr["acts"], tr["offsets"]), tr["labels"],
                             mean_pool(te["acts"], te["offsets"]), te["labels"], C=C, max_iter=max_iter)
    acc["baseline"], f1["baseline"], average, correct["baseline"] = baseline
    (lat_tr, rec_tr), (lat_te, rec_te) = (sae_features(sae, d["acts"].float(), d["offsets"]) for d in (tr, te))
    acc["sae"], f1["sae"], _, correct["sae"] = fit_probe(lat_tr, tr["labels"], lat_te, te["labels"],
                                                         C=C, max_iter=max_iter)
    acc["reconstruction"], f1["reconstruction"], _, correct["reconstruction"] = fit_probe(
        rec_tr, tr["labels"], rec_te, te["labels"], C=C, max_iter=max_iter)
    return ProbeResult(task=task, accuracy=acc, f1=f1, f1_average=average, correct=correct, n_train=len(tr["labels"]),
                       n_test=len(te["labels"]), hook=hook, seed=seed, context_size=context_size,
                       source=data["source"], sae=sae_label, sae_run=sae_run, precision=data.get("precision", ""))


def probe_table(model, saes: Mapping[str, Sequence[Any]], tasks: Sequence[str] = tuple(TASKS), *,
                n_train: int = 800, n_test: int = 400, seed: int = 0, context_size: int = 128,
                C: float = 1.0, max_iter: int = 1000, batch_size: int = 32, autocast: bool | None = None,
                progress: bool = True, out_dir: str | Path | None = None) -> ProbeTable:
    """Table C.1: every task × every SAE (``{training dataset: [SAE or folder per seed]}``).

    Activations are read once per task and the baseline probe fitted once per task; with
    ``out_dir`` the table is saved there (``probing.json`` + ``probing.png``).
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown probing task(s) {bad}; choose from {sorted(TASKS)}")
    loaded = {name: [(str(s) if isinstance(s, (str, Path)) else f"#{i}", load_sae(s)) for i, s in enumerate(runs)]
              for name, runs in saes.items()}
    hooks = {check_sae(model, s) for runs in loaded.values() for _, s in runs}
    if len(hooks) != 1:
        raise ValueError(f"all SAEs of a probing table must read one hook, got {sorted(hooks)}")
    hook = hooks.pop()
    results = []
    for task in tqdm(tasks, desc="probing tasks", disable=not progress):
        data = task_activations(model, hook, task, n_train=n_train, n_test=n_test, seed=seed,
                                context_size=context_size, batch_size=batch_size, autocast=autocast, progress=progress)
        baseline = None
        for name, runs in loaded.items():
            for run, sae in runs:
                r = _probe_on(data, sae, task=task, hook=hook, seed=seed, context_size=context_size, C=C,
                              max_iter=max_iter, sae_label=name, sae_run=run, baseline=baseline)
                baseline = (r.accuracy["baseline"], r.f1["baseline"], r.f1_average, r.correct["baseline"])
                results.append(r)
    table = ProbeTable(results)
    if out_dir is not None:
        table.save(out_dir)
    return table
