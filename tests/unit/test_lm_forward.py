import pytest
import torch

import faithful
from faithful import activations as A
from faithful import lm_forward as L


def _model(**overrides):
    """A 3-layer random model; defaults are SmolLM2's kind (RMSNorm, rotary, SiLU)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=300, n_ctx=64,
               act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
               rotary_dim=8, seed=0, device="cpu")  # rotary on half of each head: the rest passes through
    cfg.update(overrides)
    torch.manual_seed(0)
    return HookedTransformer(HookedTransformerConfig(**cfg)).eval()


KINDS = {
    "rotary": {},
    "grouped-query": {"n_key_value_heads": 2},
    "grouped-query, ungrouped": {"n_key_value_heads": 2, "ungroup_grouped_query_attention": True},
    "grouped-query, QK-norm": {"n_key_value_heads": 2, "use_qk_norm": True},
    "gpt2-like": {"act_fn": "gelu_new", "normalization_type": "LN", "positional_embedding_type": "standard"},
    "scale by inverse layer": {"scale_attn_by_inverse_layer_idx": True},
    "no attention scale": {"use_attn_scale": False},
    "parallel attention and MLP": {"parallel_attn_mlp": True},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_residual_forward_equals_run_with_cache(kind):
    """Known answer: TransformerLens's own activations, at every residual hook, to fp32 rounding."""
    model = _model(**KINDS[kind])
    with torch.no_grad():  # non-zero biases, so that every term is checked
        for name, p in model.named_parameters():
            if "b_" in name.split(".")[-1]:  # b_Q …, and GQA's _b_K / _b_V
                p.normal_(0, 0.1)
    tokens = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(1))
    view = L.sdpa_view(model)
    assert all(isinstance(b.attn, L.SdpaAttention) for b in view.blocks)
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        for stop in range(model.cfg.n_layers + 1):
            got = L.residual_forward(view, tokens, stop)
            want = cache[f"blocks.{stop}.hook_resid_pre"] if stop < model.cfg.n_layers else \
                cache[f"blocks.{stop - 1}.hook_resid_post"]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_view_shares_the_model_and_leaves_it_alone(tiny_model):
    n_params = len(list(tiny_model.parameters()))
    view = L.sdpa_view(tiny_model)
    assert len(list(tiny_model.parameters())) == n_params and len(list(view.parameters())) == n_params
    assert view.W_E is tiny_model.W_E and view.blocks[0].mlp is tiny_model.blocks[0].mlp
    assert view.blocks[0].attn.attn is tiny_model.blocks[0].attn
    assert not isinstance(tiny_model.blocks[0].attn, L.SdpaAttention)
    with pytest.raises(ValueError, match="unpadded"):
        view.blocks[0].attn(torch.zeros(1, 4, 64), torch.zeros(1, 4, 64), torch.zeros(1, 4, 64),
                            attention_mask=torch.ones(1, 4))


def test_bf16_autocast_stays_within_bf16_noise(tiny_model):
    tokens = A.random_token_contexts(tiny_model, 4, 32, seed=0)
    with torch.no_grad():
        view = L.sdpa_view(tiny_model)
        exact = L.residual_forward(view, tokens, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = L.residual_forward(view, tokens, 2).float()
            _, cache = tiny_model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    err = lambda x: ((x - exact).norm() / exact.norm()).item()  # noqa: E731
    assert err(fast) < 0.02 and err(fast) < 2 * err(cache["blocks.1.hook_resid_post"].float())


@pytest.mark.parametrize("overrides, why, kept", [
    ({"attn_scores_soft_cap": 5.0}, "soft-capped attention scores", [0, 1, 2]),
    ({"use_local_attn": True, "attn_types": ["global", "local", "global"], "window_size": 4},
     "local (windowed) attention", [1]),
])
def test_attention_sdpa_cannot_run_keeps_transformer_lens(overrides, why, kept):
    """Blocks whose attention is not SDPA's keep TL's attention; the result is the same."""
    model = _model(**overrides)
    assert L.sdpa_unsupported(model.blocks[kept[0]].attn) == why
    assert L.sdpa_unsupported(_model().blocks[0].attn) is None
    view = L.sdpa_view(model)
    assert [i for i, b in enumerate(view.blocks) if b.attn is model.blocks[i].attn] == kept
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        torch.testing.assert_close(L.residual_forward(view, tokens, 3), cache["blocks.2.hook_resid_post"],
                                   rtol=1e-5, atol=1e-5)


def test_a_tokenizer_that_pads_on_the_left_changes_nothing(tiny_model, monkeypatch):
    """TL guesses padding from the token ids when the tokenizer pads on the left; whole contexts have none."""
    tokens = A.random_token_contexts(tiny_model, 2, 12, seed=5)
    view = L.sdpa_view(tiny_model)
    with torch.no_grad():
        right = L.residual_forward(view, tokens, 2)
        monkeypatch.setattr(tiny_model.tokenizer, "padding_side", "left")
        torch.testing.assert_close(L.residual_forward(view, tokens, 2), right)


def test_iter_activations_reads_residual_hooks_through_the_view(tiny_model, monkeypatch):
    calls = []
    real = L.residual_forward
    monkeypatch.setattr(A, "residual_forward", lambda *a: calls.append(a[2]) or real(*a))
    tokens = A.random_token_contexts(tiny_model, 3, 12, seed=4)
    A.collect_activations(tiny_model, tokens, "blocks.0.hook_resid_post", autocast=False)
    assert calls == [1]
    A.collect_activations(tiny_model, tokens, "blocks.0.hook_mlp_out", autocast=False)  # not a residual hook
    A.collect_activations(tiny_model, tokens, "blocks.0.hook_resid_post", autocast=False,
                          attention_mask=torch.ones_like(tokens))  # padded batches: run_with_cache
    assert calls == [1]


def test_keep_freed_memory_applies_once_and_can_be_turned_off(monkeypatch):
    import platform

    monkeypatch.setattr(L, "_malloc_tuned", None)
    monkeypatch.setenv("FAITHFUL_MALLOC_TUNING", "0")
    assert L.keep_freed_memory() is False
    monkeypatch.setattr(L, "_malloc_tuned", None)
    monkeypatch.delenv("FAITHFUL_MALLOC_TUNING")
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert L.keep_freed_memory() is glibc
    assert faithful.lm_forward.keep_freed_memory() is glibc  # once: the answer is kept
