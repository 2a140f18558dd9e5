"""How sure a number is, and what a comparison says: intervals and verdicts, computed, never typed.

Two kinds of spread, each named in the :class:`Estimate` it produces:

* :func:`t_interval` — over independent repeats, e.g. one value per SAE seed: the mean and
  Student's *t* interval (n − 1 degrees of freedom). SFR over seed *pairs* uses it too; pairs
  share seeds, so that interval is a rough one, and says so in its ``method``.
* :func:`bootstrap_interval` — over the items of one evaluation, e.g. a probe's test texts:
  the percentile interval of the mean over ``n_boot`` resamples with a fixed seed. For a paired
  comparison (two SAEs scored on the same texts) pass the per-item differences.
  :func:`bootstrap_statistic` does the same for a statistic that is not a mean (a KL divergence).

:func:`difference` gives the interval of ``a − b`` (Welch's, from the estimates' standard errors
and degrees of freedom), and :func:`verdict` reads a claim's direction against it:
``agrees`` when the interval excludes zero on the claimed side, ``disagrees`` when it excludes
zero on the other side, ``not resolved`` when it straddles zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
"""Coverage of every interval."""
VERDICTS = ("agrees", "disagrees", "not resolved")
DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval, and how the interval was made."""

    mean: float
    """The point estimate (mean of ``values``)."""
    low: float
    """Lower end of the :data:`LEVEL` interval."""
    high: float
    """Upper end of the interval."""
    se: float
    """Standard error of ``mean`` (for :func:`difference`)."""
    df: float
    """Degrees of freedom behind the interval (``inf`` for a bootstrap)."""
    n: int
    """Repeats (seeds, seed pairs) or items (texts) it was computed from."""
    method: str
    """How: ``"t over 3 seeds"``, ``"bootstrap over 400 texts"`` …"""

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "se": self.se, "df": self.df,
                "n": self.n, "method": self.method}


def t_interval(values: Sequence[float], what: str = "seeds") -> Estimate:
    """Mean of ``values`` (independent repeats: ``what``) and its Student-t interval."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"an interval needs at least 2 values ({what}), got {len(x.ravel())}: train more "
                         "seeds (profile.seeds, at least 2; 3 for a spread of SFR pairs)")
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(stats.t.ppf((1 + LEVEL) / 2, len(x) - 1)) * se
    return Estimate(float(x.mean()), float(x.mean()) - half, float(x.mean()) + half, se, len(x) - 1, len(x),
                    f"t over {len(x)} {what}")


def bootstrap_interval(values: Sequence[float], what: str = "items", n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of ``values`` (the items of one evaluation: ``what``) and its percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"a bootstrap needs at least 2 {what}, got {len(x.ravel())}")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(1)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(float(x.mean()), float(low), float(high), float(means.std(ddof=1)), math.inf, len(x),
                    f"bootstrap over {len(x)} {what}")


def bootstrap_statistic(point: float, replicates: Sequence[float], what: str) -> Estimate:
    """A statistic that is not a mean (a KL, a count of distinct tokens) with a normal interval
    whose width is the spread of its bootstrap ``replicates`` (the statistic on resampled ``what``).
    Such statistics are biased under resampling (a resample holds fewer distinct tokens), so a
    percentile interval can miss the estimate itself; ``point ± z·sd`` keeps it at the centre."""
    r = np.asarray(replicates, dtype=float)
    if len(r) < 2:
        raise ValueError(f"a bootstrap needs at least 2 replicates, got {len(r)}")
    se = float(r.std(ddof=1))
    half = float(stats.norm.ppf((1 + LEVEL) / 2)) * se
    return Estimate(float(point), float(point) - half, float(point) + half, se, math.inf, len(r),
                    f"bootstrap spread over {what} ({len(r)} resamples)")


def difference(a: Estimate, b: Estimate) -> Estimate:
    """``a − b`` with Welch's interval (independent estimates; a bootstrap counts as normal)."""
    se = math.hypot(a.se, b.se)
    terms = [e.se ** 4 / e.df for e in (a, b) if math.isfinite(e.df) and e.df > 0]
    df = math.inf if not terms or se == 0 else se ** 4 / sum(terms)
    half = float(stats.t.ppf((1 + LEVEL) / 2, df) if math.isfinite(df) else stats.norm.ppf((1 + LEVEL) / 2)) * se
    mean = a.mean - b.mean
    return Estimate(mean, mean - half, mean + half, se, df, a.n + b.n, f"Welch: ({a.method}) − ({b.method})")


def verdict(diff: Estimate, claimed: str) -> str:
    """The paper's claim that a quantity is ``"higher"``/``"lower"`` for the first group, read
    against ``diff`` (first − second): one of :data:`VERDICTS`."""
    if claimed not in DIRECTIONS:
        raise ValueError(f"claimed must be one of {DIRECTIONS}, got {claimed!r}")
    if not (math.isfinite(diff.low) and math.isfinite(diff.high)):
        return "not resolved"
    above, below = diff.low > 0, diff.high < 0
    if not (above or below):
        return "not resolved"
    return "agrees" if (above if claimed == "higher" else below) else "disagrees"
