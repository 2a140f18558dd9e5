"""Shared Feature Ratio (paper §3.4): how many decoder directions two SAEs have in common.

Two SAEs trained with different seeds are compared by the cosine similarity of their decoder
rows (feature directions). The Hungarian algorithm finds the one-to-one assignment that
maximises the total similarity; a matched pair is *shared* when its cosine is strictly above
the threshold (0.7 in the paper), every other feature is an *orphan* (Paulo and Belrose, 2025).

    SFR = |shared| / d_sae

Rectangular case (``d_sae_a ≠ d_sae_b``): the assignment pairs ``min(d_sae_a, d_sae_b)``
features; the rest of the larger SAE is unmatched, hence orphan. ``ratio`` is SAE A's share,
``shared / d_sae_a``; ``ratio_b = shared / d_sae_b`` is B's (swap the arguments to make it the
headline). Both are equal when the widths are. Different ``d_in`` cannot be compared: error.

The paper's code also reports a *top-1* ratio (no one-to-one constraint): the share of
features whose best match on the other side is above the threshold. It is an upper bound on
the Hungarian ratio.

Memory: the similarities are computed in float32, one block of rows at a time, and written
once, negated, into a C-contiguous float64 cost matrix that ``scipy.optimize.
linear_sum_assignment`` uses as it is (it would otherwise convert a float32 input to a new
float64 array, and copy it again to negate it for ``maximize=True`` or to transpose a tall
matrix). At d_sae 16,384 that is one 2.1 GB array. ``benchmarks/matching.py`` measures it.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..intervals import LEVEL, t_interval
from ..sae.load import load_sae, load_snapshots
from ..storage import Result


@dataclass
class SFRResult(Result):
    """The outcome of matching two SAEs' decoder directions."""

    ratio: float
    """Shared Feature Ratio of SAE A: shared / d_sae_a."""
    ratio_b: float
    """Shared / d_sae_b (equal to ``ratio`` when the widths match)."""
    top1_ratio: float
    """Share of A's features whose best cosine with any B feature exceeds the threshold."""
    top1_ratio_b: float
    """The same from B's side."""
    threshold: float
    """Cosine above which (strictly) a matched pair is shared."""
    pairs: np.ndarray = field(repr=False)
    """``[min(d_a, d_b), 2]`` int array of matched (A index, B index), sorted by A index."""
    similarities: np.ndarray = field(repr=False)
    """Cosine similarity of each matched pair (float32, aligned with ``pairs``)."""
    d_sae_a: int = 0
    """Width of SAE A."""
    d_sae_b: int = 0
    """Width of SAE B."""
    name: str = "sfr"
    """Used for file names by :meth:`save`."""

    @property
    def n_shared(self) -> int:
        return int(self.shared_mask.sum())

    @property
    def shared_mask(self) -> np.ndarray:
        return self.similarities > np.float32(self.threshold)

    @property
    def shared_a(self) -> np.ndarray:
        """Indices of A's shared features."""
        return np.sort(self.pairs[self.shared_mask, 0])

    @property
    def shared_b(self) -> np.ndarray:
        """Indices of B's shared features."""
        return np.sort(self.pairs[self.shared_mask, 1])

    @property
    def orphans_a(self) -> np.ndarray:
        """A's features with no partner above the threshold (unmatched ones included)."""
        return np.setdiff1d(np.arange(self.d_sae_a), self.shared_a)

    @property
    def orphans_b(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.d_sae_b), self.shared_b)

    def ratio_at(self, threshold: float) -> float:
        """SFR of A for another threshold, from the same assignment."""
        return float((self.similarities > np.float32(threshold)).sum() / self.d_sae_a)

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        d = {"name": self.name, "ratio": self.ratio, "ratio_b": self.ratio_b,
             "top1_ratio": self.top1_ratio, "top1_ratio_b": self.top1_ratio_b,
             "threshold": self.threshold, "n_shared": self.n_shared,
             "d_sae_a": self.d_sae_a, "d_sae_b": self.d_sae_b,
             "mean_matched_similarity": float(self.similarities.mean()) if len(self.similarities) else None}
        if arrays:
            d["pairs"] = self.pairs.tolist()
            d["similarities"] = [round(float(s), 6) for s in self.similarities]
        return d

    def figure(self, chance: "SFRResult | None" = None, bins: int = 50, ax=None):
        """Histogram of matched cosine similarities, with the threshold (and a chance baseline)."""
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        edges = np.linspace(min(-0.2, float(self.similarities.min(initial=0))), 1.0, bins + 1)
        ax.hist(self.similarities, bins=edges, alpha=0.75, label=f"{self.name}: SFR {self.ratio:.3f}")
        if chance is not None:
            ax.hist(chance.similarities, bins=edges, alpha=0.5, color="grey",
                    label=f"random init: SFR {chance.ratio:.3f}")
        ax.axvline(self.threshold, color="red", ls="--", label=f"threshold {self.threshold}")
        ax.set_xlabel("cosine similarity of matched decoder directions")
        ax.set_ylabel("features")
        ax.legend(fontsize=8)
        return ax.figure


