"""Intervals on known distributions and verdicts on planted differences."""
import math

import numpy as np
import pytest

from faithful.intervals import Estimate, bootstrap_interval, bootstrap_statistic, difference, t_interval, verdict


def test_t_interval_known_answer():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653
    e = t_interval([1, 2, 3])
    assert e.mean == 2 and e.se == pytest.approx(1 / math.sqrt(3))
    assert e.high - 2 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and e.low == pytest.approx(4 - e.high)
    assert e.n == 3 and e.df == 2 and e.method == "t over 3 seeds"


def test_bootstrap_interval_on_a_known_distribution():
    x = np.random.default_rng(1).normal(0.0, 1.0, 4000)
    e = bootstrap_interval(x, "texts")
    # the interval of a mean of 4,000 standard normals: ±1.96/sqrt(4000) = ±0.031 around the sample mean
    assert e.low < 0 < e.high
    assert (e.high - e.low) / 2 == pytest.approx(1.96 / math.sqrt(4000), rel=0.1)
    assert e.se == pytest.approx(1 / math.sqrt(4000), rel=0.1) and e.df == math.inf
    assert bootstrap_interval(x) == bootstrap_interval(x)  # seeded


def test_difference_is_welch():
    a, b = t_interval([1.0, 1.1, 0.9]), t_interval([0.0, 0.2, -0.2])
    d = difference(a, b)
    assert d.mean == pytest.approx(1.0) and d.se == pytest.approx(math.hypot(a.se, b.se))
    # Welch–Satterthwaite degrees of freedom for two samples of 3: between 2 and 4
    assert 2 <= d.df <= 4 and d.low > 0


@pytest.mark.parametrize("low, high, claimed, expected", [
    (0.1, 0.3, "higher", "agrees"), (0.1, 0.3, "lower", "disagrees"),
    (-0.3, -0.1, "lower", "agrees"), (-0.3, -0.1, "higher", "disagrees"),
    (-0.1, 0.2, "higher", "not resolved"), (-0.1, 0.2, "lower", "not resolved"),
    (float("nan"), float("nan"), "higher", "not resolved")])
def test_verdict_from_planted_intervals(low, high, claimed, expected):
    diff = Estimate((low + high) / 2, low, high, 0.1, 2, 6, "planted")
    assert verdict(diff, claimed) == expected


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval([0.5])
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval([1.0])
    with pytest.raises(ValueError, match="claimed must be"):
        verdict(t_interval([1, 2]), "bigger")


def test_bootstrap_statistic_centres_on_the_estimate():
    e = bootstrap_statistic(5.0, [3.0, 3.2, 2.8, 3.1, 2.9], "documents")
    assert e.mean == 5.0 and e.low < 5.0 < e.high
    assert (e.high - e.low) / 2 == pytest.approx(1.959964 * np.std([3.0, 3.2, 2.8, 3.1, 2.9], ddof=1), rel=1e-5)
