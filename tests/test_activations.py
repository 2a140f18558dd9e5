import pytest
import torch

import faithful
from faithful import activations as A


def test_tokenize_texts_starts_with_start_token_and_pads(tiny_model):
    tokens, attn = A.tokenize_texts(tiny_model, ["hello world", "a much longer text than the other one"], 6)
    assert tokens.shape == (2, 6) and (tokens[:, 0] == 0).all()
    n0 = len(tiny_model.tokenizer("hello world", add_special_tokens=False)["input_ids"]) + 1
    assert attn[0].sum().item() == n0 and attn[1].sum().item() == 6
    with pytest.raises(ValueError, match="exceeds the model's context"):
        A.tokenize_texts(tiny_model, ["x"], 10_000)


def test_activations_match_run_with_cache_and_mask_position_zero(tiny_model):
    tokens, attn = A.tokenize_texts(tiny_model, ["one two three four", "five six"], 8)
    hook = faithful.hook_name(tiny_model)
    got = A.collect_activations(tiny_model, tokens, hook, attention_mask=attn, autocast=False, batch_size=1)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=hook, attention_mask=attn)
    want = cache[hook][faithful.content_mask(tokens, faithful.special_token_ids(tiny_model), attn)]
    assert got.shape == want.shape and got.shape[0] == attn.sum().item() - 2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_random_contexts_are_seeded_and_avoid_special_tokens(tiny_model):
    a = A.random_token_contexts(tiny_model, 4, 16, seed=1)
    assert torch.equal(a, A.random_token_contexts(tiny_model, 4, 16, seed=1))
    assert not torch.equal(a, A.random_token_contexts(tiny_model, 4, 16, seed=2))
    assert (a[:, 0] == 0).all()
    assert not torch.isin(a[:, 1:], torch.tensor(faithful.special_token_ids(tiny_model))).any()


def test_a_tokenizer_that_pads_on_the_left_changes_nothing(tiny_model, monkeypatch):
    """TL guesses padding from the token ids when the tokenizer pads on the left and no mask is
    given; whole contexts have none (here the start token, the pad id, recurs inside them)."""
    tokens = A.random_token_contexts(tiny_model, 2, 12, seed=5)
    tokens[:, 5] = tokens[0, 0]
    right = A.collect_activations(tiny_model, tokens, "blocks.1.hook_resid_post", autocast=False)
    monkeypatch.setattr(tiny_model.tokenizer, "padding_side", "left")
    torch.testing.assert_close(A.collect_activations(tiny_model, tokens, "blocks.1.hook_resid_post",
                                                     autocast=False), right)

