"""Where an SAE step's time goes inside a real training run, by the number of dead latents.

Trains one seed at the profile's scale (200k tokens at ``cpu``) and times, in place, each
phase of every optimiser step: the compiled kernels (:mod:`faithful.native`), AuxK
(:func:`faithful.topk_step._aux_k`), the losses and gradients as a whole
(:func:`faithful.topk_step.topk_losses`), the clip and Adam, and the step. Steps are grouped by
their dead-latent count, since AuxK's cost grows with it and three steps in four have some at
the ``cpu`` profile. Prints milliseconds per step for each group (the phases overlap: a
kernel's time is also inside ``topk_losses``). Timings on a shared machine vary by several %.

    python benchmarks/step_phases.py [--tokens N] [--profile cpu] [--corpus wikipedia_en_sample]
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time
from pathlib import Path

import faithful
from faithful import native, topk_step
from faithful.activations import iter_activations
from faithful.train_stream import pack_contexts
from training import timed_training

GROUPS = ((0, 0), (1, 49), (50, 199), (200, None))
KERNELS = ("bias_topk", "decode_rows", "sparse_outer", "topk_mask", "aux_residual")


def group_of(n_dead: int) -> str:
    for lo, hi in GROUPS:
        if n_dead >= lo and (hi is None or n_dead <= hi):
            return f"{lo}+" if hi is None else (f"{lo}" if lo == hi else f"{lo}-{hi}")
    raise AssertionError(n_dead)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=None, help="training tokens (default: the profile's)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--corpus", default="wikipedia_en_sample")
    args = ap.parse_args()
    profile = faithful.get_profile(args.profile)
    tokens = args.tokens or profile.train_tokens
    times: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    steps: collections.Counter = collections.Counter()
    current = {"group": "0"}

    def timed(owner, name: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[current["group"]][name] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    for name in KERNELS:
        timed(native, name)
    timed(topk_step, "_aux_k")
    timed(topk_step, "topk_losses")
    timed(topk_step.TopKTrainer, "_clip_and_step")
    step = topk_step.TopKTrainer.step

    def counted_step(self, batch):
        current["group"] = group_of(int(self.dead_neurons.sum()))
        steps[current["group"]] += 1
        t = time.perf_counter()
        try:
            return step(self, batch)
        finally:
            times[current["group"]]["step"] += time.perf_counter() - t
    topk_step.TopKTrainer.step = counted_step

    print(f"load average {os.getloadavg()}")
    model = faithful.load_model(faithful.EMBEDDED, device="cpu")
    dataset = faithful.load_corpus(args.corpus)
    hook = faithful.hook_name(model, faithful.sae_preset(model, profile).layer)
    if profile.compile_lm:  # compiled before the run, as the training benchmark does
        contexts, _, _ = pack_contexts(model, dataset, faithful.sae_preset(model, profile).context_size, 4096)
        for _ in iter_activations(model, contexts[:32], hook, batch_size=32, compile=True):
            pass
    with tempfile.TemporaryDirectory() as tmp:
        res = timed_training(model, dataset, (42,), tokens, profile, Path(tmp))
    print(f"{tokens:,} tokens: wall {res['wall']:.1f} s, LM {res['lm']:.1f} s, SAE steps {res['sae'][0]:.2f} s")
    for group in sorted(steps, key=lambda g: int(g.split("-")[0].rstrip("+"))):
        parts = ", ".join(f"{k} {1000 * v / steps[group]:.2f}" for k, v in times[group].items())
        print(f"  {group:>7} dead latents, {steps[group]:3d} steps (ms/step): {parts}")


if __name__ == "__main__":
    main()
