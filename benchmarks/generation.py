"""Throughput of Faithful generation against a plain fp32 Hugging Face ``generate`` loop.

    python benchmarks/generation.py                       # batch 64, 128 tokens per document
    python benchmarks/generation.py --batch-size 128 --max-length 256 --backends hf hooked

Both sample the same number of documents of at most ``--max-length`` tokens from the start
token, in the same process, one after the other; tokens/s counts generated tokens only (no
start, stop or padding token). Also printed: the fraction of the bf16 FLOP ceiling
(``--gflop-per-token`` ≈ 0.27 for SmolLM2-135M with its unembedding; ``--peak-gflops`` ≈ 790
bf16 on the 2-core development machine), and where the time of one shard goes: forward steps,
sampling, KV-cache row drops, the rest (Python, decoding, writing), plus torch's op profile.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def plain_hf_generate(source: str, batch: int, length: int, start: int, stops: list[int]) -> tuple[int, float]:
    """The baseline: ``model.generate`` in fp32, sampling at temperature 1, top-p 1."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = torch.full((batch, 1), start, dtype=torch.long)
    torch.manual_seed(0)
    with torch.inference_mode():
        hf.generate(input_ids=ids[:2], do_sample=True, max_new_tokens=4, top_k=0,
                    eos_token_id=stops, pad_token_id=stops[0])  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                          temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=length,
                          eos_token_id=stops, pad_token_id=stops[0])
        elapsed = time.perf_counter() - t0
    new = out[:, 1:]
    return int((~torch.isin(new, torch.tensor(stops))).sum()), elapsed


def ours(model, batch: int, length: int, backend: str, shards: int, dtype) -> tuple[int, float, float]:
    """``generate_faithful_dataset`` end to end (model preparation timed apart)."""
    import faithful
    from faithful import generate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate.generate_faithful_dataset(model, 1, out_dir=Path(tmp) / "warm", max_length=4,
                                           batch_size=2, backend=backend, dtype=dtype, progress=False)
        setup = time.perf_counter() - t0  # loading the bf16 copy / HF weights: paid once per call
        t0 = time.perf_counter()
        path = generate.generate_faithful_dataset(
            model, batch * length * shards, out_dir=Path(tmp) / "run", max_length=length,
            batch_size=batch, backend=backend, dtype=dtype, progress=False, max_shards=shards)
        elapsed = time.perf_counter() - t0 - setup
        tokens = faithful.generate.read_meta(path)["tokens"]
    return tokens, elapsed, setup


def breakdown(model, batch: int, length: int, backend: str, dtype) -> None:
    """Where one shard's time goes (wall-clock per part) and torch's op profile."""
    from faithful import generate, sampling

    settings = generate._settings(model, batch * length, "bos", 1.0, 1.0, length, batch, 0,
                                  backend, dtype)
    sampler = generate._make_sampler(model, settings)
    sampler(0)  # warm-up
    times = {"forward (step)": 0.0, "sampling": 0.0, "cache row drops": 0.0}
    originals = {}

    def timed(obj, attr, key):
        fn = getattr(obj, attr)
        originals[(obj, attr)] = fn

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[key] += time.perf_counter() - t
        setattr(obj, attr, wrapper)

    stepper_cls = sampling.HFStepper if settings["backend"] == "hf" else sampling.HookedStepper
    timed(stepper_cls, "step", "forward (step)")
    timed(stepper_cls, "keep", "cache row drops")
    timed(sampling, "sample_next", "sampling")
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        rows = sampler(1)
    total = time.perf_counter() - t0
    for (obj, attr), fn in originals.items():
        setattr(obj, attr, fn)
    n = sum(map(len, rows))
    print(f"\n-- one shard, backend {settings['backend']} {settings['dtype']}: {n} tokens in "
          f"{total:.2f} s (profiler on) --")
    for key, t in times.items():
        print(f"  {key:18s} {t:7.2f} s  {100 * t / total:5.1f} %")
    rest = total - sum(times.values())
    print(f"  {'other (python)':18s} {rest:7.2f} s  {100 * rest / total:5.1f} %")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--shards", type=int, default=1, help="batches timed for our generator")
    ap.add_argument("--backends", nargs="+", default=["hf", "hooked"])
    ap.add_argument("--gflop-per-token", type=float, default=0.27)
    ap.add_argument("--peak-gflops", type=float, default=790.0)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()

    import faithful
    from faithful import sampling

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, bf16 fast: {sampling.default_dtype('cpu')}")
    model = faithful.load_model(args.model, device="cpu")
    B, L = args.batch_size, args.max_length
    results = {}
    if not args.no_baseline:
        source = sampling.hf_source(model)
        n, t = plain_hf_generate(source, B, L, faithful.start_token_id(model), faithful.stop_token_ids(model))
        results["plain HF generate fp32"] = n / t
        print(f"plain HF generate fp32     : {n:6d} tokens in {t:7.2f} s = {n / t:7.1f} tok/s")
    for backend in args.backends:
        n, t, setup = ours(model, B, L, backend, args.shards, None)
        results[f"faithful {backend}"] = n / t
        frac = n / t * args.gflop_per_token / args.peak_gflops
        print(f"generate_faithful_dataset {backend:6s}: {n:6d} tokens in {t:7.2f} s = {n / t:7.1f} tok/s "
              f"({100 * frac:.1f} % of the bf16 ceiling; set-up {setup:.1f} s)")
    base = results.get("plain HF generate fp32")
    if base:
        for k, v in results.items():
            print(f"  {k:28s} {v / base:5.2f}x the plain loop")
    if not args.no_profile:
        breakdown(model, B, L, args.backends[0], None)


if __name__ == "__main__":
    main()
