"""Reconstruction faithfulness and probing on the embedded SmolLM2-135M (few, small)."""
import gzip
import json

import pytest
import torch

import faithful
from known_saes import identity_sae

pytestmark = pytest.mark.integration
SHARED = faithful.storage.shared_data_dir()


def test_identity_and_zero_sae_on_smollm2(smollm2):
    hook = faithful.hook_name(smollm2)
    texts = [json.loads(l)["text"] for l, _ in zip(gzip.open(SHARED / "wikipedia_en_sample.jsonl.gz", "rt"), range(40))]
    kw = dict(n_tokens=256, context_size=64, seed=0, batch_size=8, progress=False)
    r = faithful.reconstruction_metrics(smollm2, identity_sae(smollm2.cfg.d_model, hook), texts, **kw)
    assert abs(r.ce_diff) < 1e-4 and r.explained_variance == pytest.approx(1.0)
    assert 2.0 < r.ce_clean < 5.0  # a trained model on Wikipedia text, in nats
    zero = identity_sae(smollm2.cfg.d_model, hook)
    with torch.no_grad():
        zero.W_dec.zero_()
    z = faithful.reconstruction_metrics(smollm2, zero, texts, **kw)
    # L2 of x̂ = 0 is E‖x‖² over content tokens only; with the start-token sink (norm ~2e4) it would double
    from faithful.activations import collect_activations

    tokens = faithful.eval_contexts(smollm2, texts, n_tokens=256, context_size=64, seed=0)
    content = collect_activations(smollm2, tokens, hook)
    assert z.l2 == pytest.approx(content.double().pow(2).sum(1).mean().item(), rel=1e-3)
    _, cache = smollm2.run_with_cache(tokens, names_filter=hook, stop_at_layer=23)
    assert cache[hook][:, 0].pow(2).sum().item() / len(content) > z.l2  # the sinks alone would double it
    assert z.ce_diff > 1.0


def test_sst2_probe_on_smollm2(smollm2, home, monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    hook = faithful.hook_name(smollm2)
    r = faithful.probe(smollm2, identity_sae(smollm2.cfg.d_model, hook), "sst2", n_train=120, n_test=60, seed=0,
                       context_size=48, progress=False)
    assert r.accuracy["baseline"] > 0.6
    assert r.accuracy["reconstruction"] == r.accuracy["baseline"]
