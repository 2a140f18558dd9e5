"""SFR and FFR against training tokens: the curve reads the runs' snapshots, its last point is the
tables', and the budget from which a verdict stops changing is read from the verdicts."""
import datasets
import pytest

import faithful
from faithful.intervals import VERDICTS
from faithful.metrics.curve import CLAIMS, TrainingCurve
from toy import SMALL, TEXTS


def _curve(verdicts: dict[int, str]) -> TrainingCurve:
    diffs = [{"other": "web", "metric": "sfr", "tokens": t, "difference": None, "verdict": v} for t, v in verdicts.items()]
    return TrainingCurve(rows=[], differences=diffs, sfr_threshold=0.7, ffr_threshold=0.1)


def test_stable_from_is_the_first_budget_of_the_last_unchanged_verdicts():
    assert _curve({1: "agrees", 2: "not resolved", 4: "agrees", 8: "agrees"}).stable_from("web", "sfr") == 4
    assert _curve({1: "agrees", 2: "agrees", 4: "agrees"}).stable_from("web", "sfr") == 1
    assert _curve({1: "agrees", 2: "agrees", 4: "disagrees"}).stable_from("web", "sfr") is None  # still moving
    assert _curve({1: "agrees"}).stable_from("web", "sfr") is None  # one point says nothing about stability
    with pytest.raises(ValueError, match="no difference for 'c4'"):
        _curve({1: "agrees"}).stable_from("c4", "sfr")


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("curve")
    other = datasets.Dataset.from_dict({"text": [t.replace("mat", "rug").upper() for t in TEXTS]})
    return {name: faithful.train_saes(tiny_model, ds, seeds=(42, 49, 7), out_dir=out / name, dataset_name=name,
                                      **SMALL)
            for name, ds in {"faithful": datasets.Dataset.from_dict({"text": TEXTS}), "web": other}.items()}


def test_training_curve_ends_at_the_tables_and_compares_every_point(tiny_model, runs):
    curve = faithful.training_curve(tiny_model, runs, n_tokens=512, n_draws=1, seed=3)
    points = [128, 384, 768, 1536]
    assert [(r["corpus"], r["tokens"]) for r in curve.rows] == [(c, t) for c in runs for t in points]
    sfr = faithful.sfr_table(runs, chance=False)
    ffr = faithful.ffr_table(tiny_model, runs, n_tokens=512, n_draws=1, seed=3)
    for name, sfr_row, ffr_row in zip(runs, sfr.rows, ffr.rows):
        last = next(r for r in curve.rows if r["corpus"] == name and r["tokens"] == 1536)
        assert last["sfr_pairs"] == pytest.approx(sfr_row["sfr_pairs"], abs=1e-12)
        assert last["ffr_seeds"] == pytest.approx(ffr_row["ffr_seeds"], abs=1e-12)
        assert last["sfr_interval"]["low"] <= last["sfr"] <= last["sfr_interval"]["high"]
    assert [(d["metric"], d["tokens"]) for d in curve.differences] == [(m, t) for m in CLAIMS for t in points]
    for d in curve.differences:
        a, b = (next(r for r in curve.rows if r["corpus"] == c and r["tokens"] == d["tokens"]) for c in ("faithful", "web"))
        assert d["difference"]["mean"] == pytest.approx(a[d["metric"]] - b[d["metric"]])
        assert d["verdict"] in VERDICTS
    assert "| web | SFR | 1,536 |" in curve.to_markdown()


def test_training_curve_needs_seed_pairs_and_the_reference(tiny_model, runs):
    with pytest.raises(ValueError, match="two or more seeds"):
        faithful.training_curve(tiny_model, {"faithful": runs["faithful"][:1], "web": runs["web"]})
    with pytest.raises(ValueError, match="reference corpus 'faithful'"):
        faithful.training_curve(tiny_model, {"web": runs["web"]})
