"""Reconstruction faithfulness (§3.3, §5.5, App. B): what splicing an SAE into the model costs.

For one SAE and one evaluation set, :func:`reconstruction_metrics` measures on the same packed
token budget (``n_tokens``, ``context_size``, ``seed``):

* ``ce_clean`` – next-token cross-entropy of the unmodified model (nats/token);
* ``ce_spliced`` – the same with the SAE's reconstruction replacing the activation at its hook;
* ``ce_diff`` – ``ce_spliced − ce_clean``;
* ``l2`` – mean over tokens of the squared error summed over ``d_in``: ``mean_t ‖x_t − x̂_t‖²``.
  This is SAELens's ``mse`` (``run_evals``) and its training MSE; ``mse_per_element`` = ``l2 / d_in``;
* ``explained_variance`` – ``1 − mean_t ‖x_t − x̂_t‖² / mean_t ‖x_t − x̄‖²`` (variance about the
  mean, summed over dimensions; SAELens's ``explained_variance``, not its ``_legacy`` one);
* ``explained_variance_without_sinks`` – the same over the content tokens that are not sinks:
  a token whose activation norm exceeds :data:`SINK_NORM_RATIO` × its batch's median norm
  (``n_sinks`` counts them). SmolLM2's first content token, when it is punctuation or a function
  word, has a norm tens of times the median; a handful of such tokens hold most of the variance
  about the mean and so decide ``explained_variance`` (notebook 06 prints both). Both are kept:
  the first is the paper's metric;
* ``l0`` – mean number of active latents per token.

Positions: the reconstruction is spliced in only at content positions
(:func:`faithful.content_mask`: not position 0, not special tokens); elsewhere the original
activation is kept. Every average runs over content positions; the CE at position ``t`` (the loss of
predicting token ``t+1``) counts when position ``t`` is a content position – SAELens's convention
with its ``exclude_special_tokens``, which also drops position 0 because it holds the start token.

Contexts are packed (:func:`eval_contexts`) from the documents held out from training
(:mod:`faithful.data.splits`): documents in a seeded order, joined by the start token, cut into rows of ``context_size − 1`` tokens, each row headed by
the start token. No padding, and the same budget for every cell.

:func:`fidelity_matrix` evaluates SAEs (rows: training dataset) × evaluation sets (columns) and
draws App. B's three annotated heatmaps. The clean pass runs once per evaluation set and batch and
is shared by every SAE; for ``resid_post``/``resid_pre`` hooks the spliced pass restarts at the
hook's layer from the cached activations instead of re-running the layers below it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import precision, storage
from ..activations import SINK_NORM_RATIO, eval_contexts, lm_precision, not_sinks, token_digest
from ..data.splits import split_rule
from ..intervals import Estimate, t_interval
from ..models import content_mask, model_name, special_token_ids
from ..sae.load import load_sae, sae_hook
from ..storage import Result

METRICS = ("explained_variance", "l2", "ce_diff")
"""The three App. B heatmaps, in drawing order."""


# ----------------------------------------------------------------------------- results
@dataclass
class FidelityResult(Result):
    """Reconstruction faithfulness of one SAE on one evaluation set."""

    ce_clean: float
    """Cross-entropy of the unmodified model (nats per predicted token)."""
    ce_spliced: float
    """Cross-entropy with the SAE's reconstruction spliced in at its hook."""
    ce_diff: float
    """``ce_spliced − ce_clean`` (higher: the SAE loses more of what the model uses)."""
    l2: float
    """Mean over tokens of ``‖x − x̂‖²`` summed over ``d_in`` (SAELens's ``mse``)."""
    mse_per_element: float
    """``l2 / d_in``: the squared error per activation element."""
    explained_variance: float
    """``1 − E‖x − x̂‖² / E‖x − E[x]‖²`` over content tokens."""
    l0: float
    """Mean number of non-zero latents per content token."""
    n_tokens: int
    """Content tokens in the activation averages (start/special tokens excluded)."""
    n_ce_tokens: int
    """Predictions in the CE averages."""
    hook: str
    """Hook the SAE reads and is spliced into."""
    context_size: int
    """Tokens per packed context (start token included)."""
    seed: int
    """Seed of the document order."""
    sae: str = ""
    """Label of the SAE (its training dataset, in a matrix)."""
    dataset: str = ""
    """Label of the evaluation set."""
    explained_variance_without_sinks: float = float("nan")
    """Explained variance over the content tokens that are not sinks (norm ≤ ``SINK_NORM_RATIO`` ×
    the batch's median); NaN in results saved before it was measured."""
    n_sinks: int = 0
    """Content tokens counted as sinks (included in every other average)."""
    precision: str = ""
    """The language model's precision, ``bf16`` (autocast) or ``fp32`` (:mod:`faithful.precision`);
    the SAE runs in fp32. Empty in results saved before it was recorded."""

    name: str = "fidelity"
    """Used for file names by :meth:`save`."""

    def figure(self):
        """The three App. B metrics of this one cell as bars."""
        fig, axes = plt.subplots(1, 3, figsize=(7, 2.6), layout="constrained")
        for ax, (label, v) in zip(axes, (("explained variance", self.explained_variance), ("L2", self.l2),
                                         ("CE difference (nats)", self.ce_diff))):
            ax.bar([0], [v])
            ax.set_xticks([])
            ax.set_title(f"{label}\n{_fmt(v)}", fontsize=9)
        fig.suptitle(f"{self.sae or 'SAE'} on {self.dataset or 'evaluation text'} ({self.n_tokens} tokens)", fontsize=10)
        return fig


