"""Fake Feature Ratio (paper §3.5, §5.7, App. C.2): latents that fire on random-token input.

Random sequences — the start token, then tokens drawn uniformly (seeded) from the
non-special vocabulary — go through the model to the SAE's hook; a latent *fires* at a
position when its SAE activation is > 0. Its firing frequency is counted in one of two units:

* ``"sequence"`` (default): the share of random sequences on which it fires at least once;
* ``"token"``: the share of random content positions on which it fires.

A latent is *fake* when its frequency is strictly above the threshold τ, and
``FFR = |fake| / d_sae``.

Why ``unit="sequence"``, ``τ = 0.1``, ``seq_len = 32`` by default: the paper's text lost the
value of τ ("we followed Smith et al. (2025) and set …"); Smith et al. call a latent high-frequency
when it fires on more than 10 % of inputs, hence τ = 0.1. The unit must be the sequence: per
token, a TopK SAE's frequencies sum to its L0 (≈ k), so at most k/τ latents can exceed τ —
for Gemma-2-2B's SAE (k 64, 18,432 latents) that caps FFR at 3.5 %, yet App. C.2 reports
0.54. Counting a latent once per sequence, as the paper's released code does (random strings
of 16 vocabulary entries, a latent counted when it fires anywhere in the sequence), makes such
values reachable. A sequence-unit frequency grows with the sequence length, so ``seq_len`` is
part of the metric: 32 tokens (31 random after the start token) is close to those 16-entry
strings. The released code hard-codes τ = 0.05; :meth:`FFRResult.ffr_curve` shows every τ.

Position 0 (the attention sink) and special tokens are left out through
``faithful.content_mask``, as everywhere else.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..activations import iter_activations, lm_precision, random_token_contexts
from ..intervals import LEVEL, t_interval
from ..models import model_name
from ..sae.load import load_sae, sae_hook
from ..storage import Result

UNITS = ("sequence", "token")
DEFAULT_THRESHOLD = 0.1
DEFAULT_SEQ_LEN = 32


@dataclass
class FFRResult(Result):
    """Firing frequencies of an SAE's latents on random-token input, and the fake share."""

    ratio: float
    """FFR: share of latents whose frequency (in ``unit``) is strictly above ``threshold``."""
    threshold: float
    """τ: the frequency above which a latent is fake."""
    unit: str
    """"sequence" or "token": what a frequency counts."""
    sequence_frequencies: np.ndarray = field(repr=False)
    """Per latent: share of random sequences on which it fires at least once."""
    token_frequencies: np.ndarray = field(repr=False)
    """Per latent: share of random content positions on which it fires."""
    n_sequences: int = 0
    """Random sequences fed to the model."""
    n_tokens: int = 0
    """Random content tokens (start token excluded)."""
    seq_len: int = 0
    """Tokens per sequence, start token included."""
    seed: int = 0
    """Seed of the random tokens."""
    name: str = "ffr"
    """Used for file names by :meth:`save`."""
    precision: str = ""
    """The language model's precision, ``bf16`` (autocast) or ``fp32`` (:mod:`faithful.precision`)."""

    @property
    def frequencies(self) -> np.ndarray:
        """Frequencies in this result's unit."""
        return self.sequence_frequencies if self.unit == "sequence" else self.token_frequencies

    @property
    def d_sae(self) -> int:
        return int(len(self.sequence_frequencies))

    @property
    def fake_indices(self) -> np.ndarray:
        return np.flatnonzero(self.frequencies > self.threshold)

    def ffr_at(self, threshold: float, unit: str | None = None) -> float:
        """FFR for another τ (and unit) from the same counts."""
        freq = self._freq(unit)
        return float((freq > threshold).mean())

    def ffr_curve(self, thresholds: Sequence[float] | np.ndarray | None = None, unit: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(thresholds, FFR at each)``; default thresholds 0 … 1 in 101 steps."""
        thr = np.linspace(0, 1, 101) if thresholds is None else np.asarray(thresholds, dtype=float)
        freq = np.sort(self._freq(unit))
        # share of latents strictly above each τ, by binary search in the sorted frequencies
        above = len(freq) - np.searchsorted(freq, thr, side="right")
        return thr, above / len(freq)

    def figure(self, units: Sequence[str] = UNITS, ax=None):
        """FFR as a function of τ for each unit, with this result's τ marked."""
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        for u in units:
            thr, ffr = self.ffr_curve(np.logspace(-4, 0, 200), unit=u)
            ax.plot(thr, ffr, label=f"per {u}" + (" (default)" if u == self.unit else ""))
        ax.axvline(self.threshold, color="red", ls="--", label=f"τ = {self.threshold}: FFR {self.ratio:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel("τ (firing frequency on random tokens)")
        ax.set_ylabel("fake feature ratio")
        ax.set_title(self.name)
        ax.legend(fontsize=8)
        return ax.figure

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        d = {"name": self.name, "ratio": self.ratio, "threshold": self.threshold, "unit": self.unit,
             "n_fake": int(len(self.fake_indices)), "d_sae": self.d_sae, "n_sequences": self.n_sequences,
             "n_tokens": self.n_tokens, "seq_len": self.seq_len, "seed": self.seed, "precision": self.precision,
             "ratio_other_unit": self.ffr_at(self.threshold, "token" if self.unit == "sequence" else "sequence")}
        if arrays:
            d["sequence_frequencies"] = [round(float(x), 6) for x in self.sequence_frequencies]
            d["token_frequencies"] = [round(float(x), 6) for x in self.token_frequencies]
        return d

    def _freq(self, unit: str | None) -> np.ndarray:
        unit = self.unit if unit is None else _check_unit(unit)
        return self.sequence_frequencies if unit == "sequence" else self.token_frequencies


# ----------------------------------------------------------------------------- counting
def _check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    return unit


@torch.no_grad()
def firing_counts(model, saes: Sequence, tokens: torch.Tensor, *, attention_mask=None, hook: str | None = None,
                  batch_size: int = 16, autocast: bool | None = None, progress: bool = False):
    """Count where each SAE's latents fire, for several SAEs at one hook in a single model pass.

    Returns ``(sequence_counts [n_saes, d_sae], token_counts [n_saes, d_sae], n_sequences,
    n_tokens)``: sequences with at least one content position count once.
    """
    saes = [load_sae(s) for s in saes]
    if not saes:
        raise ValueError("no SAE given")
    hooks = {sae_hook(model, s, hook) for s in saes}
    if len(hooks) != 1:
        raise ValueError(f"the SAEs read different hooks {sorted(hooks)}; count each hook separately")
    (hook,) = hooks
    d_model = model.cfg.d_model
    seq_counts = [torch.zeros(s.cfg.d_sae, dtype=torch.float64) for s in saes]
    tok_counts = [torch.zeros(s.cfg.d_sae, dtype=torch.float64) for s in saes]
    n_seq = n_tok = 0
    for acts, mask, _ in iter_activations(model, tokens, hook, attention_mask=attention_mask,
                                          batch_size=batch_size, autocast=autocast, progress=progress):
        for s in saes:
            if s.cfg.d_in != acts.shape[-1]:
                raise ValueError(f"SAE d_in {s.cfg.d_in} does not match the width {acts.shape[-1]} of "
                                 f"{hook} in {model_name(model)} (d_model {d_model}): wrong model or hook")
        has = mask.any(dim=1)
        n_seq += int(has.sum())
        n_tok += int(mask.sum())
        for i, s in enumerate(saes):
            dev = s.W_dec.device  # the SAE may sit on another device than the model
            fired = (s.encode(acts.to(dev, s.dtype)) > 0) & mask.to(dev).unsqueeze(-1)
            tok_counts[i] += fired.sum(dim=(0, 1), dtype=torch.float64).cpu()
            seq_counts[i] += fired.any(dim=1).sum(dim=0, dtype=torch.float64).cpu()
    return torch.stack(seq_counts).numpy(), torch.stack(tok_counts).numpy(), n_seq, n_tok


def firing_frequencies(model, sae, tokens: torch.Tensor, *, unit: str = "sequence", attention_mask=None,
                       hook: str | None = None, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Per-latent firing frequency of ``sae`` on any token contexts (e.g. the model's own text).

    ``tokens`` ``[n, pos]`` start with the start token (``faithful.activations.eval_contexts`` or
    ``faithful.activations.tokenize_texts`` build them). For a fair comparison with
    :func:`fake_feature_ratio` in the sequence unit use the same context length.
    """
    _check_unit(unit)
    seq, tok, n_seq, n_tok = firing_counts(model, [sae], tokens, attention_mask=attention_mask, hook=hook,
                                           batch_size=batch_size, progress=progress)
    if (n_seq if unit == "sequence" else n_tok) == 0:
        raise ValueError("the contexts hold no content token (only start/special tokens or padding)")
    return seq[0] / n_seq if unit == "sequence" else tok[0] / n_tok


def plot_firing_scatter(random_freq, own_freq, *, threshold: float | None = DEFAULT_THRESHOLD,
                        labels: tuple[str, str] = ("random tokens", "the model's own text"), ax=None,
                        floor: float = 1e-4):
    """One dot per latent: firing frequency on random tokens (x) vs on the model's own text (y).

    Log axes; frequencies below ``floor`` (never fired) are drawn at the floor. Dots right of
    τ are fake; those also low on the own text fire on noise more than on the model's text.
    """
    x, y = np.asarray(random_freq, dtype=float), np.asarray(own_freq, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"the frequency arrays differ in length ({x.shape} vs {y.shape}): same SAE on both inputs?")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(np.maximum(x, floor), np.maximum(y, floor), s=4, alpha=0.4)
    ax.plot([floor, 1], [floor, 1], color="grey", lw=0.8, ls=":", label="equal")
    if threshold is not None:
        ax.axvline(threshold, color="red", ls="--", label=f"τ = {threshold}: {int((x > threshold).sum())} fake")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"fires on {labels[0]}")
    ax.set_ylabel(f"fires on {labels[1]}")
    ax.legend(fontsize=8)
    return ax


def _random_inputs(model, n_tokens: int, seq_len: int, seed: int) -> tuple[torch.Tensor, int]:
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if not 2 <= seq_len <= model.cfg.n_ctx:
        raise ValueError(f"seq_len must be in 2..{model.cfg.n_ctx} (start token + random tokens), got {seq_len}")
    n_contexts = math.ceil(n_tokens / (seq_len - 1))
    return random_token_contexts(model, n_contexts, seq_len, seed), n_tokens


def _results(seq, tok, n_seq, n_tok, names, threshold, unit, seq_len, seed, prec) -> list[FFRResult]:
    out = []
    for i, name in enumerate(names):
        sf, tf = seq[i] / n_seq, tok[i] / n_tok
        freq = sf if unit == "sequence" else tf
        out.append(FFRResult(ratio=float((freq > threshold).mean()), threshold=float(threshold), unit=unit,
                             sequence_frequencies=sf, token_frequencies=tf, n_sequences=n_seq,
                             n_tokens=n_tok, seq_len=seq_len, seed=seed, name=name, precision=prec))
    return out


def fake_feature_ratio(model, sae, *, n_tokens: int = 8_192, seq_len: int = DEFAULT_SEQ_LEN,
                       threshold: float = DEFAULT_THRESHOLD, unit: str = "sequence", seed: int = 0,
                       batch_size: int = 16, progress: bool = False, hook: str | None = None,
                       name: str = "ffr", autocast: bool | None = None) -> FFRResult:
    """Fake Feature Ratio of ``sae`` (an SAE or checkpoint folder) on ``model`` (module docstring).

    ``n_tokens`` random tokens in sequences of ``seq_len`` tokens (start token included), drawn
    with ``seed``. The result holds both
    units' frequencies, so ``ffr_at``/``ffr_curve`` can re-read them at any τ. ``autocast``: None for
    the precision policy's choice (:mod:`faithful.precision`), True/False for bf16/fp32.
    """
    _check_unit(unit)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold τ is a frequency in [0, 1), got {threshold}")
    tokens, _ = _random_inputs(model, n_tokens, seq_len, seed)
    prec = lm_precision(model, autocast)
    counts = firing_counts(model, [sae], tokens, hook=hook, batch_size=batch_size, progress=progress,
                           autocast=prec == "bf16")
    return _results(*counts, [name], threshold, unit, seq_len, seed, prec)[0]


# ----------------------------------------------------------------------------- Table C.2
@dataclass
class FFRTable(Result):
    """FFR per training dataset, averaged over seeds (App. C.2)."""

    rows: list[dict[str, Any]]
    """One dict per dataset: dataset, ffr (mean over seeds), ffr_seeds (each the mean over the
    random-token draws), ffr_draws, ffr_interval (t over seeds; None for one seed), ffr_token."""
    threshold: float
    """τ used."""
    unit: str
    """Counting unit of ``ffr``."""
    results: dict[str, list[FFRResult]] = field(default_factory=dict, repr=False)
    """The per-SAE results (frequencies) on the first random-token draw, by dataset."""
    name: str = "ffr_table"
    """Used for file names by :meth:`save`."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "unit": self.unit, "rows": self.rows}

    def to_markdown(self, digits: int = 4) -> str:
        lines = [f"| dataset | FFR | {LEVEL:.0%} interval (seeds) | per seed (mean over draws) |", "|---|---|---|---|"]
        for r in self.rows:
            seeds = ", ".join(f"{x:.{digits}f}" for x in r["ffr_seeds"])
            ci = r.get("ffr_interval")
            ci_text = f"[{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]" if ci else "— (one seed)"
            lines.append(f"| {r['dataset']} | {r['ffr']:.{digits}f} | {ci_text} | {seeds} |")
        return "\n".join(lines)

    def figure(self, ax=None):
        """FFR vs τ, one line per dataset (mean over seeds, their range shaded; first draw), with τ marked."""
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        thr = np.logspace(-4, 0, 200)
        for ds, res in self.results.items():
            curves = np.array([r.ffr_curve(thr)[1] for r in res])
            line, = ax.plot(thr, curves.mean(0), label=ds)
            ax.fill_between(thr, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2, lw=0)
        ax.axvline(self.threshold, color="red", ls="--", label=f"τ = {self.threshold}")
        ax.set_xscale("log")
        ax.set_xlabel(f"τ (firing frequency per {self.unit} on random tokens)")
        ax.set_ylabel("fake feature ratio (seeds: mean, range)")
        ax.legend(fontsize=8)
        return ax.figure


def ffr_table(model, runs: Mapping[Hashable, Sequence], *, n_tokens: int = 8_192,
              seq_len: int = DEFAULT_SEQ_LEN, threshold: float = DEFAULT_THRESHOLD, unit: str = "sequence",
              seed: int = 0, n_draws: int = 3, batch_size: int = 16, progress: bool = False,
              name: str = "ffr_table", autocast: bool | None = None) -> FFRTable:
    """Table C.2: FFR of every SAE in ``runs`` (dataset → seed SAEs or checkpoint folders, e.g.
    ``faithful.train_corpora(model, profile)``), averaged over seeds.

    Each SAE is measured on ``n_draws`` independent random-token draws (seeds ``seed``,
    ``seed + 1`` …) of ``n_tokens`` each, and its FFR is the mean over the draws; a row holds
    every value, the mean over seeds and, from two seeds on, a t interval over the seeds. Every
    SAE sees the same random tokens, and SAEs at the same hook share one model pass per draw.
    """
    _check_unit(unit)
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    prec = lm_precision(model, autocast)
    by_hook: dict[str, list[tuple[Hashable, int, Any]]] = defaultdict(list)
    for ds, saes in runs.items():
        if len(saes) == 0:
            raise ValueError(f"{ds!r} has no SAE")
        for j, s in enumerate(saes):
            s = load_sae(s)
            by_hook[sae_hook(model, s)].append((ds, j, s))
    results: dict[Hashable, dict[int, list[FFRResult]]] = defaultdict(lambda: defaultdict(list))
    for draw in range(seed, seed + n_draws):
        tokens, _ = _random_inputs(model, n_tokens, seq_len, draw)
        for hook, items in by_hook.items():
            counts = firing_counts(model, [s for *_, s in items], tokens, hook=hook, batch_size=batch_size,
                                   progress=progress, autocast=prec == "bf16")
            names = [f"{ds}-seed{j}" for ds, j, _ in items]
            for (ds, j, _), res in zip(items, _results(*counts, names, threshold, unit, seq_len, draw, prec)):
                results[ds][j].append(res)
    rows = []
    for ds in runs:
        draws = [[r.ratio for r in results[ds][j]] for j in sorted(results[ds])]
        per_seed = [float(np.mean(d)) for d in draws]
        rows.append({"dataset": str(ds), "ffr": float(np.mean(per_seed)), "ffr_seeds": per_seed, "ffr_draws": draws,
                     "ffr_interval": t_interval(per_seed).to_dict() if len(per_seed) > 1 else None,
                     "ffr_token": float(np.mean([r.ffr_at(threshold, "token") for j in results[ds]
                                                 for r in results[ds][j]])),
                     "d_sae": results[ds][0][0].d_sae, "n_draws": n_draws})
    first = {str(ds): [results[ds][j][0] for j in sorted(results[ds])] for ds in runs}
    return FFRTable(rows=rows, threshold=float(threshold), unit=unit, results=first, name=name)
