"""How far bf16 autocast moves the activations and the metrics from fp32 (prints, asserts nothing).

1. Activations at the profile's hook on ``--contexts`` packed contexts of ``--corpus``: bf16
   autocast (``autocast=True``, whatever the precision policy picks here) against fp32, as the
   median / 99th percentile / largest relative distance per content token (the sinks' apart:
   tokens whose fp32 norm is over 5× the median), and the distance of the whole batch with the
   share of its squared error that the sinks carry.
2. With ``--sae`` (a run folder; default: the first finished run of the profile on ``--corpus``):
   its explained variance on the fp32 activations of part 1, with and without the sinks (they
   hold most of the variance about the mean, so they decide the metric), then
   ``reconstruction_metrics`` on ``--tokens`` tokens of the corpus in bf16 and in fp32.

    python benchmarks/precision.py [--corpus wikipedia_en_sample] [--contexts 32] [--tokens 8000] [--sae PATH]
"""
from __future__ import annotations

import argparse
import time

import torch

import faithful
from faithful.activations import iter_activations
from faithful.metrics.fidelity import reconstruction_metrics
from faithful.sae.stream import pack_contexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=faithful.EMBEDDED)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--corpus", default="wikipedia_en_sample")
    ap.add_argument("--contexts", type=int, default=32, help="contexts for the activation distances")
    ap.add_argument("--tokens", type=int, default=8000, help="evaluation tokens for the metrics")
    ap.add_argument("--sae", default=None, help="run folder (default: the profile's run on --corpus)")
    args = ap.parse_args()

    profile = faithful.get_profile(args.profile)
    model = faithful.load_model(args.model, device="cpu")
    preset = faithful.sae_preset(model, profile)
    hook = faithful.hook_name(model, preset.layer)
    dataset = faithful.load_corpus(args.corpus)
    contexts, _, _ = pack_contexts(model, dataset, preset.context_size, args.contexts * preset.context_size)
    contexts = contexts[: args.contexts]

    def acts(**kw):  # one batch: activations and content mask
        return next(iter_activations(model, contexts, hook, batch_size=len(contexts), **kw))[:2]
    fp32, mask = acts(autocast=False)
    ref = fp32[mask]
    norms = ref.norm(dim=-1)
    sinks = norms > 5 * norms.median()
    print(f"{hook}, {int(mask.sum()):,} content tokens of {args.corpus}, {int(sinks.sum())} with a norm over "
          f"5x the median (they hold {float((norms[sinks] ** 2).sum() / (norms ** 2).sum()):.0%} of the squared norm)")
    err = acts(autocast=True)[0][mask] - ref
    per_token = err.norm(dim=-1) / norms
    q = torch.quantile(per_token, torch.tensor([0.5, 0.99])).tolist()
    sq = err.norm(dim=-1) ** 2
    print(f"  bf16 autocast vs fp32, per token: median {q[0]:.2%}, 99th percentile {q[1]:.2%}, largest "
          f"{float(per_token[~sinks].max()):.1%} (sinks: {float(per_token[sinks].max()):.1%}); whole "
          f"batch {float(err.norm() / ref.norm()):.2%}, {float(sq[sinks].sum() / sq.sum()):.0%} of its "
          "squared error on the sinks")

    path = args.sae
    if path is None:
        runs = faithful.list_runs(model, dataset_name=args.corpus, profile=profile)
        if not runs:
            print(f"\nno finished {profile.name} run on {args.corpus}: train one (notebook 03) or pass --sae")
            return
        path = runs[0]["path"]
    sae = faithful.load_sae(path)
    with torch.no_grad():
        sq_err = (sae.decode(sae.encode(ref)) - ref).pow(2).sum(-1)
    sq_dev = (ref - ref.mean(0)).pow(2).sum(-1)

    def ev(sel):  # as FidelityResult computes it: the tokens' own mean
        return float(1 - sq_err[sel].sum() / (ref[sel] - ref[sel].mean(0)).pow(2).sum())
    every = torch.ones_like(sinks)
    print(f"\n{path} on the fp32 activations above: explained variance {ev(every):.3f} with the sinks, "
          f"{ev(~sinks):.3f} without them; the sinks hold {float(sq_dev[sinks].sum() / sq_dev.sum()):.0%} of "
          f"the variance about the mean and {float(sq_err[sinks].sum() / sq_err.sum()):.0%} of the squared error")
    print(f"\nreconstruction_metrics of {path} on {args.tokens:,} tokens of {args.corpus}:")
    for autocast in (True, False):
        t = time.perf_counter()
        r = reconstruction_metrics(model, sae, dataset, n_tokens=args.tokens, autocast=autocast, progress=False)
        print(f"  {'bf16' if autocast else 'fp32'}: explained variance {r.explained_variance:.4f} "
              f"({r.explained_variance_without_sinks:.4f} without its {r.n_sinks} sinks), CE-loss "
              f"difference {r.ce_diff:.4f} nats, L2 {r.l2:,.0f}, L0 {r.l0:.1f} ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
