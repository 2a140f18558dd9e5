"""Reconstruction faithfulness: known answers (identity, zero and mean SAEs), agreement with
SAELens's own evaluation helpers on the same tokens, packing, the matrix, and bad inputs."""
import json

import pytest
import torch

import faithful
from known_saes import identity_sae, topk_sae
from faithful import activations
from faithful.data.splits import part_of
from faithful.metrics import fidelity
from faithful.models import content_mask, special_token_ids

HOOK = "blocks.1.hook_resid_post"
TEXTS = [f"Document {i}: the {w} walked to the market and bought {i % 7 + 2} apples, then went home."
         for i, w in enumerate(["cat", "dog", "farmer", "teacher", "child", "robot", "queen", "sailor"] * 4)]


def random_sae(d, seed=0, hook=HOOK):
    torch.manual_seed(seed)
    sae = topk_sae(d, 4 * d, 8, hook)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae


def constant_sae(d, value, hook=HOOK):
    """W_dec = 0: the reconstruction is b_dec whatever the input."""
    sae = topk_sae(d, 2 * d, 4, hook)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(value)
    return sae


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return faithful.eval_contexts(tiny_model, TEXTS, n_tokens=300, context_size=32, seed=0, split=None)


@pytest.fixture(scope="module")
def content_acts(tiny_model, tokens):
    """Content-position activations at HOOK, fp32, by a plain run_with_cache."""
    _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
    return cache[HOOK][content_mask(tokens, special_token_ids(tiny_model))]


def run(model, sae, **kw):
    args = dict(n_tokens=300, context_size=32, seed=0, batch_size=4, autocast=False, progress=False, split=None)
    args.update(kw)
    return faithful.reconstruction_metrics(model, sae, TEXTS, **args)


# ----------------------------------------------------------------------------- known answers
def test_identity_topk_sae_reconstructs_exactly():
    sae = identity_sae(16)
    x = torch.randn(50, 16) * 100
    assert torch.equal(sae.decode(sae.encode(x)), x)


@pytest.mark.parametrize("autocast", [False, True])
def test_identity_sae_changes_nothing(tiny_model, autocast):
    d = tiny_model.cfg.d_model
    r = run(tiny_model, identity_sae(d), autocast=autocast)
    assert r.ce_diff == pytest.approx(0.0, abs=1e-6)
    assert r.explained_variance == pytest.approx(1.0, abs=1e-9)
    assert r.l2 == pytest.approx(0.0, abs=1e-9)
    assert r.l0 == pytest.approx(d, abs=0.01)  # every dimension is one active latent
    assert r.ce_clean > 1.0 and r.n_tokens > 250
    assert 0 < r.n_tokens - r.n_ce_tokens <= 10  # the last position of each of the 10 rows has no target


def test_mean_sae_explains_no_variance(tiny_model, content_acts):
    """x̂ = E[x] ⇒ explained variance 0 and L2 = the total variance, by definition."""
    mean = content_acts.double().mean(0)
    r = run(tiny_model, constant_sae(tiny_model.cfg.d_model, mean.float()))
    total_var = (content_acts.double() - mean).pow(2).sum(1).mean().item()
    assert r.explained_variance == pytest.approx(0.0, abs=1e-5)
    assert r.l2 == pytest.approx(total_var, rel=1e-5)
    assert r.mse_per_element == pytest.approx(total_var / tiny_model.cfg.d_model, rel=1e-5)


def test_zero_sae_matches_hand_computed_ablation(tiny_model, tokens, content_acts):
    """x̂ = 0 at content positions only: L2 = E‖x‖², CE = the hand-made zero-ablation run."""
    d = tiny_model.cfg.d_model
    r = run(tiny_model, constant_sae(d, torch.zeros(d)))
    assert r.l2 == pytest.approx(content_acts.double().pow(2).sum(1).mean().item(), rel=1e-5)
    mask = content_mask(tokens, special_token_ids(tiny_model))

    def zero(a, hook):
        return torch.where(mask[..., None], torch.zeros_like(a), a)

    with torch.no_grad():
        clean = tiny_model(tokens, return_type="loss", loss_per_token=True)
        ablated = tiny_model.run_with_hooks(tokens, fwd_hooks=[(HOOK, zero)], return_type="loss",
                                            loss_per_token=True)
    m = mask[:, :-1]
    assert r.ce_clean == pytest.approx(clean[m].mean().item(), rel=1e-5)
    assert r.ce_spliced == pytest.approx(ablated[m].mean().item(), rel=1e-5)
    assert abs(r.ce_diff) > 1e-3  # (a random model: ablation may even lower its near-uniform CE)


