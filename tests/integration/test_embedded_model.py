import pytest
import torch

import faithful

pytestmark = pytest.mark.integration


def test_logits_and_residual_match_huggingface(smollm2):
    from transformers import AutoModelForCausalLM

    from faithful.models import ensure_embedded_model

    hf = AutoModelForCausalLM.from_pretrained(str(ensure_embedded_model()), dtype=torch.float32)
    tokens = smollm2.to_tokens("The quick brown fox jumps over the lazy dog. Once upon a time")
    assert tokens[0, 0].item() == 0
    with torch.no_grad():
        ours, cache = smollm2.run_with_cache(tokens, names_filter="blocks.22.hook_resid_post")
        theirs = hf(tokens, output_hidden_states=True)
    assert (ours - theirs.logits).abs().max().item() < 1e-3
    resid = cache["blocks.22.hook_resid_post"]
    rel = (resid - theirs.hidden_states[23]).norm() / resid.norm()
    assert rel < 1e-4
    # the start-token sink the library leaves out everywhere
    norms = resid[0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].max()


def test_embedded_defaults(smollm2):
    assert faithful.model_name(smollm2) == "smollm2-135m"
    assert faithful.default_layer(smollm2) == 22
    assert faithful.hook_name(smollm2) == "blocks.22.hook_resid_post"
