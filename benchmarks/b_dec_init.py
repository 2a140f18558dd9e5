"""Decoder-bias start: the data's geometric median against zeros, measured in one run.

Trains one seed at the profile's scale twice on the same corpus, once per ``b_dec_init``
(:data:`faithful.sae.train.B_DEC_INITS`), and prints for each: dead latents over the run, the
explained variance of the last tenth of the run (each batch is scored before the step that
trains on it, so on unseen tokens), and the mean SAE step time, which grows with the number of
dead latents AuxK has to rank. Then each SAE's reconstruction faithfulness on an evaluation set
of the corpus (``faithful.reconstruction_metrics``: CE-loss difference, explained variance) and
how much of an activation's norm the median carries.

    python benchmarks/b_dec_init.py [--tokens 200000] [--profile cpu] [--corpus wikipedia_en_sample]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import faithful
from faithful import storage
from faithful.sae import train
from faithful.activations import collect_activations
from faithful.sae.stream import LM_BATCH, pack_contexts


def n_live(model, path, dataset, n_tokens: int) -> int:
    """Latents that fire at least once on the evaluation set's activations."""
    import torch

    from faithful.activations import eval_contexts

    sae = faithful.load_sae(path)
    tokens = eval_contexts(model, dataset, n_tokens=n_tokens, context_size=sae.cfg.metadata.context_size,
                           seed=0)  # the set reconstruction_metrics scores
    acts = collect_activations(model, tokens, sae.cfg.metadata.hook_name, batch_size=LM_BATCH)
    with torch.no_grad():
        return int((sae.encode(acts) > 0).any(0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=faithful.EMBEDDED)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens (default: the profile's)")
    ap.add_argument("--corpus", default="wikipedia_en_sample")
    args = ap.parse_args()

    print(f"load average {os.getloadavg()}")
    profile = faithful.get_profile(args.profile)
    model = faithful.load_model(args.model, device="cpu")
    preset = faithful.sae_preset(model, profile)
    hook = faithful.hook_name(model, preset.layer)
    dataset = faithful.load_corpus(args.corpus)
    n_tokens = args.tokens or profile.train_tokens

    contexts, _, _ = pack_contexts(model, dataset, preset.context_size, 8192)
    acts = collect_activations(model, contexts, hook, batch_size=LM_BATCH)
    acts = acts * (acts.shape[-1] ** 0.5 / acts.norm(dim=-1).mean())
    median = train.geometric_median(acts)
    print(f"{hook}, scaled activations (mean norm sqrt(d_in) = {acts.shape[-1] ** 0.5:.1f}): the geometric "
          f"median's norm is {median.norm():.1f}; tokens' distance to it {(acts - median).norm(dim=-1).mean():.1f}")

    print(f"\nOne seed, d_sae {preset.d_sae}, k {preset.k}, lr {preset.lr}, {n_tokens:,} tokens, "
          f"batch {profile.train_batch_size}:")
    with tempfile.TemporaryDirectory() as tmp:
        for init in train.B_DEC_INITS:
            (path,) = faithful.train_saes(model, dataset, seeds=(42,), n_tokens=n_tokens, profile=profile,
                                          out_dir=Path(tmp) / init, dataset_name=args.corpus,
                                          progress=False, b_dec_init=init)
            rows = train.read_curves(path)
            meta = storage.read_json(path / train.RUN_FILE)
            steps = max(1, n_tokens // profile.train_batch_size)
            dead = [r["dead_latents"] for r in rows]
            marks = [dead[int(f * (len(dead) - 1))] for f in (0.3, 0.5, 0.75, 1.0)]
            tail = [r["explained_variance"] for r in rows[-max(1, len(rows) // 10):]]
            print(f"  {init:>16}: dead latents at 30 %, 50 %, 75 %, 100 % of the run {marks} (most {max(dead)}); "
                  f"explained variance, last tenth {statistics.mean(tail):.3f}; "
                  f"SAE step {1000 * meta['sae_seconds'] / steps:.0f} ms")
            fid = faithful.reconstruction_metrics(model, path, dataset, n_tokens=profile.eval_tokens,
                                                 progress=False)
            print(f"  {'':>16}  on {fid.n_tokens:,} evaluation tokens: explained variance "
                  f"{fid.explained_variance:.3f}, CE loss +{fid.ce_diff:.3f} nats over {fid.ce_clean:.3f}, "
                  f"latents firing {n_live(model, path, dataset, profile.eval_tokens)} of {preset.d_sae}")


if __name__ == "__main__":
    main()
