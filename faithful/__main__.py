"""``python -m faithful <step>``: the notebooks' steps for scripts and clusters.

Every step reads the profile (``--profile`` or ``$FAITHFUL_PROFILE``) and the model
(``--model`` or the profile's), writes under ``$FAITHFUL_HOME`` and reuses what is there.

    python -m faithful convert                     # de-quantise the embedded model once
    python -m faithful generate --profile cpu      # the Faithful dataset + its statistics
    python -m faithful train --profile cpu         # SAEs on every corpus of the profile
    python -m faithful notebooks notebooks/0*.ipynb  # execute notebooks (copies in results/notebooks)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faithful

from . import storage
from .data.generate import faithful_dataset_for
from .data.stats import dataset_stats
from .models import ensure_embedded_model
from .sae.train import train_corpora


def _model_and_profile(args):
    profile = faithful.get_profile(args.profile, **({"model": args.model} if args.model else {}))
    return faithful.load_model(profile.model), profile


def cmd_convert(args) -> None:
    print(ensure_embedded_model())


def cmd_generate(args) -> None:
    model, profile = _model_and_profile(args)
    path = faithful_dataset_for(model, profile)
    stats = dataset_stats(model, path)
    out = stats.save(storage.result_dir(profile.model, "dataset_stats"))  # where notebook 02 writes
    print(f"dataset: {path}\nstatistics: {out}")


def cmd_train(args) -> None:
    model, profile = _model_and_profile(args)
    for name, paths in train_corpora(model, profile).items():
        for p in paths:
            print(f"{name}: {p}")


def cmd_notebooks(args) -> None:
    """Execute notebooks in order, writing executed copies to results/notebooks/."""
    import nbformat  # the notebooks extra: `pip install -e .[notebooks]`
    from nbclient import NotebookClient

    out_dir = storage.results_dir() / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.paths):
        t = time.time()
        print(f"▶ {path.name} …", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            client.execute()
        finally:
            nbformat.write(nb, out_dir / path.name)
        print(f"  done in {time.time() - t:.0f} s → {out_dir / path.name}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m faithful", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    for name, fn, helptext in [
        ("convert", cmd_convert, "convert the embedded GGUF model to safetensors (once)"),
        ("generate", cmd_generate, "sample the Faithful dataset and compute its statistics"),
        ("train", cmd_train, "train SAEs (all seeds) on every corpus of the profile"),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--profile", help="smoke, cpu or paper (default: $FAITHFUL_PROFILE or cpu)")
        p.add_argument("--model", help="model name (default: the profile's)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("notebooks", help="execute notebooks; executed copies go to results/notebooks/")
    p.add_argument("paths", nargs="+")
    p.set_defaults(fn=cmd_notebooks)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
