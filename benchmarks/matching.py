"""Wall time and peak memory of the Shared Feature Ratio's Hungarian matching.

    python benchmarks/matching.py                 # d_sae 4,096 and 16,384, d_in 576
    python benchmarks/matching.py --sizes 4096    # one size

Each (size, method) runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own. Methods:

* ``faithful`` – ``faithful.shared_feature_ratio``: float32 cosines in row blocks written once,
  negated, into a float64 C-contiguous cost matrix that scipy uses without copying;
* ``plain`` – the straightforward call: a float32 similarity matrix and
  ``scipy.optimize.linear_sum_assignment(sim, maximize=True)`` (scipy converts it to float64
  and copies it again to negate it).

Both match the same two random Gaussian decoders (seeds 0 and 1) and must find assignments of
equal total similarity. Timings on a shared 2-core machine vary with its load: the load
average is printed; compare the two methods of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(d_sae: int, d_in: int, method: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    a = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(0))
    b = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(1))
    if method == "faithful":
        from faithful.metrics.sfr import shared_feature_ratio

        rss0 = _rss_mb()
        t0 = time.perf_counter()
        res = shared_feature_ratio(a, b, 0.7)
        wall = time.perf_counter() - t0
        total, sfr = float(res.similarities.astype(np.float64).sum()), res.ratio
    elif method == "plain":
        from scipy.optimize import linear_sum_assignment

        rss0 = _rss_mb()
        t0 = time.perf_counter()
        an = a / a.norm(dim=1, keepdim=True)
        bn = b / b.norm(dim=1, keepdim=True)
        sim = (an @ bn.T).numpy()
        r, c = linear_sum_assignment(sim, maximize=True)
        matched = sim[r, c]
        wall = time.perf_counter() - t0
        total, sfr = float(matched.astype(np.float64).sum()), float((matched > 0.7).mean())
    else:
        raise ValueError(f"unknown method {method!r}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    return {"d_sae": d_sae, "d_in": d_in, "method": method, "wall_s": round(wall, 2),
            "peak_rss_mb": round(peak), "rss_before_mb": round(rss0), "peak_increase_mb": round(peak - rss0),
            "sfr": sfr, "total_similarity": round(total, 3)}


def run_one(d_sae: int, d_in: int, method: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, "--sizes", str(d_sae), "--d-in", str(d_in)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="d_sae values")
    p.add_argument("--d-in", type=int, default=576, help="decoder width (SmolLM2-135M: 576)")
    p.add_argument("--methods", nargs="+", default=["faithful", "plain"], choices=["faithful", "plain"])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.sizes[0], args.d_in, args.worker)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    print(f"{'d_sae':>7} {'d_in':>5} {'method':>9} {'wall s':>8} {'peak RSS MB':>12} {'Δ over start MB':>16} "
          f"{'cost matrix MB':>15} {'SFR':>6} {'Σ matched cos':>14}")
    rows = []
    for n in args.sizes:
        for m in args.methods:
            r = run_one(n, args.d_in, m)
            rows.append(r)
            print(f"{n:>7} {args.d_in:>5} {m:>9} {r['wall_s']:>8.2f} {r['peak_rss_mb']:>12} "
                  f"{r['peak_increase_mb']:>16} {n * n * 8 / 2**20:>15.0f} {r['sfr']:>6.3f} "
                  f"{r['total_similarity']:>14.3f}", flush=True)
        same = {r["total_similarity"] for r in rows if r["d_sae"] == n}
        if len(same) > 1 and max(same) - min(same) > 1e-2 * n ** 0.5:
            print(f"  WARNING: the methods found different optimal totals at {n}: {sorted(same)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