# ----------------------------------------------------------------------------- inputs
def decoder_matrix(obj) -> torch.Tensor:
    """``[d_sae, d_in]`` float32 decoder directions from an SAE, a checkpoint folder or a matrix."""
    if isinstance(obj, np.ndarray):
        w = torch.from_numpy(obj)
    elif isinstance(obj, torch.Tensor):
        w = obj
    else:
        w = load_sae(obj).W_dec
    w = w.detach().to("cpu", torch.float32)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"a decoder matrix must be 2-D [d_sae, d_in] and non-empty, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("the decoder matrix contains NaN or inf; the SAE's training diverged")
    return w


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; an all-zero row stays zero (cosine 0 with everything)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------- core
def shared_feature_ratio(sae_a, sae_b, threshold: float = 0.7, *, chunk_size: int = 1024,
                         name: str = "sfr") -> SFRResult:
    """Hungarian-matched Shared Feature Ratio of two SAEs (see the module docstring).

    ``sae_a``/``sae_b``: SAELens SAEs, checkpoint folders, or ``[d_sae, d_in]`` decoder
    matrices (tensor or ndarray). ``threshold``: a pair is shared when its cosine is strictly
    above it (compared in float32, the precision of the cosines). ``chunk_size``: rows of the
    similarity matrix computed at a time.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    sae_a, sae_b = (x if isinstance(x, (np.ndarray, torch.Tensor)) else load_sae(x) for x in (sae_a, sae_b))
    hooks = [None if isinstance(x, (np.ndarray, torch.Tensor)) else x.cfg.metadata.hook_name for x in (sae_a, sae_b)]
    if None not in hooks and hooks[0] != hooks[1]:
        raise ValueError(f"cannot match SAEs of different hooks ({hooks[0]} vs {hooks[1]}): their decoder "
                         "directions live in different spaces; compare SAEs trained at the same hook")
    wa, wb = decoder_matrix(sae_a), decoder_matrix(sae_b)
    if wa.shape[1] != wb.shape[1]:
        raise ValueError(f"cannot match SAEs of different input widths: d_in {wa.shape[1]} vs "
                         f"{wb.shape[1]}; compare SAEs trained at the same hook of the same model")
    # Rows of the cost matrix are the narrower side, so scipy never transposes (a copy).
    swap = wa.shape[0] > wb.shape[0]
    rows, cols = (_unit_rows(wb), _unit_rows(wa)) if swap else (_unit_rows(wa), _unit_rows(wb))
    n, m = rows.shape[0], cols.shape[0]
    cost = np.empty((n, m), dtype=np.float64)  # the only n × m array: float64, C order, built in place
    row_max = np.empty(n, dtype=np.float32)
    col_max = np.full(m, -np.inf, dtype=np.float32)
    cols_t = cols.T.contiguous()
    for s in range(0, n, chunk_size):
        block = (rows[s:s + chunk_size] @ cols_t).numpy()  # float32 [chunk, m]
        row_max[s:s + len(block)] = block.max(axis=1)
        np.maximum(col_max, block.max(axis=0), out=col_max)
        np.negative(block, out=cost[s:s + len(block)])  # minimise −cosine, cast to float64 on write
        del block
    r, c = linear_sum_assignment(cost)  # float64 C-contiguous, square or wide: used without copy
    sims = (-cost[r, c]).astype(np.float32)
    del cost
    pairs = np.stack([c, r], axis=1) if swap else np.stack([r, c], axis=1)
    order = np.argsort(pairs[:, 0], kind="stable")
    pairs, sims = pairs[order].astype(np.int64), sims[order]
    top_a, top_b = (col_max, row_max) if swap else (row_max, col_max)
    thr = np.float32(threshold)
    n_shared = int((sims > thr).sum())
    da, db = wa.shape[0], wb.shape[0]
    return SFRResult(ratio=n_shared / da, ratio_b=n_shared / db,
                     top1_ratio=float((top_a > thr).mean()), top1_ratio_b=float((top_b > thr).mean()),
                     threshold=float(threshold), pairs=pairs, similarities=sims,
                     d_sae_a=da, d_sae_b=db, name=name)


def random_decoder(d_sae: int, d_in: int, seed: int) -> torch.Tensor:
    """A seeded random decoder drawn as SAELens initialises one: ``kaiming_uniform_`` on
    ``[d_sae, d_in]`` (``SAE.initialize_weights``), without importing SAELens (slow)."""
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.empty(int(d_sae), int(d_in))
    bound = (6.0 / int(d_in)) ** 0.5  # kaiming_uniform_(a=0, fan_in=d_in, leaky_relu gain √2)
    return w.uniform_(-bound, bound, generator=gen)


def chance_sfr(d_sae: int, d_in: int, threshold: float = 0.7, *, seeds: tuple[int, int] = (42, 49),
               chunk_size: int = 1024) -> SFRResult:
    """SFR of two randomly initialised SAEs of the same shape: the floor a trained pair is read against.

    For random directions in ``d_in`` dimensions cosines are ≈ N(0, 1/d_in), so at d_in 576
    the best matches sit near 0.15 and the chance SFR at 0.7 is 0.
    """
    if d_sae < 1 or d_in < 1:
        raise ValueError(f"d_sae and d_in must be positive, got {d_sae}, {d_in}")
    return shared_feature_ratio(random_decoder(d_sae, d_in, seeds[0]), random_decoder(d_sae, d_in, seeds[1]),
                                threshold, chunk_size=chunk_size, name="chance")


def sfr_over_training(folders: Sequence, threshold: float = 0.7, *, chunk_size: int = 1024) -> dict[int, list[float]]:
    """SFR of every pair of seed runs (checkpoint folders of one ``train_saes`` call) at each
    snapshot and at the end: ``{training tokens: [SFR per pair]}``, in order of tokens."""
    if len(folders) < 2:
        raise ValueError(f"SFR over training needs the runs of two or more seeds, got {len(folders)}")
    runs = [load_snapshots(folder) for folder in folders]
    if any(list(r) != list(runs[0]) for r in runs):
        raise ValueError("the runs hold snapshots at different token counts: give the seeds of one train_saes call")
    return {t: [shared_feature_ratio(a[t].W_dec, b[t].W_dec, threshold, chunk_size=chunk_size).ratio
                for a, b in itertools.combinations(runs, 2)] for t in runs[0]}


# ----------------------------------------------------------------------------- tables
@dataclass
class SFRTable(Result):
    """SFR per group of seed-SAEs: Tables 2 and 4 (by training dataset), Table 3 (target × source)."""

    index: tuple[str, ...]
    """Names of the key columns, e.g. ("dataset",) or ("target", "source")."""
    rows: list[dict[str, Any]]
    """One dict per group: key columns, sfr (mean over seed pairs), sfr_pairs, sfr_interval (a
    :class:`~faithful.metrics.intervals.Estimate` as a dict over the pairs; None for one pair), top1, d_sae."""
    threshold: float
    """The SFR threshold used."""
    chance: dict[str, float] = field(default_factory=dict)
    """Chance SFR per SAE shape ("d_sae x d_in" → ratio)."""
    name: str = "sfr_table"
    """Used for file names by :meth:`save`."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": list(self.index), "threshold": self.threshold,
                "chance": self.chance, "rows": self.rows}

    def to_markdown(self, digits: int = 4) -> str:
        cols = [*self.index, "SFR", f"{LEVEL:.0%} interval", "range over pairs", "top-1", "pairs"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rows:
            ci = r.get("sfr_interval")
            ci_text = f"[{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]" if ci else "— (one pair)"
            spread = f"{min(r['sfr_pairs']):.{digits}f} – {max(r['sfr_pairs']):.{digits}f}"
            lines.append("| " + " | ".join([*(str(r[k]) for k in self.index), f"{r['sfr']:.{digits}f}", ci_text,
                                            spread, f"{r['top1']:.{digits}f}", str(len(r["sfr_pairs"]))]) + " |")
        if self.chance:
            lines.append("")
            lines.append("chance (two random inits): " + ", ".join(f"{k}: {v:.4f}" for k, v in self.chance.items()))
        return "\n".join(lines)

    def figure(self, ax=None):
        """The SFR of each group (bar: mean over seed pairs; dots: every pair), top-1 ticks, chance."""
        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 * len(self.rows) + 2.5, 3.5))
        x = np.arange(len(self.rows))
        ax.bar(x, [r["sfr"] for r in self.rows], color="tab:blue", label="Hungarian SFR (mean over seed pairs)")
        for i, r in enumerate(self.rows):  # every pair, so that the spread is seen, not summarised
            ax.scatter([i] * len(r["sfr_pairs"]), r["sfr_pairs"], color="navy", s=12, zorder=3,
                       label="one seed pair" if i == 0 else None)
        ax.scatter(x, [r["top1"] for r in self.rows], color="black", marker="_", s=300, label="top-1 ratio")
        for i, v in enumerate(self.chance.values()):
            ax.axhline(v, color="grey", ls=":", label="random init" if i == 0 else None)
        ax.set_xticks(x, [" / ".join(str(r[k]) for k in self.index) for r in self.rows], rotation=30)
        ax.set_ylabel(f"shared feature ratio (cos > {self.threshold})")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        return ax.figure


