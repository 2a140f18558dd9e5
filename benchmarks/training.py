"""SAE training throughput, measured in one run (prints ratios, not a timed test).

1. Cost of two seeds trained together (one LM pass per batch, ``train_saes(seeds=(42, 49))``)
   against two single-seed runs one after the other. Target: two seeds together ≤ 1.15× one seed.
2. Language-model forward tokens/s to the hook's layer (``stop_at_layer``, bf16 autocast) against
   the bf16 ceiling: FLOP/token of the blocks up to the hook (2 × their matmul parameters + causal
   attention) over the bf16 matmul GFLOP/s measured here, now. Target: ≥ 60 % of the ceiling.

    python benchmarks/training.py [--tokens 16384] [--model smollm2-135m] [--profile cpu]

The machine's load is printed first: timings taken while other processes compete are not comparable.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import faithful
from faithful.activations import iter_activations
from faithful.train_stream import pack_contexts


def bf16_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(model, layer: int, context_size: int) -> float:
    """2 × matmul parameters of blocks 0..layer, plus causal attention scores and mixing."""
    params = sum(p.numel() for blk in model.blocks[: layer + 1]
                 for name, p in blk.named_parameters() if p.dim() >= 2)
    attn = (layer + 1) * 2 * 2 * (context_size / 2) * model.cfg.n_heads * model.cfg.d_head
    return 2 * params + attn


def lm_tokens_per_second(model, contexts, hook: str, batch_size: int = 32) -> float:
    list(iter_activations(model, contexts[:batch_size], hook, batch_size=batch_size))  # warm-up
    t = time.perf_counter()
    for _ in iter_activations(model, contexts, hook, batch_size=batch_size):
        pass
    return contexts.numel() / (time.perf_counter() - t)


def timed_training(model, dataset, seeds, n_tokens, profile, root: Path) -> float:
    t = time.perf_counter()
    faithful.train_saes(model, dataset, seeds=seeds, n_tokens=n_tokens, profile=profile,
                        out_dir=root / "-".join(map(str, seeds)), dataset_name="bench", progress=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=faithful.EMBEDDED)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--tokens", type=int, default=16_384, help="training tokens per run")
    ap.add_argument("--corpus", default="wikipedia_en_sample")
    args = ap.parse_args()

    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    profile = faithful.get_profile(args.profile)
    model = faithful.load_model(args.model, device="cpu")
    preset = faithful.sae_preset(model, profile)
    hook = faithful.hook_name(model, preset.layer)
    dataset = faithful.load_corpus(args.corpus)
    contexts, _, _ = pack_contexts(model, dataset, preset.context_size, args.tokens)

    gflops = bf16_gflops()
    fpt = flops_per_token(model, preset.layer, preset.context_size)
    ceiling = gflops * 1e9 / fpt
    lm = lm_tokens_per_second(model, contexts, hook)
    print(f"\nLM forward to {hook}: {fpt / 1e9:.3f} GFLOP/token; bf16 matmul {gflops:.0f} GFLOP/s "
          f"-> ceiling {ceiling:,.0f} tok/s; measured {lm:,.0f} tok/s = {lm / ceiling:.0%} of the "
          f"ceiling (target >= 60%)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"\nSAE training, d_sae {preset.d_sae}, k {preset.k}, {args.tokens:,} tokens, "
              f"batch {profile.train_batch_size}:")
        one_a = timed_training(model, dataset, (42,), args.tokens, profile, root)
        one_b = timed_training(model, dataset, (49,), args.tokens, profile, root)
        both = timed_training(model, dataset, (42, 49), args.tokens, profile, root)
    one = (one_a + one_b) / 2
    print(f"  one seed: {one_a:.1f} s and {one_b:.1f} s ({args.tokens / one:,.0f} tok/s)")
    print(f"  two seeds together: {both:.1f} s = {both / one:.2f}x one seed (target <= 1.15x), "
          f"{both / (one_a + one_b):.2f}x the two single-seed runs")
    lm_share = args.tokens / lm / one
    print(f"  LM share of a one-seed run (from the LM rate above): {lm_share:.0%}; "
          f"one SAE's steps ≈ {both - one:.1f} s")


if __name__ == "__main__":
    main()
