"""The language model's forward pass to a residual-stream hook, with fused attention.

TransformerLens computes attention as hookable steps: scores ``q kᵀ / scale``, a causal mask
by ``torch.where``, softmax, a NaN check, then ``pattern @ v``. Every one of them writes a
``[batch, heads, pos, pos]`` tensor, and on this CPU they cost more than the attention's
matmuls (≈ 9 ms per SmolLM2 layer at 32 × 128 tokens, compiled). Passes that only want the
residual stream at one layer need none of those hooks, so :func:`residual_forward` runs the
model through a *view* of it whose blocks call ``torch.nn.functional.scaled_dot_product_attention``
instead (≈ 3.9 ms per layer, and no pattern tensor). Everything else is TransformerLens's own
code: the view shares the model's modules and weights, its blocks run
``TransformerBlock.forward``, and its attention reuses the module's own Q/K/V projection,
QK-norm and rotary embedding. In fp32 the result equals ``run_with_cache`` to ≈ 1e-6
(``tests/unit/test_lm_forward.py``); under bf16 autocast SDPA is, if anything, closer to fp32.

Attention that is not plain causal softmax attention (ALiBi, local windows, soft-capped
scores, attention sinks, OLMo's clamps and norms, log-n scaling, split Q/K/V inputs, 4-bit
weights …) keeps TransformerLens's implementation, block by block (:func:`sdpa_unsupported`
says why); the result is the same either way, only the speed differs.

:func:`keep_freed_memory` is the other half of the CPU fast path: glibc returns freed
activation buffers to the kernel and takes them back on the next batch as fresh, zeroed
pages (≈ 150k page faults per 4,096-token batch of SmolLM2); it is called by
:func:`faithful.activations.iter_activations`.
"""
from __future__ import annotations

import copy
import ctypes
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

_SPLIT_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def sdpa_unsupported(attn) -> str | None:
    """Why ``attn`` (a TransformerLens attention module) cannot run as SDPA, or None if it can."""
    from transformer_lens.components import Attention, GroupedQueryAttention

    cfg = attn.cfg
    checks = [
        (type(attn) in (Attention, GroupedQueryAttention), f"{type(attn).__name__} attention"),
        ((attn._attention_dir_override or cfg.attention_dir) == "causal", "bidirectional attention"),
        (cfg.positional_embedding_type in ("standard", "rotary"),
         f"{cfg.positional_embedding_type} position embeddings"),
        (getattr(attn, "attn_type", "global") == "global", "local (windowed) attention"),
        (not (cfg.attn_scores_soft_cap or 0) > 0, "soft-capped attention scores"),
        (not cfg.use_attention_sinks, "attention sinks"),
        (not cfg.use_logn_attn, "log-n query scaling"),
        (cfg.clip_qkv is None, "clamped Q/K/V"),
        (cfg.original_architecture not in _SPLIT_ARCHITECTURES, "OLMo's QK-norm"),
        (not (cfg.use_split_qkv_input or cfg.use_attn_in), "split Q/K/V inputs"),
        (not cfg.use_attn_result, "per-head attention results"),
        (not cfg.load_in_4bit, "4-bit weights"),
    ]
    return next((why for ok, why in checks if not ok), None)


class SdpaAttention(nn.Module):
    """``attn``'s forward pass without hooks on scores or pattern, through SDPA (no cache, no mask)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                attention_mask=None, **_):
        if past_kv_cache_entry is not None or attention_mask is not None:
            raise ValueError("the SDPA view runs whole unpadded contexts only (no cache, no attention mask)")
        a = self.attn
        # The block normalises the same residual three times (no split inputs, no shortformer
        # embedding here): reading one copy lets the compiler drop the other two.
        x = query_input
        q, k, v = a.calculate_qkv_matrices(x, x, x)  # [b, pos, heads, d_head]
        if a.cfg.positional_embedding_type == "rotary":
            q, k = a.apply_rotary(q, 0, None), a.apply_rotary(k, 0, None)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if k.shape[1] != q.shape[1]:  # grouped-query attention: head h reads K/V head h // r, as in TL
            r = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / float(a.attn_scale))
        z = z.transpose(1, 2).flatten(2)  # [b, pos, heads · d_head], TL's order
        w = a.W_O.flatten(0, 1).T  # [d_model, heads · d_head]
        return F.linear(z.to(w.dtype), w, a.b_O)


def sdpa_view(model):
    """A shallow copy of ``model`` whose supported attention modules run through SDPA.

    Shares every parameter and module with ``model`` (nothing is copied but the containers),
    so it follows in-place changes to the weights, not modules swapped in later (folding
    LayerNorm, splicing an SAE): build a new view after those. Cheap (≈ 1 ms). Hooks on
    attention scores, patterns and ``hook_z`` do not fire in it.
    """
    view = copy.copy(model)
    view.__dict__["_modules"] = dict(model._modules)
    blocks = []
    for blk in model.blocks:
        b = copy.copy(blk)
        b.__dict__["_modules"] = dict(blk._modules)
        if sdpa_unsupported(blk.attn) is None:
            b._modules["attn"] = SdpaAttention(blk.attn)
        blocks.append(b)
    view._modules["blocks"] = nn.ModuleList(blocks)
    return view


def residual_forward(view, tokens: torch.Tensor, stop: int) -> torch.Tensor:
    """The residual stream entering block ``stop`` (``blocks.{stop}.hook_resid_pre``), ``[b, pos, d_model]``.

    ``view``: :func:`sdpa_view` of the model. ``tokens`` are whole contexts without padding:
    the embedding is given an all-ones mask, so a tokenizer that pads on the left does not
    make TransformerLens guess padding from the token ids.
    """
    resid, _, shortformer, _ = view.input_to_embed(tokens, attention_mask=torch.ones_like(tokens))
    return view(resid, start_at_layer=0, stop_at_layer=stop, shortformer_pos_embed=shortformer)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the kernel (once per process).

    Sets mmap threshold 32 MiB (glibc's own upper bound), trim threshold 1 GiB and top pad
    256 MiB: buffers up to 32 MiB come from the heap, and up to 1 GiB freed at its top stays
    there. The process's resident memory then stays near its peak. Measured on SmolLM2 to
    layer 22, 4,096 tokens per batch, compiled: page faults 154k → 0.5k per batch, ≈ 1.35×
    tokens/s (``benchmarks/training.py`` prints the LM's speed). Returns whether it applied:
    not on other C libraries, nor with ``FAITHFUL_MALLOC_TUNING=0``.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if (os.environ.get("FAITHFUL_MALLOC_TUNING", "1") != "0" and platform.system() == "Linux"
                and platform.libc_ver()[0] == "glibc"):
            libc = ctypes.CDLL("libc.so.6")
            _malloc_tuned = all(libc.mallopt(opt, value) == 1 for opt, value in (
                (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20)))
    return _malloc_tuned
