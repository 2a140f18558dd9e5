"""SAE probing: separable data is learned, pooling ignores padding and pools after the SAE,
an identity SAE matches the baseline, tasks load deterministically, activations are cached,
and bad inputs fail clearly."""
import json

import pytest
import torch

import faithful
from known_saes import identity_sae, topk_sae
from faithful.metrics import probing

HOOK = "blocks.1.hook_resid_post"
SHARED = faithful.storage.shared_data_dir()


def planted(n_texts, d=16, seed=0):
    """Per-token activations whose mean along dimension 0 is ±1 by class; token counts vary."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_texts) % 2
    counts = torch.randint(1, 9, (n_texts,), generator=g)
    acts = torch.randn(int(counts.sum()), d, generator=g)
    owner = torch.repeat_interleave(torch.arange(n_texts), counts)
    acts[:, 0] += 4.0 * (2 * labels[owner] - 1)
    return {"acts": acts, "offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
            "labels": labels}


# ----------------------------------------------------------------------------- known answers
def test_probe_on_separable_data_is_near_perfect():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 3
    centres = torch.randn(3, 20, generator=g) * 5
    x = centres[y] + torch.randn(400, 20, generator=g)
    acc, f1, average, correct = probing.fit_probe(x[:300], y[:300], x[300:], y[300:])
    assert acc > 0.98 and f1 > 0.98 and average == "macro" and sum(correct) / len(correct) == acc
    # labels independent of the features: chance level
    acc, _, average, _ = probing.fit_probe(x[:300], torch.randint(0, 2, (300,), generator=g), x[300:],
                                        torch.randint(0, 2, (100,), generator=g))
    assert 0.3 < acc < 0.7 and average == "binary"


def test_identity_sae_probes_like_the_baseline():
    data = {"train": planted(200, seed=1), "test": planted(100, seed=2), "source": "planted"}
    r = probing._probe_on(data, identity_sae(16), task="planted", hook=HOOK, seed=0, context_size=8,
                          C=1.0, max_iter=1000)
    assert r.accuracy["baseline"] > 0.97
    assert r.accuracy["reconstruction"] == r.accuracy["baseline"]
    assert r.accuracy["sae"] > 0.97 and r.n_train == 200 and r.n_test == 100


def test_mean_pool_by_hand():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    pooled = probing.mean_pool(values, torch.tensor([0, 2, 3, 5]))
    assert pooled.tolist() == [[2.0, 3.0], [10.0, 0.0], [2.5, 2.5]]
    with pytest.raises(ValueError, match="at least one token"):
        probing.mean_pool(values, torch.tensor([0, 2, 2, 5]))


def test_pooling_happens_after_the_sae():
    torch.manual_seed(0)
    sae = topk_sae(8, 32, 2, hook=HOOK)
    acts, offsets = torch.randn(10, 8), torch.tensor([0, 4, 10])
    lat, rec = probing.sae_features(sae, acts, offsets, chunk=3)  # chunks cross text boundaries
    with torch.no_grad():
        z = sae.encode(acts)
        expect_lat = torch.stack([z[:4].mean(0), z[4:].mean(0)])
        expect_rec = torch.stack([sae.decode(z[:4]).mean(0), sae.decode(z[4:]).mean(0)])
        of_mean = sae.encode(acts[:4].mean(0, keepdim=True))[0]
    assert torch.allclose(lat, expect_lat, atol=1e-5) and torch.allclose(rec, expect_rec, atol=1e-5)
    assert not torch.allclose(lat[0], of_mean, atol=1e-3)  # mean of latents ≠ latents of the mean


def test_pooling_ignores_padding_and_start_token(tiny_model):
    texts = ["a short one", "this text is quite a lot longer than the first one, with padding after the other"]
    alone, off_a, _ = probing._token_activations(tiny_model, HOOK, texts[:1], 8, 1, False, False, "t")
    both, off_b, _ = probing._token_activations(tiny_model, HOOK, texts, 40, 2, False, False, "t")
    n = len(tiny_model.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert int(off_a[1]) == n  # content tokens only: no start token, no padding
    pa = probing.mean_pool(alone.float(), off_a)[0]
    pb = probing.mean_pool(both.float(), off_b)[0]
    assert torch.allclose(pa, pb, atol=1e-3)


# ----------------------------------------------------------------------------- tasks and cache
def test_yelp_stand_in_split_is_deterministic_and_disjoint():
    with pytest.warns(UserWarning, match="fewer than"):
        tr_x, tr_y, te_x, te_y, source = faithful.load_task("yelp_polarity", n_train=900, n_test=200, seed=0)
    assert "stand-in" in source and len(tr_x) == 800 and len(te_x) == 200
    # disjoint rows: only sentences the source file repeats may appear on both sides
    assert set(tr_x) & set(te_x) <= {"I love this place.", "I won't be back.", "The food was terrible.",
                                     "I would not recommend this place."}
    again = faithful.load_task("yelp_polarity", n_train=50, n_test=20, seed=3)
    assert set(again[0]) <= set(tr_x) and set(again[2]) <= set(te_x)
    assert again == faithful.load_task("yelp_polarity", n_train=50, n_test=20, seed=3)


@pytest.mark.parametrize("task,n_classes", [("sst2", 2), ("cola", 2), ("ag_news", 4)])
def test_tasks_load_from_their_own_splits(task, n_classes):
    tr_x, tr_y, te_x, te_y, source = faithful.load_task(task, n_train=60, n_test=40, seed=0)
    assert len(tr_x) == 60 and len(te_y) == 40 and source.startswith("shared data")
    assert set(tr_y) | set(te_y) <= set(range(n_classes))


def test_probe_caches_activations(tiny_model, home, monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    sae = identity_sae(tiny_model.cfg.d_model)
    kw = dict(n_train=24, n_test=12, seed=0, context_size=16, progress=False, autocast=False)
    r = faithful.probe(tiny_model, sae, "sst2", **kw)
    files = list((home / "results" / "probe_activations").rglob("*.safetensors"))
    assert len(files) == 1
    assert r.accuracy["reconstruction"] == r.accuracy["baseline"]
    assert set(r.accuracy) == set(probing.INPUTS) and r.f1_average == "binary"
    probing._MEMORY.clear()  # from disk, no model pass
    monkeypatch.setattr(probing, "_token_activations", lambda *a, **k: pytest.fail("recomputed"))
    again = faithful.probe(tiny_model, sae, "sst2", **kw)
    assert again.accuracy == r.accuracy
    table = faithful.probe_table(tiny_model, {"a": [sae, sae]}, ["sst2"], out_dir=home / "t", **kw)
    assert table.table()["sst2"]["a"] == r.accuracy["reconstruction"]
    assert (home / "t" / "probing.png").is_file() and "| sst2 |" in table.to_markdown()
    # intervals over the test texts; an SAE paired with itself differs by exactly nothing
    ci = table.interval("sst2", "a")
    assert ci.low <= r.accuracy["reconstruction"] <= ci.high and ci.n == 12
    same = table.difference("sst2", "a", "a")
    assert same.low == same.high == 0
    saved = faithful.ProbeTable.from_dict(json.loads((home / "t" / "probing.json").read_text()))
    assert saved.interval("sst2", "a") == ci


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs(tiny_model):
    sae = identity_sae(tiny_model.cfg.d_model)
    with pytest.raises(ValueError, match="unknown probing task 'imdb'.*sst2"):
        faithful.probe(tiny_model, sae, "imdb", n_train=10, n_test=10)
    with pytest.raises(ValueError, match="not a hook"):
        faithful.probe(tiny_model, identity_sae(64, hook="blocks.9.hook_resid_post"), "sst2", n_train=10, n_test=10)
    data = {"train": planted(20), "test": planted(10), "source": "planted"}
    with pytest.raises(ValueError, match="d_in=64 but the activations"):
        probing._probe_on(data, sae, task="t", hook=HOOK, seed=0, context_size=8, C=1.0, max_iter=100)
    with pytest.raises(ValueError, match="n_train"):
        faithful.load_task("sst2", n_train=1, n_test=10)
    with pytest.raises(ValueError, match="single class"):
        probing.fit_probe(torch.randn(4, 2), torch.zeros(4), torch.randn(2, 2), torch.zeros(2))
