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


def test_compiled_forward_matches_eager_at_residual_hooks(tiny_model):
    """torch.compile path: same activations as the eager path (itself checked against
    run_with_cache in test_lm_forward), a padded last batch, clear refusals."""
    tokens = A.random_token_contexts(tiny_model, 5, 12, seed=3)
    for hook in ("blocks.1.hook_resid_post", "blocks.1.hook_resid_pre"):
        eager = torch.cat([a for a, _, _ in A.iter_activations(tiny_model, tokens, hook, batch_size=4,
                                                               autocast=False)])
        got = [(a, m) for a, m, _ in A.iter_activations(tiny_model, tokens, hook, batch_size=4,
                                                        autocast=False, compile=True)]
        assert [a.shape[0] for a, _ in got] == [4, 1]  # the last batch is padded, then cut back
        torch.testing.assert_close(torch.cat([a for a, _ in got]), eager, rtol=1e-4, atol=1e-4)
    assert A.compiled_forward(tiny_model, "blocks.1.hook_resid_post") is \
        A.compiled_forward(tiny_model, "blocks.1.hook_resid_post")  # compiled once per model and hook
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training's setting: bf16 within bf16 noise
        got = A.compiled_forward(tiny_model, "blocks.1.hook_resid_post")(tokens[:4])
    eager = torch.cat([a for a, _, _ in A.iter_activations(tiny_model, tokens[:4], "blocks.1.hook_resid_post",
                                                           autocast=False)])
    assert ((got.float() - eager).norm() / eager.norm()) < 0.05
    with pytest.raises(ValueError, match="residual-stream hooks"):
        A.compiled_forward(tiny_model, "blocks.1.hook_mlp_out")
    with pytest.raises(ValueError, match="attention_mask"):
        next(A.iter_activations(tiny_model, tokens, "blocks.1.hook_resid_post", compile=True,
                                attention_mask=torch.ones_like(tokens)))


def test_compiled_forward_does_not_keep_the_model_alive():
    import gc
    import weakref

    model = faithful.load_model("tiny-random", device="cpu", seed=1)
    A.compiled_forward(model, "blocks.0.hook_resid_post")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_compile_without_a_cxx_compiler_says_what_to_do(tiny_model):
    import torch._inductor.config as inductor

    tokens = A.random_token_contexts(tiny_model, 2, 8, seed=0)
    with inductor.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False,
                         "autotune_local_cache": False}):
        with pytest.raises(RuntimeError, match="C/C\\+\\+ compiler"):
            next(A.iter_activations(tiny_model, tokens, "blocks.0.hook_resid_post", batch_size=2,
                                    autocast=False, compile=True))
    getattr(tiny_model, A._COMPILED_ATTR).clear()  # leave no failed compilation behind for other tests
