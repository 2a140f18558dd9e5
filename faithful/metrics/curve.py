"""SFR and FFR against training tokens: is a profile's budget enough for the paper's comparison?

Every run keeps its weights at 1/8, 1/4 and 1/2 of its steps (:data:`faithful.sae.train.SNAPSHOT_HALVINGS`).
:func:`training_curve` reads SFR (every seed pair) and FFR (every seed) at each of those points and
at the end, for every corpus, and the Faithful − other difference with its Welch interval and the
verdict on the paper's claim at each point (Faithful SFR below web data, Table 4; Faithful FFR below,
Table C.2). ``stable_from`` is the first budget from which a verdict no longer changes: a budget
below it reads a comparison that is still moving.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..intervals import LEVEL, difference, t_interval, verdict
from ..sae.load import load_snapshots
from ..storage import Result
from .ffr import DEFAULT_THRESHOLD, ffr_table
from .sfr import shared_feature_ratio

CLAIMS = {"sfr": "lower", "ffr": "lower"}
"""The paper's direction for Faithful against web text: SFR lower (Table 4), FFR lower (Table C.2)."""


@dataclass
class TrainingCurve(Result):
    """SFR and FFR per corpus at each point of training, and Faithful − other at each point."""

    rows: list[dict[str, Any]]
    """One dict per (corpus, tokens): sfr, sfr_pairs, sfr_interval, ffr, ffr_seeds, ffr_interval."""
    differences: list[dict[str, Any]]
    """One dict per (other corpus, metric, tokens): the Faithful − other difference (an
    :class:`~faithful.intervals.Estimate` as a dict) and the verdict on :data:`CLAIMS`."""
    sfr_threshold: float
    """Cosine threshold of the SFR."""
    ffr_threshold: float
    """τ of the FFR (per sequence, random tokens)."""
    profile: str = ""
    """Profile the runs were trained at (the report reads one profile's results)."""
    name: str = "training_curve"
    """Used for file names by :meth:`save`."""

    def stable_from(self, other: str, metric: str) -> int | None:
        """The smallest budget from which the verdict of Faithful vs ``other`` on ``metric`` stays
        the same at every later point (None when the last two points differ)."""
        rows = [d for d in self.differences if d["other"] == other and d["metric"] == metric]
        if not rows:
            raise ValueError(f"no difference for {other!r} on {metric!r}: "
                             f"corpora {sorted({d['other'] for d in self.differences})}, metrics {sorted(CLAIMS)}")
        same = list(itertools.takewhile(lambda d: d["verdict"] == rows[-1]["verdict"], reversed(rows)))
        return same[-1]["tokens"] if len(same) >= 2 else None

    def to_markdown(self, digits: int = 3) -> str:
        lines = ["| corpus | tokens | SFR (pairs) | FFR (seeds) |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['corpus']} | {r['tokens']:,} | {_text(r['sfr_interval'], digits)} "
                         f"| {_text(r['ffr_interval'], digits)} |")
        lines += ["", f"| Faithful − | metric | tokens | difference ({LEVEL:.0%} Welch) | paper: Faithful "
                      "| verdict |", "|---|---|---|---|---|---|"]
        for d in self.differences:
            lines.append(f"| {d['other']} | {d['metric'].upper()} | {d['tokens']:,} | {_text(d['difference'], digits)} "
                         f"| {CLAIMS[d['metric']]} | {d['verdict']} |")
        return "\n".join(lines)

    def figure(self):
        """SFR (left) and FFR (right) against training tokens, one line per corpus, 95 % intervals."""
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, metric in zip(axes, ("sfr", "ffr")):
            for corpus in dict.fromkeys(r["corpus"] for r in self.rows):
                rows = [r for r in self.rows if r["corpus"] == corpus]
                x = [r["tokens"] for r in rows]
                mean = np.array([r[metric] for r in rows])
                ci = [r[f"{metric}_interval"] for r in rows]
                low = np.array([c["low"] if c else m for c, m in zip(ci, mean)])
                high = np.array([c["high"] if c else m for c, m in zip(ci, mean)])
                ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=corpus)
            ax.set_xscale("log")
            ax.set_xlabel("training tokens per SAE")
            ax.set_ylabel(f"{'SFR (seed pairs)' if metric == 'sfr' else f'FFR (seeds, τ {self.ffr_threshold})'}")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"means with {LEVEL:.0%} t intervals", fontsize=9)
        fig.tight_layout()
        return fig


