"""Known answers for the Shared Feature Ratio (faithful.metrics.sfr)."""
import json

import numpy as np
import pytest
import torch

from faithful.metrics.sfr import (SFRTable, chance_sfr, decoder_matrix, random_decoder,
                               sfr_table, shared_feature_ratio)


def _rand(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_row_permutation_is_fully_shared_and_pairs_are_the_permutation():
    a = _rand(300, 64, 0)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    res = shared_feature_ratio(a, 3.0 * a[perm])  # rescaling rows must not matter
    assert res.ratio == 1.0 and res.ratio_b == 1.0 and res.top1_ratio == 1.0
    # B row j is A row perm[j]: the assignment must recover exactly that
    expected = {int(p): j for j, p in enumerate(perm)}
    assert all(expected[i] == j for i, j in res.pairs)
    assert np.allclose(res.similarities, 1.0, atol=1e-5)
    assert len(res.orphans_a) == 0 and len(res.orphans_b) == 0


def test_planted_fraction_of_shared_directions():
    d_sae, d_in, n_shared = 400, 128, 120
    a = _rand(d_sae, d_in, 2)
    b = _rand(d_sae, d_in, 3)
    b[:n_shared] = a[:n_shared] + 0.05 * _rand(n_shared, d_in, 4)  # cos ≈ 0.999
    perm = torch.randperm(d_sae, generator=torch.Generator().manual_seed(5))
    res = shared_feature_ratio(a, b[perm])
    assert res.ratio == pytest.approx(n_shared / d_sae)
    assert set(res.shared_a.tolist()) == set(range(n_shared))
    assert set(res.orphans_a.tolist()) == set(range(n_shared, d_sae))
    assert len(res.shared_b) == n_shared and len(res.orphans_b) == d_sae - n_shared


def test_random_dictionaries_sit_at_the_chance_baseline():
    # in 8 dimensions random directions match well often, so chance is far from 0
    chance = chance_sfr(256, 8, 0.7).ratio
    assert 0.75 < chance < 0.97
    ratios = [shared_feature_ratio(random_decoder(256, 8, s), random_decoder(256, 8, s + 100)).ratio
              for s in range(3)]
    assert abs(np.mean(ratios) - chance) < 0.06
    # in the embedded model's 576 dimensions chance is zero: best matches stay near 0.15
    big = chance_sfr(512, 576)
    assert big.ratio == 0.0 and big.similarities.max() < 0.35


def test_chance_baseline_is_seeded():
    assert torch.equal(random_decoder(64, 16, 42), random_decoder(64, 16, 42))
    assert not torch.equal(random_decoder(64, 16, 42), random_decoder(64, 16, 49))
    # exactly the decoder SAELens gives a fresh SAE under the same seed
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(42)
    assert torch.equal(TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=1)).W_dec.detach(), random_decoder(64, 16, 42))


def test_threshold_is_strict_at_the_boundary():
    a = torch.zeros(1, 4)
    a[0, 0] = 1.0
    b = torch.ones(1, 4)  # cosine exactly 0.5
    assert shared_feature_ratio(a, b, threshold=0.5).ratio == 0.0
    assert shared_feature_ratio(a, b, threshold=0.49).ratio == 1.0
    res = shared_feature_ratio(a, b, threshold=0.5)
    assert res.ratio_at(0.4999) == 1.0 and res.similarities[0] == np.float32(0.5)


def test_hungarian_is_one_to_one_where_top1_is_not():
    # two B features both best match A's feature 0; only one can be assigned to it
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 0.05, 0.0], [1.0, -0.05, 0.0]])
    res = shared_feature_ratio(a, b)
    assert res.top1_ratio_b == 1.0          # both B rows have a partner above 0.7 …
    assert res.ratio == 0.5 and res.ratio_b == 0.5  # … but only one is matched one-to-one
    assert res.top1_ratio == 0.5


def test_rectangular_case_divides_by_each_side():
    a = _rand(100, 64, 6)
    b = torch.cat([a[:60] + 0.01 * _rand(60, 64, 7), _rand(150, 64, 8)])  # 210 rows, 60 shared
    res = shared_feature_ratio(a, b)
    assert res.n_shared == 60 and len(res.pairs) == 100
    assert res.ratio == pytest.approx(60 / 100) and res.ratio_b == pytest.approx(60 / 210)
    assert len(res.orphans_b) == 150
    swapped = shared_feature_ratio(b, a)  # tall orientation: same matching seen from B
    assert swapped.ratio == pytest.approx(60 / 210) and swapped.ratio_b == pytest.approx(60 / 100)
    assert sorted(map(tuple, swapped.pairs[:, ::-1].tolist())) == sorted(map(tuple, res.pairs.tolist()))


def test_accepts_saes_checkpoints_and_ndarrays(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=48, k=4))
    sae.save_model(str(tmp_path / "ckpt"))
    w = sae.W_dec.detach().numpy()
    for other in (sae, tmp_path / "ckpt", str(tmp_path / "ckpt"), w[::-1].copy()):
        assert shared_feature_ratio(sae, other).ratio == 1.0
    assert decoder_matrix(w).dtype == torch.float32


