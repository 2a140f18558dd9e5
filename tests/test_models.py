import time

import pytest
import torch

import faithful
from faithful import models


def test_tiny_model_shape_and_start_token(tiny_model):
    assert tiny_model.cfg.n_layers == 2
    assert faithful.default_layer(tiny_model) == 1
    assert faithful.start_token_id(tiny_model) == 0  # <|endoftext|>, not the GGUF's <|im_start|>
    assert tiny_model.to_tokens("Hello world")[0, 0].item() == 0
    assert tiny_model.tokenizer("Hello").input_ids[0] == 0
    assert set(faithful.stop_token_ids(tiny_model)) == {0, 2}
    assert {0, 1, 2} <= set(faithful.special_token_ids(tiny_model))


def test_embedded_tokenizer_takes_its_special_tokens_from_the_gguf():
    """transformers 5.17 converted SmolLM2's EOS as <|im_start|> (seen on a GPU machine): sampling
    stopped at the wrong token. The conversion sets BOS, EOS and PAD from the GGUF's own ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models.ensure_embedded_model()))
    tok.eos_token = "<|im_start|>"  # as that version converted it
    models._gguf_special_tokens(tok, models.embedded_gguf_path())
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == 2


def test_hook_name_checks_layer(tiny_model):
    assert faithful.hook_name(tiny_model) == "blocks.1.hook_resid_post"
    assert faithful.hook_name(tiny_model, 0, "resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match=r"layer 5 is out of range .* 0\.\.1"):
        faithful.hook_name(tiny_model, 5)
    with pytest.raises(ValueError, match="out of range"):
        faithful.hook_name(tiny_model, -1)
    with pytest.raises(ValueError, match="no hook 'blocks.1.hook_bogus'; sites of a block: .*mlp_out.*resid_post"):
        faithful.hook_name(tiny_model, 1, "bogus")


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match=r"unknown model 'gtp2'.*Did you mean 'gpt2'"):
        faithful.load_model("gtp2")


def test_hub_offline_fails_fast_with_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda *a: pytest.fail("must not probe when offline"))
    t = time.time()
    with pytest.raises(faithful.HubUnavailableError, match=r"HF_HUB_OFFLINE.*Fix:.*smollm2-135m"):
        faithful.load_model("EleutherAI/pythia-14m")
    assert time.time() - t < 10


def test_hub_unreachable_message(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda *a: False)
    with pytest.raises(faithful.HubUnavailableError, match="unreachable"):
        models._check_hub("EleutherAI/pythia-14m")


def test_content_mask_leaves_out_start_special_and_padding():
    tokens = torch.tensor([[0, 5, 6, 2, 7], [0, 8, 9, 10, 2]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = faithful.content_mask(tokens, [0, 1, 2], attn)
    assert mask.tolist() == [[False, True, True, False, True], [False, True, True, False, False]]
    # position 0 is dropped even when it is an ordinary token
    assert not faithful.content_mask(torch.tensor([[5, 6]]), [])[0, 0]


def test_presets_and_profile_overrides(tiny_model):
    assert faithful.PRESETS["gpt2"] == faithful.SAEPreset(8, 12288, 48, 2e-4, 128)
    p = faithful.sae_preset(tiny_model, faithful.get_profile("smoke"))
    assert (p.layer, p.d_sae, p.k, p.context_size) == (1, 256, 8, 64)


def test_profiles(monkeypatch):
    monkeypatch.setenv("FAITHFUL_PROFILE", "cpu")
    assert faithful.get_profile().name == "cpu"
    assert faithful.get_profile("smoke", d_sae=128).d_sae == 128
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke"):
        faithful.get_profile("huge")
