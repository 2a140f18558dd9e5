"""Known answers for the Fake Feature Ratio (faithful.metrics.ffr) on the tiny random model."""
import json

import numpy as np
import pytest
import torch

from faithful.activations import collect_activations, random_token_contexts
from faithful.metrics.ffr import (FFRResult, fake_feature_ratio, ffr_table, firing_counts,
                           firing_frequencies, plot_firing_scatter)

HOOK = "blocks.1.hook_resid_post"
PLANTED = [3, 7, 11, 20]


def _sae(d_in, d_sae=32, k=4, hook=HOOK, bias=None, seed=0):
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    if hook:
        cfg.metadata.hook_name = hook
    torch.manual_seed(seed)
    sae = TopKSAE(cfg)
    if bias is not None:
        with torch.no_grad():
            sae.b_enc.copy_(bias)
    return sae


def _planted(d_in):
    """k latents with a huge encoder bias: they win the top-k at every position, nothing else fires."""
    bias = torch.zeros(32)
    bias[PLANTED] = 1e4
    return _sae(d_in, bias=bias)


def test_planted_always_on_latents_are_exactly_the_fake_ones(tiny_model):
    res = fake_feature_ratio(tiny_model, _planted(tiny_model.cfg.d_model), n_tokens=310, seq_len=32, seed=1)
    assert res.ratio == len(PLANTED) / 32
    assert res.fake_indices.tolist() == PLANTED
    assert np.all(res.sequence_frequencies[PLANTED] == 1.0) and np.all(res.token_frequencies[PLANTED] == 1.0)
    others = np.setdiff1d(np.arange(32), PLANTED)
    assert np.all(res.sequence_frequencies[others] == 0.0)
    # 310 random tokens → 10 sequences of start + 31 tokens; the start position is not counted
    assert res.n_sequences == 10 and res.n_tokens == 310 and res.seq_len == 32
    # the planted latents stay fake at every τ < 1, in both units
    assert res.ffr_at(0.999) == res.ffr_at(0.999, "token") == len(PLANTED) / 32


def test_latents_that_never_fire_give_zero(tiny_model):
    dead = _sae(tiny_model.cfg.d_model, bias=torch.full((32,), -1e4))
    res = fake_feature_ratio(tiny_model, dead, n_tokens=62, seq_len=32, unit="token", threshold=0.0)
    assert res.ratio == 0.0 and res.sequence_frequencies.max() == 0.0


def test_frequencies_agree_with_a_direct_count(tiny_model):
    sae = _sae(tiny_model.cfg.d_model, seed=3)
    tokens = random_token_contexts(tiny_model, 6, 20, seed=5)
    tok_freq = firing_frequencies(tiny_model, sae, tokens, unit="token", batch_size=4)
    seq_freq = firing_frequencies(tiny_model, sae, tokens, unit="sequence", batch_size=4)
    acts = collect_activations(tiny_model, tokens, HOOK, batch_size=4)  # content positions only
    assert acts.shape[0] == 6 * 19
    expected = (sae.encode(acts) > 0).double().mean(0).numpy()
    assert np.allclose(tok_freq, expected)
    assert np.all(seq_freq >= tok_freq) and np.isclose(tok_freq.sum(), 4.0)  # TopK: L0 = k per token


def test_seeded_and_both_units_from_one_pass(tiny_model):
    sae = _sae(tiny_model.cfg.d_model, seed=4)
    a = fake_feature_ratio(tiny_model, sae, n_tokens=200, seq_len=16, seed=7, unit="sequence")
    b = fake_feature_ratio(tiny_model, sae, n_tokens=200, seq_len=16, seed=7, unit="token")
    c = fake_feature_ratio(tiny_model, sae, n_tokens=200, seq_len=16, seed=8)
    assert np.array_equal(a.token_frequencies, b.token_frequencies)
    assert a.ratio == b.ffr_at(0.1, "sequence") and b.ratio == a.ffr_at(0.1, "token")
    assert not np.array_equal(a.token_frequencies, c.token_frequencies)


def test_threshold_is_strict_and_curve_counts_above():
    freq = np.array([0.1, 0.1 + 1e-9, 0.05, 0.5])
    res = FFRResult(ratio=0.5, threshold=0.1, unit="sequence", sequence_frequencies=freq,
                    token_frequencies=freq / 2)
    assert res.fake_indices.tolist() == [1, 3]
    assert res.ffr_at(0.1) == 0.5 and res.ffr_at(0.0999) == 0.75 and res.ffr_at(0.5) == 0.0
    thr, ffr = res.ffr_curve([0.0, 0.05, 0.1, 0.5, 1.0], unit="sequence")
    assert ffr.tolist() == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert res.ffr_at(0.04, unit="token") == 0.75 and res.ffr_at(0.05, unit="token") == 0.5