def _text(ci: dict | None, digits: int) -> str:
    if ci is None:
        return "—"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def training_curve(model, runs: Mapping[str, Sequence], *, n_tokens: int = 8_192, n_draws: int = 1, seed: int = 0,
                   sfr_threshold: float = 0.7, ffr_threshold: float = DEFAULT_THRESHOLD, reference: str = "faithful",
                   progress: bool = False, profile: str = "", name: str = "training_curve") -> TrainingCurve:
    """SFR and FFR of every corpus's seed runs (``{corpus: checkpoint folders of one train_saes call}``,
    e.g. ``faithful.train_corpora(model, profile)``) at each snapshot and at the end.

    FFR reads every SAE at every point on the same ``n_draws`` random-token draws of ``n_tokens``
    (:func:`faithful.ffr_table`, one model pass per draw); differences are ``reference`` − each other corpus.
    """
    if reference not in runs:
        raise ValueError(f"the reference corpus {reference!r} is not among the runs {sorted(runs)}")
    snaps = {}
    for corpus, folders in runs.items():
        if len(folders) < 2:
            raise ValueError(f"{corpus!r} has {len(folders)} run; SFR over training needs two or more seeds")
        per_seed = [load_snapshots(f) for f in folders]
        if any(list(s) != list(per_seed[0]) for s in per_seed):
            raise ValueError(f"the runs of {corpus!r} hold snapshots at different token counts: "
                             "give the seeds of one train_saes call")
        snaps[corpus] = {t: [s[t] for s in per_seed] for t in per_seed[0]}
    ffr = ffr_table(model, {(c, t): saes for c, points in snaps.items() for t, saes in points.items()},
                    n_tokens=n_tokens, n_draws=n_draws, seed=seed, threshold=ffr_threshold, progress=progress)
    ffr_rows = {(c, t): r for (c, t), r in zip([(c, t) for c in snaps for t in snaps[c]], ffr.rows)}
    rows, estimates = [], {}
    for corpus, points in snaps.items():
        for tokens, saes in points.items():
            pairs = [shared_feature_ratio(a.W_dec, b.W_dec, sfr_threshold).ratio for a, b in itertools.combinations(saes, 2)]
            f = ffr_rows[corpus, tokens]
            est = {"sfr": t_interval(pairs, "seed pairs"), "ffr": t_interval(f["ffr_seeds"], "seeds")}
            estimates[corpus, tokens] = est
            rows.append({"corpus": corpus, "tokens": tokens, "sfr": est["sfr"].mean, "sfr_pairs": pairs,
                         "sfr_interval": est["sfr"].to_dict(), "ffr": f["ffr"], "ffr_seeds": f["ffr_seeds"],
                         "ffr_interval": est["ffr"].to_dict()})
    differences = []
    for other in (c for c in snaps if c != reference):
        for metric in CLAIMS:
            for tokens in snaps[reference]:
                if (other, tokens) not in estimates:
                    continue  # budgets differ: only common points are compared
                diff = difference(estimates[reference, tokens][metric], estimates[other, tokens][metric])
                differences.append({"other": other, "metric": metric, "tokens": tokens, "difference": diff.to_dict(),
                                    "verdict": verdict(diff, CLAIMS[metric])})
    return TrainingCurve(rows=rows, differences=differences, sfr_threshold=float(sfr_threshold),
                         ffr_threshold=float(ffr_threshold), profile=profile, name=name)
