import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

import faithful
from faithful import widgets


def _sae(model, d_sae=16, k=4, seed=0):
    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k)
    cfg.metadata.hook_name = faithful.hook_name(model)
    return TopKSAE(cfg)


TEXTS = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "def f(x): return x + 1",
         "Once upon a time there was a dragon."]


def test_feature_examples_agree_with_a_direct_computation(tiny_model):
    sae = _sae(tiny_model)
    ex = widgets.feature_examples(tiny_model, sae, TEXTS, context_size=16, n_top=2, batch_size=3,
                                  progress=False)
    assert ex.values.shape == (16, 2) and ex.contexts.shape == (16, 2)
    hook = faithful.hook_name(tiny_model)
    lat = []
    for acts, mask, _ in faithful.activations.iter_activations(tiny_model, ex.tokens, hook,
                                                               attention_mask=ex.attention_mask):
        lat.append(sae.encode(acts) * mask[..., None])
    lat = torch.cat(lat)                                   # [n_ctx, pos, d_sae]
    per_ctx = lat.amax(dim=1)                              # [n_ctx, d_sae]
    want = per_ctx.T.topk(2, dim=1)
    torch.testing.assert_close(ex.values, want.values)
    n_content = faithful.content_mask(ex.tokens, faithful.special_token_ids(tiny_model),
                                      ex.attention_mask).sum()
    torch.testing.assert_close(ex.frequency, (lat > 0).sum(dim=(0, 1)).float() / n_content)


def test_feature_html_and_width_check(tiny_model):
    sae = _sae(tiny_model)
    ex = widgets.feature_examples(tiny_model, sae, TEXTS, context_size=16, progress=False)
    latent = int(ex.frequency.argmax())
    page = widgets.feature_html(tiny_model, sae, ex, latent, title="A")
    assert f"latent {latent}" in page and "fires on" in page and "<li><b>" in page
    wrong = TopKSAE(TopKSAEConfig(d_in=32, d_sae=8, k=2))
    wrong.cfg.metadata.hook_name = faithful.hook_name(tiny_model)
    with pytest.raises(ValueError, match="d_in=32 does not match the model's d_model=64"):
        widgets.feature_examples(tiny_model, wrong, TEXTS, progress=False)


def test_browser_lists_shared_and_orphans_of_a_planted_pair(tiny_model):
    a = _sae(tiny_model, d_sae=16, seed=0)
    b = _sae(tiny_model, d_sae=16, seed=1)
    with torch.no_grad():  # B = A's first 6 directions (permuted), the rest random: 6 shared
        perm = torch.randperm(6)
        b.W_dec[:6] = a.W_dec[perm]
    browser = widgets.FeatureBrowser(tiny_model, a, b, TEXTS, context_size=16, progress=False)
    assert browser.counts() == {"shared": 6, "orphan (A)": 10, "orphan (B)": 10}
    assert sorted(browser.lists["shared"]) == sorted(perm.tolist())
    page = browser.html("shared", 0)
    assert "cosine 1.000 (shared)" in page and page.count("<h4>") == 2
    assert "(orphan)" in browser.html("orphan (B)", 0)
    with pytest.raises(ValueError, match="unknown category"):
        browser.html("fake")
    with pytest.raises(IndexError, match="out of range"):
        browser.html("shared", 6)
    w = browser.widget  # builds without a front end
    assert "SFR 0.375" in w.children[0].value


def test_browser_takes_checkpoint_folders_and_refuses_bad_texts(tiny_model, tmp_path):
    a, b = _sae(tiny_model, seed=0), _sae(tiny_model, seed=1)
    a.save_model(str(tmp_path / "a"))
    b.save_model(str(tmp_path / "b"))
    by_path = widgets.FeatureBrowser(tiny_model, tmp_path / "a", str(tmp_path / "b"), TEXTS, context_size=16,
                                     progress=False)
    by_object = widgets.FeatureBrowser(tiny_model, a, b, TEXTS, context_size=16, progress=False)
    assert by_path.counts() == by_object.counts()
    assert not by_path.examples[0].values.requires_grad  # no autograd graph kept over every batch
    from_generator = widgets.feature_examples(tiny_model, a, (t for t in TEXTS), context_size=16, progress=False)
    assert torch.equal(from_generator.contexts, by_object.examples[0].contexts)
    with pytest.raises(ValueError, match="list of strings.*got one string"):
        widgets.FeatureBrowser(tiny_model, a, b, "hello world", progress=False)
    with pytest.raises(ValueError, match="texts is empty"):
        widgets.feature_examples(tiny_model, a, [], progress=False)
