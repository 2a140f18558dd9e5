"""Throughput of Faithful generation against a plain fp32 Hugging Face ``generate`` loop.

    python benchmarks/generation.py                       # batch 64, 128 tokens per document
    OMP_NUM_THREADS=1 python benchmarks/generation.py --batch-size 64 --max-length 64

One run prints: the precision the policy picks here (``faithful.precision.choose``), the measured
product ceiling of each precision (a 2048² product; a 256² bf16 one on a CPU without bf16
instructions, where it is emulated), tokens/s of ``generate_faithful_dataset`` and of
``model.generate`` and their ratio, and ours as a fraction of the ceiling of the precision it ran
in (FLOP per token: 2 per weight of every matrix product, the unembedding included). Then where
the time of one shard goes: forward steps, sampling, KV-cache row drops, the rest, plus torch's
op profile (``--no-profile`` skips it).

Both sample ``--batch-size`` documents of at most ``--max-length`` tokens from the start token
at temperature 1 and top-p 1, in the same process, one after the other; tokens/s counts generated
tokens only (no start, stop or padding token).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch


def ceiling_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of the best of three ``n``² products in ``dtype`` on the CPU, after one untimed."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def flop_per_token(hf_model) -> int:
    """2 FLOP per weight of every ``nn.Linear`` a token goes through, the unembedding included
    (attention's products over the context, which grow with it, are left out)."""
    return 2 * sum(m.weight.numel() for m in hf_model.modules() if isinstance(m, torch.nn.Linear))


def plain_hf_generate(hf, batch: int, length: int, start: int, stops: list[int]) -> tuple[int, float]:
    """The baseline: ``model.generate`` in fp32, sampling at temperature 1, top-p 1."""
    ids = torch.full((batch, 1), start, dtype=torch.long)
    kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=stops,
                  pad_token_id=stops[0])
    torch.manual_seed(0)
    with torch.inference_mode():
        hf.generate(input_ids=ids[:2], max_new_tokens=4, **kwargs)  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=length, **kwargs)
        elapsed = time.perf_counter() - t0
    return int((~torch.isin(out[:, 1:], torch.tensor(stops))).sum()), elapsed


def ours(model, batch: int, length: int, backend: str, shards: int, dtype) -> tuple[int, float, float]:
    """``generate_faithful_dataset`` end to end, less the time it spends loading the model."""
    from faithful.data import generate

    setup = []
    make = generate._make_sampler

    def timed_make(*args):
        t = time.perf_counter()
        sampler = make(*args)
        setup.append(time.perf_counter() - t)
        return sampler

    common = dict(backend=backend, dtype=dtype, progress=False)
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(generate, "_make_sampler", timed_make):
        generate.generate_faithful_dataset(model, 1, out_dir=Path(tmp) / "warm", max_length=4,
                                           batch_size=2, **common)  # warm-up
        t0 = time.perf_counter()
        path = generate.generate_faithful_dataset(model, batch * length * shards, out_dir=Path(tmp) / "run",
                                                  max_length=length, batch_size=batch, max_shards=shards,
                                                  **common)
        elapsed = time.perf_counter() - t0 - setup[-1]
        tokens = generate.read_meta(path)["tokens"]
    return tokens, elapsed, setup[-1]


def breakdown(model, batch: int, length: int, backend: str, dtype, base_rate: float) -> None:
    """Where one shard's time goes (wall-clock per part) and torch's op profile, and the most any
    loop could gain over the baseline (``base_rate`` tokens/s) while doing the same matrix products."""
    from faithful.data import generate, sampling

    settings = generate._settings(model, batch * length, "bos", 1.0, 1.0, length, batch, 0,
                                  backend, dtype)
    sampler = generate._make_sampler(model, settings)
    sampler(0)  # warm-up
    times = {"forward (step)": 0.0, "sampling": 0.0, "cache row drops": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[key] += time.perf_counter() - t
        return wrapper

    stepper_cls = sampling.HFStepper if settings["backend"] == "hf" else sampling.HookedStepper
    with mock.patch.object(stepper_cls, "step", timed(stepper_cls.step, "forward (step)")), \
            mock.patch.object(stepper_cls, "keep", timed(stepper_cls.keep, "cache row drops")), \
            mock.patch.object(sampling, "sample_next", timed(sampling.sample_next, "sampling")), \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        rows = sampler(1)
        total = time.perf_counter() - t0
    print(f"\n-- one shard, backend {settings['backend']} {settings['dtype']}: {sum(map(len, rows))} tokens "
          f"in {total:.2f} s (profiler on) --")
    times["other (python)"] = total - sum(times.values())
    for key, t in times.items():
        print(f"  {key:18s} {t:7.2f} s  {100 * t / total:5.1f} %")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm")) / 1e6
    print(f"matrix products: {products:.2f} s of {total:.2f} s ({100 * products / total:.0f} %); a loop doing "
          f"only these products would be {sum(map(len, rows)) / products / base_rate:.2f}x the plain loop (its bound here)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--shards", type=int, default=1, help="batches timed for our generator")
    ap.add_argument("--backends", nargs="+", default=["hf"], choices=["hf", "hooked"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "auto", "bf16"],
                    help="ours runs in this (auto: the policy's choice); the baseline is always fp32")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()

    import faithful
    from faithful import precision
    from faithful.data import sampling
    from transformers import AutoModelForCausalLM

    chosen = precision.choose("cpu")
    ran = chosen if args.precision == "auto" else args.precision
    flags = precision.cpu_bf16_flags()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, bf16 instructions: {' '.join(flags) or 'none'}")
    ceilings = {"fp32": ceiling_gflops(torch.float32)}
    n_bf16 = 2048 if flags else 256  # emulated without bf16 instructions: ~400x slower
    ceilings["bf16"] = ceiling_gflops(torch.bfloat16, n_bf16)
    print(f"precision policy picks {chosen}; product ceilings: fp32 {ceilings['fp32']:.0f} GFLOP/s (2048²), "
          f"bf16 {ceilings['bf16']:.3g} GFLOP/s ({n_bf16}²)")

    model = faithful.load_model(args.model, device="cpu")
    B, L = args.batch_size, args.max_length
    hf = AutoModelForCausalLM.from_pretrained(sampling.hf_source(model), dtype=torch.float32).eval()
    gflop = flop_per_token(hf) / 1e9
    n, t_base = plain_hf_generate(hf, B, L, faithful.start_token_id(model), faithful.stop_token_ids(model))
    del hf
    base = n / t_base
    print(f"batch {B}, at most {L} tokens per document; {gflop:.3f} GFLOP per token")
    print(f"plain HF generate fp32       : {n:6d} tokens in {t_base:7.2f} s = {base:7.1f} tok/s")
    for backend in args.backends:
        n, t, setup = ours(model, B, L, backend, args.shards, precision.dtype(ran))
        print(f"generate_faithful_dataset {backend:6s}: {n:6d} tokens in {t:7.2f} s = {n / t:7.1f} tok/s "
              f"= {n / t / base:.2f}x the plain loop, {100 * n / t * gflop / ceilings[ran]:.0f} % of the "
              f"{ran} ceiling (model loading {setup:.1f} s, not counted)")
    if not args.no_profile:
        breakdown(model, B, L, args.backends[0], precision.dtype(ran), base)


if __name__ == "__main__":
    main()