@dataclass
class FidelityMatrix(Result):
    """SAEs (rows: training dataset) × evaluation sets (columns), App. B."""

    rows: list[str]
    """SAE labels, usually the training dataset's name."""
    columns: list[str]
    """Evaluation set labels."""
    cells: dict[str, dict[str, FidelityResult]]
    """``cells[row][column]``: the row's first SAE (seed 42 in the notebooks, as App. B shows)."""
    model: str = ""
    """Name of the language model."""
    settings: dict[str, Any] = field(default_factory=dict)
    """n_tokens, context_size, seed, precision – identical for every cell."""
    name: str = "fidelity_matrix"
    """Used for file names by :meth:`save`."""
    seed_cells: dict[str, dict[str, list[FidelityResult]]] = field(default_factory=dict)
    """``seed_cells[row][column]``: every SAE of the row (its seeds), the first included."""

    def values(self, metric: str):
        """``[len(rows), len(columns)]`` numpy array of one metric (the rows' first SAEs)."""
        return np.array([[getattr(self.cells[r][c], metric) for c in self.columns] for r in self.rows])

    def seed_values(self, metric: str):
        """``[len(rows), len(columns), seeds]`` numpy array of one metric, every SAE of each row."""
        seeds = self.seed_cells or {r: {c: [self.cells[r][c]] for c in self.columns} for r in self.rows}
        return np.array([[[getattr(x, metric) for x in seeds[r][c]] for c in self.columns] for r in self.rows])

    def row_estimate(self, row: str, metric: str = "ce_diff", over_columns: str = "mean") -> Estimate:
        """A row's ``mean`` (or ``std``: how uneven) of ``metric`` across the columns, per seed, with a
        t interval over the seeds."""
        if over_columns not in ("mean", "std"):
            raise ValueError(f"over_columns must be 'mean' or 'std', got {over_columns!r}")
        per_seed = getattr(self.seed_values(metric)[self.rows.index(row)], over_columns)(axis=0)
        return t_interval(per_seed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "settings": self.settings, "rows": self.rows,
                "columns": self.columns,
                "cells": {r: {c: self.cells[r][c].to_dict() for c in self.columns} for r in self.rows},
                "seed_cells": {r: {c: [x.to_dict() for x in v] for c, v in row.items()}
                               for r, row in self.seed_cells.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FidelityMatrix":
        cells = {r: {c: FidelityResult(**v) for c, v in row.items()} for r, row in d["cells"].items()}
        seeds = {r: {c: [FidelityResult(**x) for x in v] for c, v in row.items()}
                 for r, row in d.get("seed_cells", {}).items()}
        return cls(list(d["rows"]), list(d["columns"]), cells, d.get("model", ""), dict(d.get("settings", {})),
                   d.get("name", "fidelity_matrix"), seeds)

    def figure(self, metrics: Sequence[str] = METRICS):
        """Three annotated heatmaps (explained variance, L2, CE difference), as in App. B."""
        titles = {"explained_variance": "Explained variance (↑)", "l2": "L2: mean ‖x − x̂‖² (↓)",
                  "ce_diff": "CE difference, nats (↓)", "l0": "L0", "ce_spliced": "CE spliced"}
        width = 0.8 * len(self.columns) + 2.2
        fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics) + 1.5, 0.6 * len(self.rows) + 2.5),
                                 layout="constrained")
        axes = [axes] if len(metrics) == 1 else list(axes)
        for ax, metric in zip(axes, metrics):
            v = self.values(metric)
            im = ax.imshow(v, cmap="viridis" if metric == "explained_variance" else "viridis_r", aspect="auto")
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    r, g, b, _ = im.cmap(im.norm(v[i, j]))
                    ax.text(j, i, _fmt(v[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
            ax.set_xticks(range(len(self.columns)), self.columns, rotation=40, ha="right")
            ax.set_yticks(range(len(self.rows)), self.rows)
            ax.set_xlabel("evaluation dataset")
            ax.set_title(titles.get(metric, metric))
            fig.colorbar(im, ax=ax, fraction=0.046)
        axes[0].set_ylabel("SAE training dataset")
        fig.suptitle(f"Reconstruction faithfulness – {self.model} ({self.settings.get('n_tokens')} tokens per cell)")
        return fig


def _fmt(x: float) -> str:
    a = abs(x)
    if a >= 1000:
        return f"{x:.2g}"
    return f"{x:.3g}" if a >= 100 or a < 0.01 else f"{x:.3f}"


# ----------------------------------------------------------------------------- evaluation
class _Moments:
    """Float64 sums of squared error, squared activation and activation over some tokens."""

    def __init__(self, d_in: int):
        self.err2 = self.x2 = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.n = 0

    def add(self, x64: torch.Tensor, e64: torch.Tensor) -> None:
        self.err2 += e64.pow(2).sum().item()
        self.x2 += x64.pow(2).sum().item()
        self.sum_x += x64.sum(0).cpu()
        self.n += x64.shape[0]

    def mse_and_ev(self) -> tuple[float, float]:
        n = max(self.n, 1)
        mse = self.err2 / n
        var = self.x2 / n - (self.sum_x / n).pow(2).sum().item()
        return mse, (1.0 if mse < 1e-10 else 0.0) if var < 1e-10 else 1.0 - mse / var


class _Acc:
    """Running sums for one SAE on one evaluation set: every content token, and those not sinks."""

    def __init__(self, d_in: int):
        self.ce_clean = self.ce_spliced = self.l0 = 0.0
        self.all, self.typical = _Moments(d_in), _Moments(d_in)
        self.n_ce = 0

    def add_acts(self, x: torch.Tensor, x_hat: torch.Tensor, latents: torch.Tensor) -> None:
        x64, e64 = x.double(), (x - x_hat).double()
        self.all.add(x64, e64)
        typical = not_sinks(x64)
        self.typical.add(x64[typical], e64[typical])
        self.l0 += (latents != 0).sum().item()

    def result(self, d_in: int, **labels) -> FidelityResult:
        n, m = max(self.all.n, 1), max(self.n_ce, 1)
        mse, ev = self.all.mse_and_ev()
        return FidelityResult(ce_clean=self.ce_clean / m, ce_spliced=self.ce_spliced / m,
                              ce_diff=(self.ce_spliced - self.ce_clean) / m, l2=mse, mse_per_element=mse / d_in,
                              explained_variance=ev, l0=self.l0 / n, n_tokens=self.all.n, n_ce_tokens=self.n_ce,
                              explained_variance_without_sinks=self.typical.mse_and_ev()[1] if self.typical.n
                              else float("nan"),
                              n_sinks=self.all.n - self.typical.n, **labels)


def check_sae(model, sae, hook: str | None = None) -> str:
    """The SAE's hook (:func:`faithful.sae.load.sae_hook`), after checking the SAE can be used as is."""
    hook = sae_hook(model, sae, hook)
    norm = sae.cfg.normalize_activations
    if norm in ("expected_average_only_in", "covariance_whitening"):
        raise ValueError(f"the SAE expects {norm!r}-normalised inputs: fold the normalisation into its weights "
                         "first (sae.fold_activation_norm_scaling_factor(factor)), as SAELens does after training")
    return hook


def _reconstruct(sae, acts: torch.Tensor, mask: torch.Tensor, hook: str):
    """(spliced activations, x, x̂, latents): the SAE's output at content positions, the input elsewhere."""
    if acts.shape[-1] != sae.cfg.d_in or acts.dim() != 3:
        raise ValueError(f"the SAE takes d_in={sae.cfg.d_in} but {hook} gives activations of shape "
                         f"{tuple(acts.shape)}: the SAE belongs to another model or hook")
    x = acts[mask].float()
    with torch.autocast(device_type=acts.device.type, enabled=False):
        latents = sae.encode(x.to(sae.device, sae.dtype))
        x_hat = sae.decode(latents).float().to(acts.device)
    out = acts.clone()
    out[mask] = x_hat.to(acts.dtype)
    return out, x, x_hat, latents


def _resume_layer(hook: str) -> int | None:
    """Layer to restart the forward pass at with the spliced residual, or None (full pass needed)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", hook)
    if not m:
        return None
    return int(m.group(1)) + (1 if m.group(2) == "post" else 0)


@torch.no_grad()
def _evaluate(model, saes: Mapping[str, Any], tokens: torch.Tensor, hook: str, *, batch_size: int,
              prec: str, progress: bool, desc: str, fast: bool = True) -> dict[str, _Acc]:
    """Run the clean pass once per batch, then every SAE's spliced pass on it."""
    special = special_token_ids(model)
    device = model.cfg.device
    accs = {name: _Acc(sae.cfg.d_in) for name, sae in saes.items()}
    resume = _resume_layer(hook) if fast else None
    for s in tqdm(range(0, tokens.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        toks = tokens[s:s + batch_size].to(device)
        mask = content_mask(toks, special)
        ce_mask = mask[:, :-1]
        with precision.autocast(device, prec):
            ce_clean, cache = model.run_with_cache(toks, names_filter=hook, return_type="loss", loss_per_token=True)
        acts = cache[hook]
        clean_sum = ce_clean.float()[ce_mask].double().sum().item()
        for name, sae in saes.items():
            acc = accs[name]
            if resume is not None:
                spliced, x, x_hat, latents = _reconstruct(sae, acts, mask, hook)
                with precision.autocast(device, prec):
                    ce = model(spliced, start_at_layer=resume, tokens=toks, return_type="loss", loss_per_token=True)
            else:
                got = {}

                def splice(a, hook=None, sae=sae):  # noqa: ARG001
                    got["r"] = _reconstruct(sae, a, mask, hook.name)
                    return got["r"][0]

                with precision.autocast(device, prec):
                    ce = model.run_with_hooks(toks, fwd_hooks=[(hook, splice)], return_type="loss",
                                              loss_per_token=True)
                _, x, x_hat, latents = got["r"]
            acc.add_acts(x, x_hat, latents)
            acc.ce_clean += clean_sum
            acc.ce_spliced += ce.float()[ce_mask].double().sum().item()
            acc.n_ce += int(ce_mask.sum())
    return accs


def reconstruction_metrics(model, sae, dataset, *, n_tokens: int = 8_192, context_size: int = 128,
                           batch_size: int = 8,
                           seed: int = 0, split: str | None = "eval", autocast: bool | None = None,
                           progress: bool = True, sae_label: str = "", dataset_label: str = "") -> FidelityResult:
    """Clean CE, spliced CE, their difference, L2, explained variance and L0 (module docstring).

    ``sae``: a SAELens SAE or a checkpoint folder. ``dataset`` and ``split``: see :func:`eval_contexts`
    (by default the documents held out from training). ``autocast``: None for the precision policy's choice (:mod:`faithful.precision`), True/False
    for bf16 autocast/fp32 in the language model; the SAE runs in fp32.
    """
    sae = load_sae(sae)
    hook = check_sae(model, sae)
    tokens = eval_contexts(model, dataset, n_tokens=n_tokens, context_size=context_size, seed=seed, split=split)
    prec = lm_precision(model, autocast)
    accs = _evaluate(model, {"sae": sae}, tokens, hook, batch_size=batch_size, prec=prec,
                     progress=progress, desc="fidelity")
    return accs["sae"].result(sae.cfg.d_in, hook=hook, context_size=context_size, seed=seed, precision=prec,
                              sae=sae_label, dataset=dataset_label if dataset_label or not isinstance(dataset, str)
                              else dataset)


def fidelity_matrix(model, saes: Mapping[str, Any], eval_sets: Mapping[str, Any], *, n_tokens: int = 8_192,
                    context_size: int = 128, batch_size: int = 8, seed: int = 0, split: str | None = "eval",
                    autocast: bool | None = None, progress: bool = True,
                    out_dir: str | Path | None = None) -> FidelityMatrix:
    """Every SAE (rows) on every evaluation set (columns), same budget and seed in every cell.

    ``saes``: label → an SAE or checkpoint folder, or a list of them (the seeds of one training
    dataset: each is measured, ``cells`` holds the first, ``seed_cells`` all); all at one hook.
    ``eval_sets``: label → anything :func:`eval_contexts` takes, read at ``split`` (default: the
    held-out documents). With ``out_dir`` each finished column is written to
    ``out_dir/columns/<label>.json`` and reused when asked again with the same settings, SAEs and
    evaluation tokens (a digest of them: the label alone may name other data next time);
    the matrix itself is saved there (JSON + PNG).
    """
    if not saes or not eval_sets:
        raise ValueError("fidelity_matrix needs at least one SAE and one evaluation set")
    groups = {name: list(s) if isinstance(s, (list, tuple)) else [s] for name, s in saes.items()}
    if any(not g for g in groups.values()):
        raise ValueError(f"every row needs at least one SAE: {[n for n, g in groups.items() if not g]} hold none")
    flat = {f"{name}#{i}": load_sae(s) for name, g in groups.items() for i, s in enumerate(g)}
    hooks = {key: check_sae(model, s) for key, s in flat.items()}
    if len(set(hooks.values())) > 1:
        raise ValueError(f"all SAEs of a matrix must read the same hook, got {hooks}")
    hook = next(iter(hooks.values()))
    prec = lm_precision(model, autocast)
    settings = {"n_tokens": n_tokens, "context_size": context_size, "seed": seed, "precision": prec,
                "split": split_rule(split),
                "sink_norm_ratio": SINK_NORM_RATIO, "batch_size": batch_size, "hook": hook,
                "model": model_name(model), "saes": {k: _fingerprint(s) for k, s in flat.items()}}
    seed_cells: dict[str, dict[str, list[FidelityResult]]] = {name: {} for name in groups}
    for col, ds in tqdm(eval_sets.items(), desc="evaluation sets", disable=not progress):
        tokens = eval_contexts(model, ds, n_tokens=n_tokens, context_size=context_size, seed=seed, split=split)
        # A column is reused only for the same tokens: a label may name other data next time.
        col_settings = {**settings, "tokens": token_digest(tokens)}
        cached = _load_column(out_dir, col, col_settings, list(flat))
        if cached is None:
            accs = _evaluate(model, flat, tokens, hook, batch_size=batch_size, prec=prec,
                             progress=progress, desc=col)
            cached = {k: accs[k].result(flat[k].cfg.d_in, hook=hook, context_size=context_size, seed=seed,
                                        precision=prec, sae=k.rsplit("#", 1)[0], dataset=col) for k in flat}
            if out_dir is not None:
                storage.write_json(Path(out_dir) / "columns" / f"{_safe(col)}.json",
                                   {"settings": col_settings, "cells": {k: v.to_dict() for k, v in cached.items()}})
        for name, g in groups.items():
            seed_cells[name][col] = [cached[f"{name}#{i}"] for i in range(len(g))]
    cells = {name: {col: v[0] for col, v in row.items()} for name, row in seed_cells.items()}
    matrix = FidelityMatrix(list(groups), list(eval_sets), cells, model_name(model), settings,
                            seed_cells=seed_cells if any(len(g) > 1 for g in groups.values()) else {})
    if out_dir is not None:
        matrix.save(out_dir)
    return matrix


def _load_column(out_dir, col: str, settings: dict, rows: list[str]) -> dict[str, FidelityResult] | None:
    if out_dir is None:
        return None
    path = Path(out_dir) / "columns" / f"{_safe(col)}.json"
    if not path.is_file():
        return None
    d = storage.read_json(path)
    if d.get("settings") != settings or sorted(d.get("cells", {})) != sorted(rows):
        return None
    return {r: FidelityResult(**v) for r, v in d["cells"].items()}


def _fingerprint(sae) -> str:
    """A short digest of an SAE's weights: a cached column is reused only for the same SAEs."""
    h = hashlib.sha256()
    for t in (sae.W_enc, sae.W_dec, sae.b_dec):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