def sfr_table(runs: Mapping[Hashable, Sequence], threshold: float = 0.7, *,
              index: Sequence[str] = ("dataset",), chance: bool = True, name: str = "sfr_table",
              chunk_size: int = 1024) -> SFRTable:
    """SFR for each group of SAEs that differ only by seed.

    ``runs`` maps a key to two or more SAEs (or checkpoint folders, or decoder matrices),
    e.g. ``faithful.train_corpora(model, profile)`` for Tables 2/4 (key = dataset). For Table
    3 use tuple keys ``(target model, source)`` with ``index=("target", "source")``: the
    target is the model whose activations the SAE reads, the source the model (or, with one
    model, the generation setting) that produced the training text. Every pair of seeds in a
    group is matched; the row holds the mean, every pair's value and, from three seeds on, an
    interval over the pairs. ``chance=True`` adds the random-init SFR per shape.
    """
    index = tuple(index)
    rows, shapes = [], set()
    for key, saes in runs.items():
        key_t = key if isinstance(key, tuple) else (key,)
        if len(key_t) != len(index):
            raise ValueError(f"key {key!r} has {len(key_t)} parts but index names {index}; pass index= to match")
        if isinstance(saes, (str, os.PathLike)) or len(saes) < 2:
            got = "one path" if isinstance(saes, (str, os.PathLike)) else f"{len(saes)} SAE(s)"
            raise ValueError(f"runs[{key!r}] holds {got}; give a list of two or more SAEs of one configuration "
                             "(its seeds), e.g. train_corpora(model, profile)")
        saes = [s if isinstance(s, (np.ndarray, torch.Tensor)) else load_sae(s) for s in saes]
        results = [shared_feature_ratio(a, b, threshold, chunk_size=chunk_size)
                   for a, b in itertools.combinations(saes, 2)]
        group_shapes = [tuple(decoder_matrix(s).shape) for s in saes]
        shapes.update(group_shapes)
        rows.append({**dict(zip(index, key_t)), "sfr": float(np.mean([r.ratio for r in results])),
                     "sfr_pairs": [r.ratio for r in results],
                     "sfr_interval": t_interval([r.ratio for r in results], "seed pairs (sharing seeds)").to_dict()
                     if len(results) > 1 else None,
                     "top1": float(np.mean([r.top1_ratio for r in results])),
                     "mean_matched_similarity": float(np.mean([r.similarities.mean() for r in results])),
                     "d_sae": int(group_shapes[0][0])})
    chance_map = {f"{d}x{i}": chance_sfr(d, i, threshold, chunk_size=chunk_size).ratio
                  for d, i in sorted(shapes)} if chance else {}
    return SFRTable(index=index, rows=rows, threshold=float(threshold), chance=chance_map, name=name)