def test_table_averages_seeds_with_one_model_pass(tiny_model, tmp_path):
    d = tiny_model.cfg.d_model
    sae = _planted(d)
    sae.save_model(str(tmp_path / "planted"))
    dead = _sae(d, bias=torch.full((32,), -1e4))
    table = ffr_table(tiny_model, {"planted": [sae, tmp_path / "planted"], "mixed": [sae, dead]},
                      n_tokens=93, seq_len=32)
    rows = {r["dataset"]: r for r in table.rows}
    assert rows["planted"]["ffr"] == pytest.approx(4 / 32) and rows["planted"]["ffr_seeds"] == [4 / 32, 4 / 32]
    assert rows["mixed"]["ffr"] == pytest.approx(2 / 32) and rows["mixed"]["ffr_token"] == pytest.approx(2 / 32)
    assert "| mixed | 0.0625 |" in table.to_markdown()
    # three random-token draws per SAE (the default), an interval over the seeds
    assert rows["planted"]["ffr_draws"] == [[4 / 32] * 3] * 2 and rows["planted"]["n_draws"] == 3
    assert rows["planted"]["ffr_interval"]["low"] == rows["planted"]["ffr_interval"]["high"] == 4 / 32
    assert rows["mixed"]["ffr_interval"]["low"] < 0 < 4 / 32 < rows["mixed"]["ffr_interval"]["high"]
    assert [r.seed for r in table.results["planted"]] == [0, 0]  # the figure's curves: the first draw
    one = ffr_table(tiny_model, {"planted": [sae]}, n_tokens=93, seq_len=32, n_draws=1)
    assert one.rows[0]["ffr_interval"] is None and "— (one seed)" in one.to_markdown()
    with pytest.raises(ValueError, match="n_draws"):
        ffr_table(tiny_model, {"planted": [sae]}, n_tokens=93, n_draws=0)
    table.save(tmp_path)
    assert json.loads((tmp_path / "ffr_table.json").read_text())["rows"][0]["dataset"] == "planted"
    assert (tmp_path / "ffr_table.png").exists()
    res = table.results["planted"][0]
    res.save(tmp_path)
    saved = json.loads((tmp_path / f"{res.name}.json").read_text())
    assert saved["n_fake"] == 4 and len(saved["token_frequencies"]) == 32


def test_bad_inputs_raise_clear_errors(tiny_model):
    d = tiny_model.cfg.d_model
    with pytest.raises(ValueError, match=rf"SAE d_in {d + 8} does not match the width {d}"):
        fake_feature_ratio(tiny_model, _sae(d + 8), n_tokens=31)
    with pytest.raises(ValueError, match="no hook_name; pass hook="):
        fake_feature_ratio(tiny_model, _sae(d, hook=None), n_tokens=31)
    assert fake_feature_ratio(tiny_model, _sae(d, hook=None), n_tokens=31, hook=HOOK).n_sequences == 1
    with pytest.raises(ValueError, match="does not exist"):
        fake_feature_ratio(tiny_model, _sae(d, hook="blocks.7.hook_resid_post"), n_tokens=31)
    with pytest.raises(ValueError, match="unit must be one of"):
        fake_feature_ratio(tiny_model, _sae(d), n_tokens=31, unit="document")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fake_feature_ratio(tiny_model, _sae(d), n_tokens=31, threshold=1.0)
    with pytest.raises(ValueError, match="seq_len must be in"):
        fake_feature_ratio(tiny_model, _sae(d), n_tokens=31, seq_len=tiny_model.cfg.n_ctx + 1)
    with pytest.raises(ValueError, match="n_tokens must be positive"):
        fake_feature_ratio(tiny_model, _sae(d), n_tokens=0)
    with pytest.raises(ValueError, match="different hooks"):
        firing_counts(tiny_model, [_sae(d), _sae(d, hook="blocks.0.hook_resid_post")],
                      random_token_contexts(tiny_model, 1, 8, 0))
    only_start = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="no content token"):
        firing_frequencies(tiny_model, _sae(d), only_start)


def test_firing_scatter_marks_the_fake_latents():
    ax = plot_firing_scatter([0.0, 0.5, 0.01], [0.2, 0.0, 0.01], threshold=0.1)
    assert "1 fake" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    offsets = ax.collections[0].get_offsets()
    assert offsets.min() == pytest.approx(1e-4)  # zeros drawn at the floor
    with pytest.raises(ValueError, match="differ in length"):
        plot_firing_scatter([0.1, 0.2], [0.1])
