"""``python -m faithful <step>``: the notebooks' steps for scripts and clusters.

Every step reads the profile (``--profile`` or ``$FAITHFUL_PROFILE``) and the model
(``--model`` or the profile's), writes under ``$FAITHFUL_HOME`` and reuses what is there.

    python -m faithful convert                     # de-quantise the embedded model once
    python -m faithful generate --profile cpu      # the Faithful dataset
    python -m faithful train --profile cpu         # SAEs (every seed) on every corpus of the profile
    python -m faithful stats | sfr | ffr | fidelity | probe --profile cpu   # one chapter's table
    python -m faithful report --profile cpu        # results/<model>/report.md + report.html
    python -m faithful all --profile cpu           # every step above, then the verdict table
    python -m faithful notebooks notebooks/0*.ipynb  # execute notebooks (copies in results/notebooks)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import faithful

from . import storage
from .data.generate import faithful_dataset_for
from .models import EMBEDDED, ensure_embedded_model
from .report import pipeline
from .report.claims import claims
from .report.render import verdict_rows, write_report
from .sae.train import train_corpora


def _model_and_profile(args):
    profile = faithful.get_profile(args.profile, **({"model": args.model} if args.model else {}))
    return faithful.load_model(profile.model), profile


def cmd_convert(args) -> None:
    print(ensure_embedded_model())


def cmd_generate(args) -> None:
    model, profile = _model_and_profile(args)
    print(faithful_dataset_for(model, profile))


def cmd_train(args) -> None:
    model, profile = _model_and_profile(args)
    for name, paths in train_corpora(model, profile).items():
        for p in paths:
            print(f"{name}: {p}")


STEPS = {"stats": pipeline.statistics, "sfr": pipeline.sfr, "curve": pipeline.curve, "ffr": pipeline.ffr,
         "fidelity": pipeline.fidelity, "probe": pipeline.probing}


def cmd_step(args) -> None:
    model, profile = _model_and_profile(args)
    STEPS[args.step](model, profile)
    print(pipeline.result_path(model, args.step))


def cmd_report(args) -> None:
    profile = faithful.get_profile(args.profile, **({"model": args.model} if args.model else {}))
    md, html = write_report(profile.model, profile.name)
    print(f"{md}\n{html}")


def cmd_all(args) -> None:
    """Every step at the profile, each reusing what is on disk, then the verdict table."""
    profile = faithful.get_profile(args.profile, **({"model": args.model} if args.model else {}))
    bar = tqdm(["convert", "generate", "train", *STEPS, "report"], desc=f"faithful all ({profile.name})")
    model = None
    for step in bar:
        bar.set_postfix_str(step)
        if step == "convert":
            if profile.model == EMBEDDED:
                ensure_embedded_model()
            model = faithful.load_model(profile.model)
        elif step == "generate":
            faithful_dataset_for(model, profile, progress=False)
        elif step == "train":
            train_corpora(model, profile, progress=False)
        elif step == "report":
            md, html = write_report(profile.model, profile.name)
        elif step in ("stats", "sfr"):
            STEPS[step](model, profile)
        else:
            STEPS[step](model, profile, progress=False)
    header, rows = verdict_rows(claims(profile.model, profile.name))
    print("\n".join([" | ".join(header)] + [" | ".join(r).replace("**", "") for r in rows]))
    print(f"\nreport: {md}\n        {html}")


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
        ("generate", cmd_generate, "sample the Faithful dataset at the profile's budget"),
        ("train", cmd_train, "train SAEs (all seeds) on every corpus of the profile"),
        ("stats", cmd_step, "Table 1: token statistics of every corpus at one token count (notebook 02)"),
        ("sfr", cmd_step, "Tables 2 and 4: SFR of every seed pair per corpus (notebook 04)"),
        ("curve", cmd_step, "SFR and FFR against training tokens, from the runs' snapshots (notebook 04)"),
        ("ffr", cmd_step, "Table C.2: FFR of every SAE over random-token draws (notebook 05)"),
        ("fidelity", cmd_step, "App. B: every SAE on every evaluation set's held-out split (notebook 06)"),
        ("probe", cmd_step, "Table C.1: probes for every SAE on every task (notebook 07)"),
        ("report", cmd_report, "results/<model>/report.md and report.html from the saved results (notebook 09)"),
        ("all", cmd_all, "every step at the profile, then the verdict table"),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--profile", help="smoke, cpu, cpu-long or paper (default: $FAITHFUL_PROFILE or cpu)")
        p.add_argument("--model", help="model name (default: the profile's)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("notebooks", help="execute notebooks; executed copies go to results/notebooks/")
    p.add_argument("paths", nargs="+")
    p.set_defaults(fn=cmd_notebooks)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