def test_explained_variance_without_sinks_leaves_out_only_the_outlier_tokens():
    """Two planted sinks (norm ≫ 5× the median) reconstructed exactly, the rest half-way: with
    them the variance is theirs and explained; without them it is the hand-computed 0.75."""
    torch.manual_seed(0)
    x = torch.randn(200, 16, dtype=torch.float64)
    x[[3, 150]] *= 100
    x_hat = x.clone()
    typical = torch.ones(200, dtype=torch.bool)
    typical[[3, 150]] = False
    x_hat[typical] = x[typical] * 0.5 + x[typical].mean(0) * 0.5  # halves each deviation from the mean
    acc = fidelity._Acc(16)
    acc.add_acts(x[:120].float(), x_hat[:120].float(), torch.ones(120, 4))  # two batches, one sink each
    acc.add_acts(x[120:].float(), x_hat[120:].float(), torch.ones(80, 4))
    r = acc.result(16, hook=HOOK, context_size=32, seed=0)
    xt, et = x[typical], (x - x_hat)[typical]
    by_hand = 1 - et.pow(2).sum(1).mean() / (xt - xt.mean(0)).pow(2).sum(1).mean()
    assert r.n_sinks == 2 and r.n_tokens == 200
    assert r.explained_variance_without_sinks == pytest.approx(by_hand.item(), rel=1e-6)
    assert r.explained_variance_without_sinks == pytest.approx(0.75, abs=1e-6)
    assert r.explained_variance > 0.99  # the sinks' variance dominates and is reconstructed exactly
    # the one-batch helpers that training curves use agree
    keep = activations.not_sinks(x[:120])
    assert int((~keep).sum()) == 1
    one = fidelity._Acc(16)
    one.add_acts(x[:120].float(), x_hat[:120].float(), torch.ones(120, 4))
    assert activations.explained_variance(x[:120][keep], x_hat[:120][keep]) == pytest.approx(
        one.result(16, hook=HOOK, context_size=32, seed=0).explained_variance_without_sinks, rel=1e-6)
    assert activations.explained_variance(x[:0], x_hat[:0]) != activations.explained_variance(x[:0], x_hat[:0])  # NaN


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out"])
def test_fast_restart_equals_full_spliced_pass(tiny_model, tokens, hook):
    sae = random_sae(tiny_model.cfg.d_model, hook=hook)
    kw = dict(batch_size=4, prec="fp32", progress=False, desc="t")
    fast, full = (fidelity._evaluate(tiny_model, {"s": sae}, tokens, hook, fast=mode, **kw)["s"].result(
        64, hook=hook, context_size=32, seed=0) for mode in (True, False))
    for k in ("ce_clean", "ce_spliced", "l2", "explained_variance", "l0"):
        assert getattr(fast, k) == pytest.approx(getattr(full, k), rel=1e-5, abs=1e-6), k
    assert abs(fast.ce_diff) > 1e-4  # the splice did change the output


class _TokenStore:
    """The one method of SAELens's ActivationsStore that its eval helpers call."""

    def __init__(self, tokens, batch):
        self.batches = list(tokens.split(batch))

    def get_batch_tokens(self, n):
        return self.batches.pop(0)


