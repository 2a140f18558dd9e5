"""SAE training throughput, measured in one run (prints figures and ratios; asserts nothing).

1. The machine: CPU bf16 instruction sets, torch threads, load average, the precision
   :func:`faithful.precision.choose` picks, and both precisions' product ceilings (GFLOP/s of a
   2048² product, median and best; 8192² on a GPU; 256² for a bf16 a CPU emulates).
2. Language-model tokens/s to the profile's hook (``iter_activations``, ``LM_BATCH`` contexts per
   batch, in the chosen precision) as a share of that precision's ceiling: FLOP/token (2 × the
   matmul parameters of blocks 0..layer + causal attention) over the product's rate, timed before
   and after the LM and pooled; median against median, best against best. Target: ≥ 60 %.
3. One SAE optimiser step on real activations: SAELens's ``SAETrainer`` against ours
   (:class:`faithful.sae.topk_step.TopKTrainer`) at 0, 5 %, 50 % and 75 % dead latents (AuxK).
4. Two seeds trained together (one LM pass per batch) against one seed, in alternating rounds:
   wall, LM and SAE-step seconds, and the median of the rounds' ratios. Target: ≤ 1.15×.

    FAITHFUL_DATA_DIR=... python benchmarks/training.py [--tokens N] [--rounds 3] [--profile cpu]
        [--model smollm2-135m] [--corpus wikipedia_en_sample] [--device cuda]

``--rounds 0`` skips part 4. On a GPU every timing synchronises the device first. Timings taken
while other processes compete are not comparable: the load average is printed first.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import faithful
from faithful import precision, storage
from faithful.sae import train
from faithful.activations import collect_activations, iter_activations
from faithful.sae.topk_step import TopKTrainer
from faithful.sae.stream import LM_BATCH, pack_contexts

DEVICE = torch.device("cpu")
"""Where everything runs (``--device``)."""
_MATMUL_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")


def sync() -> float:
    """``time.perf_counter()`` once the device has finished what was queued (CUDA is asynchronous)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def matmul_seconds(a: torch.Tensor, b: torch.Tensor, reps: int = 5, trials: int = 7) -> list[float]:
    """Seconds per ``a @ b`` in each of ``trials`` timings of ``reps`` products, after one warm-up."""
    a, b = a.to(DEVICE), b.to(DEVICE)
    a @ b
    times = []
    for _ in range(trials):
        t = sync()
        for _ in range(reps):
            a @ b
        times.append((sync() - t) / reps)
    return times


def product_gflops(prec: str) -> tuple[int, list[float]]:
    """``n`` and GFLOP/s of several timings of an ``n``² product in ``prec``: 8192² on a GPU, 2048² on a
    CPU, 256² for a bf16 a CPU without bf16 instructions emulates (each product slow enough to time alone)."""
    emulated = DEVICE.type == "cpu" and prec == "bf16" and not precision.cpu_bf16_flags()
    n, dt = 8192 if DEVICE.type == "cuda" else 256 if emulated else 2048, precision.dtype(prec)
    times = matmul_seconds(torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt),
                           reps=1 if emulated else 5, trials=5 if emulated else 7)
    return n, [2 * n ** 3 / t / 1e9 for t in times]


def shaped_matmul_tokens_per_second(model, layer: int, prec: str, n_tokens: int = 4096, trials: int = 5
                                    ) -> tuple[float, float]:
    """(median, best) tokens/s if blocks 0..layer did nothing but their weight matmuls in ``prec``,
    at the LM's shapes (``[n_tokens, d_in] @ [d_in, d_out]``; K/V at the key-value heads' width)."""
    shapes = []
    for blk in model.blocks[: layer + 1]:
        for name, p in blk.named_parameters():
            if not name.endswith(_MATMUL_WEIGHTS):  # biases, norms
                continue
            if p.dim() == 2:  # MLP: [d_in, d_out]
                shapes.append(tuple(p.shape))
            else:  # attention: W_Q/K/V [heads, d_model, d_head], W_O [heads, d_head, d_model]
                h, a, b = p.shape
                shapes.append((h * a, b) if name.endswith("W_O") else (a, h * b))
    dt, median, best = precision.dtype(prec), 0.0, 0.0
    for (d_in, d_out), count in Counter(shapes).items():
        times = matmul_seconds(torch.randn(n_tokens, d_in, dtype=dt), torch.randn(d_in, d_out, dtype=dt),
                               trials=trials)
        median += statistics.median(times) * count
        best += min(times) * count
    return n_tokens / median, n_tokens / best


def flops_per_token(model, layer: int, context_size: int) -> float:
    """2 × matmul parameters of blocks 0..layer, plus causal attention scores and mixing."""
    params = sum(p.numel() for blk in model.blocks[: layer + 1]
                 for name, p in blk.named_parameters() if name.endswith(_MATMUL_WEIGHTS))
    attn = (layer + 1) * 2 * 2 * (context_size / 2) * model.cfg.n_heads * model.cfg.d_head
    return 2 * params + attn