def test_bad_inputs_raise_clear_errors(tmp_path):
    from known_saes import topk_sae

    with pytest.raises(ValueError, match="different input widths: d_in 16 vs 32"):
        shared_feature_ratio(_rand(8, 16, 0), _rand(8, 32, 1))
    at_10, at_22 = topk_sae(16, 32, 4, "blocks.10.hook_resid_post"), topk_sae(16, 32, 4, "blocks.22.hook_resid_post")
    with pytest.raises(ValueError, match="different hooks .blocks.10.hook_resid_post vs blocks.22"):
        shared_feature_ratio(at_10, at_22)
    assert shared_feature_ratio(at_10, at_22.W_dec).d_sae_b == 32  # a bare matrix has no hook to compare
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        shared_feature_ratio(_rand(8, 16, 0), _rand(8, 16, 1), threshold=1.5)
    with pytest.raises(ValueError, match="2-D"):
        shared_feature_ratio(torch.ones(16), _rand(8, 16, 1))
    bad = _rand(8, 16, 0)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        shared_feature_ratio(bad, _rand(8, 16, 1))
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        shared_feature_ratio(tmp_path, _rand(8, 16, 1))
    with pytest.raises(TypeError, match="SAELens SAE"):
        shared_feature_ratio(42, _rand(8, 16, 1))


def test_zero_rows_match_nothing():
    a = _rand(10, 16, 0)
    a[0] = 0.0
    res = shared_feature_ratio(a, a.clone())
    assert res.n_shared == 9 and 0 in res.orphans_a


def test_result_and_table_save(tmp_path):
    a = _rand(60, 64, 0)
    res = shared_feature_ratio(a, a + 0.01 * _rand(60, 64, 1), name="pair")
    res.save(tmp_path, chance=chance_sfr(60, 64))
    saved = json.loads((tmp_path / "pair.json").read_text())
    assert saved["ratio"] == 1.0 and len(saved["pairs"]) == 60
    assert (tmp_path / "pair.png").stat().st_size > 0

    b = _rand(60, 64, 2)
    half = torch.cat([a[:30], _rand(30, 64, 3)])
    table = sfr_table({"same": [a, a.clone(), a[torch.randperm(60)]], "half": [a, half]}, chance=True)
    assert isinstance(table, SFRTable)
    rows = {r["dataset"]: r for r in table.rows}
    assert rows["same"]["sfr"] == 1.0 and len(rows["same"]["sfr_pairs"]) == 3
    assert rows["half"]["sfr"] == pytest.approx(0.5)
    # three seeds: an interval over the three pairs; two seeds: one pair, no interval
    assert rows["same"]["sfr_interval"]["low"] == rows["same"]["sfr_interval"]["high"] == 1.0
    assert rows["half"]["sfr_interval"] is None and "— (one pair)" in table.to_markdown()
    noisy = sfr_table({"noisy": [a, a + 0.3 * _rand(60, 64, 4), a + 0.6 * _rand(60, 64, 5)]}, chance=False)
    ci, pairs = noisy.rows[0]["sfr_interval"], noisy.rows[0]["sfr_pairs"]
    assert ci["low"] < min(pairs) <= noisy.rows[0]["sfr"] <= max(pairs) < ci["high"] and ci["n"] == 3
    assert set(table.chance) == {"60x64"} and 0 <= table.chance["60x64"] < 0.5
    assert "| same | 1.0000" in table.to_markdown()
    table.save(tmp_path)
    assert (tmp_path / "sfr_table.png").exists()

    cross = sfr_table({("m1", "m1"): [a, a], ("m1", "m2"): [a, b]}, index=("target", "source"), chance=False)
    assert [r["source"] for r in cross.rows] == ["m1", "m2"] and cross.rows[1]["sfr"] < 0.5
    with pytest.raises(ValueError, match=r"runs\['x'\] holds 1 SAE\(s\); give a list of two or more"):
        sfr_table({"x": [a]})
    with pytest.raises(ValueError, match=r"runs\['x'\] holds one path"):
        sfr_table({"x": str(tmp_path)})
    with pytest.raises(ValueError, match="index"):
        sfr_table({("m1", "m2"): [a, a]})


def test_table3_cross_model_sfr_with_two_tiny_models(tiny_model, home):
    """Table 3 as the paper defines it: an SAE on model A's activations, trained on text sampled by model B."""
    import faithful
    from toy import SMALL

    model_b = faithful.load_model("tiny-random", device="cpu", seed=1)
    model_b.faithful_name = "tiny-random-b"
    models = {"tiny-random": tiny_model, "tiny-random-b": model_b}
    text = {name: faithful.generate_faithful_dataset(m, n_tokens=1_500, max_length=16, batch_size=16, progress=False)
            for name, m in models.items()}
    runs = {(target, source): faithful.train_saes(models[target], text[source], dataset_name=f"faithful-{source}",
                                                  seeds=(42, 49, 7), **SMALL)
            for target in models for source in models}
    table = sfr_table(runs, index=("target", "source"), chance=False, name="table3")
    assert [(r["target"], r["source"]) for r in table.rows] == list(runs)
    assert all(len(r["sfr_pairs"]) == 3 and r["sfr_interval"] for r in table.rows)
    # each SAE reads its target's activations and records its source's text
    sae = faithful.load_sae(runs[("tiny-random", "tiny-random-b")][0])
    assert sae.cfg.metadata.model_name == "tiny-random" and sae.cfg.metadata.dataset_path == "faithful-tiny-random-b"
    assert not torch.equal(tiny_model.W_E, model_b.W_E)  # two different models