def test_agrees_with_sae_lens_evals(tiny_model, tokens):
    """Same packed tokens, SAELens told to ignore the special tokens: since every context starts
    with the start token (a special token), its mask equals faithful.content_mask here."""
    from sae_lens.evals import get_recons_loss, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = random_sae(tiny_model.cfg.d_model)
    ours = run(tiny_model, sae)
    ignore = special_token_ids(tiny_model)
    assert torch.equal(~torch.isin(tokens, torch.tensor(ignore)), content_mask(tokens, ignore))
    batch = 4
    metrics, _ = get_sparsity_and_variance_metrics(
        sae, tiny_model, _TokenStore(tokens, batch), ActivationScaler(), n_batches=len(tokens.split(batch)),
        compute_l2_norms=False, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=False, eval_batch_size_prompts=batch, model_kwargs={},
        ignore_tokens=ignore)
    assert ours.l2 == pytest.approx(metrics["mse"], rel=1e-4)
    assert ours.explained_variance == pytest.approx(metrics["explained_variance"], abs=1e-4)
    assert ours.l0 == pytest.approx(metrics["l0"], rel=1e-6)
    with_sae, without = [], []
    keep = ~torch.isin(tokens, torch.tensor(ignore))[:, :-1]
    for i, b in enumerate(tokens.split(batch)):
        out = get_recons_loss(sae, tiny_model, ActivationScaler(), b, compute_kl=False, compute_ce_loss=True,
                              ignore_tokens=ignore)
        m = keep[i * batch:(i + 1) * batch]
        with_sae.append(out["ce_loss_with_sae"][m])
        without.append(out["ce_loss_without_sae"][m])
    assert ours.ce_clean == pytest.approx(torch.cat(without).mean().item(), rel=1e-5)
    assert ours.ce_spliced == pytest.approx(torch.cat(with_sae).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- contexts
def test_eval_contexts_pack_with_start_token(tiny_model):
    start = faithful.start_token_id(tiny_model)
    t = faithful.eval_contexts(tiny_model, TEXTS, n_tokens=200, context_size=16, seed=3, split=None)
    assert t.shape == (14, 16)  # ceil(200 / 15) rows
    assert (t[:, 0] == start).all()
    assert (t[:, 1:] == start).sum() > 0  # documents are separated by the start token
    assert torch.equal(t, faithful.eval_contexts(tiny_model, TEXTS, n_tokens=200, context_size=16, seed=3,
                                                 split=None))
    assert not torch.equal(t, faithful.eval_contexts(tiny_model, TEXTS, n_tokens=200, context_size=16, seed=4,
                                                     split=None))


def test_eval_contexts_pack_whole_documents(tiny_model):
    long = ["word " * 500, "other " * 500]
    t = faithful.eval_contexts(tiny_model, long, n_tokens=40, context_size=11, seed=0, split=None)
    # a long document fills several rows, as training packs it
    docs = [set(tiny_model.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in long]
    seen = set(t[:, 1:].flatten().tolist())
    assert t.shape == (4, 11) and any(seen <= d for d in docs)


def test_eval_contexts_read_only_held_out_documents(tiny_model):
    texts = [f"document number {i} about {w}" for i, w in enumerate(["cats", "dogs", "ships"] * 40)]
    held_out = [t for t in texts if part_of(t) == "eval"]
    assert 0 < len(held_out) < len(texts) // 4
    tok = tiny_model.tokenizer
    train_ids = {tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in texts if part_of(t) == "train"}
    with pytest.warns(UserWarning, match="fewer than"):
        ctx = faithful.eval_contexts(tiny_model, texts, n_tokens=10_000, context_size=8, seed=0)
    stream = ctx[:, 1:].flatten().tolist()
    n_held = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in held_out)
    # the whole held-out part (and its separators), nothing more
    assert n_held <= len(stream) + 7 and len(stream) <= n_held + len(held_out)
    assert not any(ids in {tuple(stream[i:i + len(ids)]) for i in range(len(stream))} for ids in train_ids)


def test_eval_contexts_token_ids_column(tiny_model):
    import datasets

    start = faithful.start_token_id(tiny_model)
    ids = [[start] + tiny_model.tokenizer(s, add_special_tokens=False)["input_ids"] for s in TEXTS]
    a = faithful.eval_contexts(tiny_model, datasets.Dataset.from_dict({"token_ids": ids, "text": TEXTS}),
                               n_tokens=100, context_size=16, seed=1, split=None)
    b = faithful.eval_contexts(tiny_model, datasets.Dataset.from_dict({"text": TEXTS}),
                               n_tokens=100, context_size=16, seed=1, split=None)
    assert torch.equal(a, b)


def test_small_dataset_warns_and_uses_what_there_is(tiny_model):
    with pytest.warns(UserWarning, match="fewer than"):
        t = faithful.eval_contexts(tiny_model, TEXTS[:2], n_tokens=10_000, context_size=8, seed=0, split=None)
    assert len(t) >= 1


# ----------------------------------------------------------------------------- matrix
def test_matrix_cells_heatmaps_and_reuse(tiny_model, tmp_path, monkeypatch):
    d = tiny_model.cfg.d_model
    saes = {"identity": identity_sae(d), "random": random_sae(d)}
    sets = {"first": TEXTS[:16], "second": TEXTS[16:]}
    kw = dict(n_tokens=120, context_size=16, seed=0, batch_size=4, autocast=False, progress=False, split=None)
    m = faithful.fidelity_matrix(tiny_model, saes, sets, out_dir=tmp_path, **kw)
    assert m.values("ce_diff").shape == (2, 2)
    assert m.values("explained_variance")[0].tolist() == pytest.approx([1.0, 1.0])
    single = faithful.reconstruction_metrics(tiny_model, saes["random"], sets["second"], **kw)
    assert m.cells["random"]["second"].ce_diff == pytest.approx(single.ce_diff, rel=1e-6)
    assert m.cells["random"]["second"].l2 == pytest.approx(single.l2, rel=1e-6)
    # the clean CE is the same for every SAE of a column
    assert m.cells["identity"]["first"].ce_clean == m.cells["random"]["first"].ce_clean
    assert (tmp_path / "fidelity_matrix.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "fidelity_matrix.json").read_text())
    assert faithful.FidelityMatrix.from_dict(saved).values("l2").tolist() == m.values("l2").tolist()
    # asked again: every column comes from disk, no model pass
    monkeypatch.setattr(fidelity, "_evaluate", lambda *a, **k: pytest.fail("recomputed a cached column"))
    again = faithful.fidelity_matrix(tiny_model, saes, sets, out_dir=tmp_path, **kw)
    assert again.values("l2").tolist() == m.values("l2").tolist()
    # the same label on other data is evaluated again, not read from the old column
    monkeypatch.undo()
    swapped = faithful.fidelity_matrix(tiny_model, saes, {"first": sets["second"], "second": sets["first"]},
                                       out_dir=tmp_path, **kw)
    assert swapped.values("ce_clean").tolist() == m.values("ce_clean")[:, ::-1].tolist()
    assert swapped.cells["random"]["first"].l2 == pytest.approx(single.l2, rel=1e-6)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs(tiny_model):
    d = tiny_model.cfg.d_model
    with pytest.raises(ValueError, match="d_in=32"):
        run(tiny_model, random_sae(32))
    with pytest.raises(ValueError, match="not a hook"):
        run(tiny_model, random_sae(d, hook="blocks.7.hook_resid_post"))
    no_hook = random_sae(d)
    no_hook.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match="has no hook"):
        run(tiny_model, no_hook)
    scaled = topk_sae(d, 2 * d, 4, normalize_activations="expected_average_only_in")
    with pytest.raises(ValueError, match="fold"):
        run(tiny_model, scaled)
    with pytest.raises(ValueError, match="n_tokens"):
        run(tiny_model, identity_sae(d), n_tokens=0)
    with pytest.raises(ValueError, match="context_size"):
        run(tiny_model, identity_sae(d), context_size=10_000)
    import datasets

    with pytest.raises(ValueError, match="has no 'text' column"):
        faithful.reconstruction_metrics(tiny_model, identity_sae(d), datasets.Dataset.from_dict({"sentence": TEXTS}),
                                        n_tokens=10, context_size=8, progress=False)
    with pytest.raises(ValueError, match="fewer than one context"):
        faithful.reconstruction_metrics(tiny_model, identity_sae(d), ["hi"], n_tokens=10, context_size=32,
                                        progress=False, split=None)
    with pytest.raises(ValueError, match="eval split of this dataset is empty"):
        faithful.reconstruction_metrics(tiny_model, identity_sae(d), [t for t in TEXTS if part_of(t) == "train"],
                                        n_tokens=10, context_size=8, progress=False)
    with pytest.raises(TypeError, match="SAELens SAE"):
        run(tiny_model, object())


def test_budget_is_the_arguments_not_the_profile(tiny_model, monkeypatch):
    """Under any FAITHFUL_PROFILE, a call measures the tokens its arguments say."""
    texts = [" ".join(TEXTS)] * 40

    def run():
        return faithful.reconstruction_metrics(tiny_model, identity_sae(tiny_model.cfg.d_model), texts,
                                               n_tokens=200, context_size=16, progress=False, split=None)
    results = []
    for name in ("smoke", "paper"):
        monkeypatch.setenv("FAITHFUL_PROFILE", name)
        results.append(run())
    # ceil(200 / 15) rows of 15 tokens after the start token
    assert results[0] == results[1] and results[0].context_size == 16 and 150 < results[0].n_tokens <= 210


def test_matrix_rows_of_several_seeds(tiny_model, tmp_path):
    d = tiny_model.cfg.d_model
    saes = {"identity": [identity_sae(d), identity_sae(d)], "random": [random_sae(d), random_sae(d, seed=1)]}
    sets = {"first": TEXTS[:16], "second": TEXTS[16:]}
    kw = dict(n_tokens=120, context_size=16, seed=0, batch_size=4, autocast=False, progress=False, split=None)
    m = faithful.fidelity_matrix(tiny_model, saes, sets, out_dir=tmp_path, **kw)
    ce = m.seed_values("ce_diff")
    assert ce.shape == (2, 2, 2) and abs(ce[0]).max() < 1e-5 and (ce[1] != 0).all()
    assert ce[1, :, 0].tolist() == m.values("ce_diff")[1].tolist()  # cells: each row's first SAE
    single = faithful.reconstruction_metrics(tiny_model, saes["random"][1], sets["first"], **kw)
    assert ce[1, 0, 1] == pytest.approx(single.ce_diff, rel=1e-6)
    est = m.row_estimate("random", "ce_diff")
    assert est.n == 2 and est.low <= ce[1].mean(0).min() <= ce[1].mean(0).max() <= est.high
    assert m.row_estimate("random", "ce_diff", "std").mean == pytest.approx(ce[1].std(0).mean())
    back = faithful.FidelityMatrix.from_dict(json.loads((tmp_path / "fidelity_matrix.json").read_text()))
    assert back.seed_values("ce_diff").tolist() == ce.tolist()
    with pytest.raises(ValueError, match="over_columns"):
        m.row_estimate("random", "ce_diff", "max")