def lm_tokens_per_second(model, contexts, hook: str, prec: str, passes: int = 3) -> tuple[float, float]:
    """(median, best) tokens/s of ``passes`` forward passes to ``hook``, after one warm-up batch."""
    def one_pass(toks):
        for _ in iter_activations(model, toks, hook, batch_size=LM_BATCH, autocast=prec == "bf16"):
            pass
    one_pass(contexts[:LM_BATCH])
    rates = []
    for _ in range(passes):
        t = sync()
        one_pass(contexts)
        rates.append(contexts.numel() / (sync() - t))
    return statistics.median(rates), max(rates)


def sae_step_ms(cls, settings, acts, batch_size: int, n_dead: int, bf16: bool, steps: int = 10) -> float:
    """Mean wall time of one optimiser step of a fresh SAE, ``n_dead`` latents marked dead."""
    from sae_lens.config import SAETrainerConfig

    cfg = SAETrainerConfig(total_training_samples=10 ** 9, train_batch_size_samples=batch_size,
                           lr=settings.lr, lr_end=settings.lr, device=str(DEVICE), autocast=bf16,
                           dead_feature_window=10 ** 6, feature_sampling_window=10 ** 6)
    tr = cls(cfg=cfg, sae=train.make_sae(settings, 42, str(DEVICE)), data_provider=iter(()))
    tr.activation_scaler.scaling_factor = settings.d_in ** 0.5 / acts.norm(dim=-1).mean().item()
    batches = acts[: (len(acts) // batch_size) * batch_size].view(-1, batch_size, acts.shape[-1]).to(DEVICE)
    tr.step(batches[0]), tr.step(batches[-1])  # warm-up
    total = 0.0
    for i in range(steps):
        tr.n_forward_passes_since_fired[:n_dead] = 10 ** 7  # a latent that fired would revive
        t = sync()
        tr.step(batches[i % len(batches)])
        total += sync() - t
    return total / steps * 1000


def timed_training(model, dataset, seeds, n_tokens, profile, root: Path) -> dict:
    """Wall seconds of one ``train_saes`` call, with its LM and per-seed SAE-step seconds."""
    t = sync()
    paths = faithful.train_saes(model, dataset, seeds=seeds, n_tokens=n_tokens, profile=profile,
                                out_dir=root / "-".join(map(str, seeds)), dataset_name="bench", progress=False)
    wall = sync() - t
    metas = [storage.read_json(p / train.RUN_FILE) for p in paths]
    return {"wall": wall, "lm": metas[0]["lm_seconds"], "sae": [m["sae_seconds"] for m in metas]}


def seeds_ratio(model, dataset, n_tokens: int, profile, rounds: int) -> None:
    """``rounds`` rounds of one single-seed run (seed 42, then 49, …) and one two-seed run, in
    alternating order, each in a fresh folder; the median of the rounds' ratios is the figure."""
    steps = max(1, n_tokens // profile.train_batch_size)
    ones, boths = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for two in ((False, True) if r % 2 == 0 else (True, False)):
                seeds = (42, 49) if two else ((42, 49)[r % 2],)
                (boths if two else ones).append(
                    timed_training(model, dataset, seeds, n_tokens, profile, Path(tmp) / f"round{r}"))
    med = statistics.median
    wall1, lm1, sae1 = med(o["wall"] for o in ones), med(o["lm"] for o in ones), med(o["sae"][0] for o in ones)
    wall2, lm2 = med(b["wall"] for b in boths), med(b["lm"] for b in boths)
    sae2 = [med(b["sae"][i] for b in boths) for i in range(2)]
    ratios = [b["wall"] / o["wall"] for o, b in zip(ones, boths)]
    print(f"  one seed (median):  {wall1:.1f} s = LM {lm1:.1f} s + SAE steps {sae1:.1f} s "
          f"({1000 * sae1 / steps:.0f} ms/step) + other {wall1 - lm1 - sae1:.1f} s")
    print(f"  two seeds (median): {wall2:.1f} s = LM {lm2:.1f} s + SAE steps {sae2[0]:.1f} + {sae2[1]:.1f} s "
          f"+ other {wall2 - lm2 - sum(sae2):.1f} s")
    print(f"  two seeds / one seed, per round: {', '.join(f'{r:.2f}' for r in ratios)} -> median "
          f"{med(ratios):.2f}x (target <= 1.15x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=faithful.EMBEDDED)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per run (default: the profile's)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (one seed, two seeds); 0 skips them")
    ap.add_argument("--corpus", default="wikipedia_en_sample")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the LM and the SAEs run")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)

    # 1. The machine.
    prec, probe, flags = precision.choose(DEVICE), precision.product_timing(str(DEVICE)), precision.cpu_bf16_flags()
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu"
    rates = ", ".join(f"{p} {g:.0f}" for p, g in (("fp32", probe.fp32_gflops), ("bf16", probe.bf16_gflops)) if g)
    print(f"device {name}; CPU bf16 flags: {', '.join(flags) or 'none'}; torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()}")
    print(f"chosen precision {prec} ({precision.ENV}={os.environ.get(precision.ENV, 'auto')}; the policy's "
          f"probe: {probe.reason}" + (f", {rates} GFLOP/s)" if rates else ")"))
    gflops = {}
    for p in ("fp32", "bf16"):
        n, gflops[p] = product_gflops(p)
        emulated = " (emulated: no bf16 instructions, so a small product)" if p == "bf16" and n == 256 else ""
        print(f"  {p} {n}² product: {statistics.median(gflops[p]):,.0f} GFLOP/s median, "
              f"{max(gflops[p]):,.0f} best{emulated}")

    profile = faithful.get_profile(args.profile)
    args.tokens = args.tokens or profile.train_tokens
    model = faithful.load_model(args.model, device=args.device)
    preset = faithful.sae_preset(model, profile)
    hook = faithful.hook_name(model, preset.layer)
    dataset = faithful.load_corpus(args.corpus)
    contexts, _, _ = pack_contexts(model, dataset, preset.context_size, args.tokens)

    # 2. The LM against the chosen precision's ceiling, timed before (above) and after it, pooled.
    fpt = flops_per_token(model, preset.layer, preset.context_size)
    lm_tokens = LM_BATCH * preset.context_size
    shaped = [shaped_matmul_tokens_per_second(model, preset.layer, prec, lm_tokens)]
    lm_median, lm_best = lm_tokens_per_second(model, contexts[: 2 * LM_BATCH], hook, prec)
    ceiling = gflops[prec] + product_gflops(prec)[1]
    shaped.append(shaped_matmul_tokens_per_second(model, preset.layer, prec, lm_tokens))
    top_median, top_best = (g * 1e9 / fpt for g in (statistics.median(ceiling), max(ceiling)))
    sh_median, sh_best = statistics.mean(m for m, _ in shaped), max(b for _, b in shaped)
    print(f"\nLM forward to {hook} in {prec}: {fpt / 1e9:.3f} GFLOP/token; {prec} ceiling "
          f"{top_median:,.0f} tok/s median, {top_best:,.0f} best ({len(ceiling)} timings, before and after the LM)")
    print(f"  LM: {lm_median:,.0f} tok/s median = {lm_median / top_median:.0%} of the ceiling, best "
          f"{lm_best:,.0f} = {lm_best / top_best:.0%} (target >= 60%)")
    print(f"  the weight matmuls alone at their shapes ({lm_tokens:,} x d_in @ d_in x d_out): {sh_median:,.0f} "
          f"tok/s median, {sh_best:,.0f} best; the LM reaches {lm_median / sh_median:.0%} / {lm_best / sh_best:.0%} of it")

    # 3. One SAE step.
    from sae_lens.training.sae_trainer import SAETrainer
    n_ctx = -(-4 * profile.train_batch_size // (preset.context_size - 1)) + 1  # four batches' worth
    acts = collect_activations(model, contexts[:n_ctx], hook, batch_size=LM_BATCH, autocast=prec == "bf16")
    settings = train.TrainSettings(model="bench", dataset="bench", fingerprint="", hook=hook,
                                   d_in=model.cfg.d_model, d_sae=preset.d_sae, k=preset.k, lr=preset.lr,
                                   n_tokens=len(acts), context_size=preset.context_size,
                                   batch_size=profile.train_batch_size, precision=prec)
    print(f"\nOne SAE step (d_sae {preset.d_sae}, k {preset.k}, batch {profile.train_batch_size}, "
          f"autocast {prec == 'bf16'}), ms:")
    for n_dead in (0, preset.d_sae // 20, preset.d_sae // 2, 3 * preset.d_sae // 4):
        ref, ours = (sae_step_ms(cls, settings, acts, profile.train_batch_size, n_dead, prec == "bf16")
                     for cls in (SAETrainer, TopKTrainer))
        print(f"  {n_dead:>5} dead latents: SAELens {ref:6.1f}, ours {ours:6.1f} ({ref / ours:.1f}x faster)")

    # 4. Two seeds against one.
    if args.rounds > 0:
        print(f"\nSAE training, d_sae {preset.d_sae}, k {preset.k}, {args.tokens:,} tokens, "
              f"batch {profile.train_batch_size}, {prec}, {args.rounds} rounds:")
        seeds_ratio(model, dataset, args.tokens, profile, args.rounds)


if __name__ == "__main__":
    main()
