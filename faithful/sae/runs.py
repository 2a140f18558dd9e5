"""Where training runs live and what is read back from them.

A run is one folder per (model, dataset, hook, profile, seed):
``runs/<model>/<dataset>/<hook>/<profile>/seed<N>/`` (``$FAITHFUL_HOME/runs`` or the
repository's ``runs/``), holding the SAE in SAELens format, :data:`RUN_FILE` (settings, seed,
tokens seen, timings, final metrics) and :data:`CURVES_FILE` (one JSON row per logged step:
MSE, AuxK loss, explained variance, L0, dead latents), and :data:`SNAPSHOT_FILE` (its inference
weights at earlier points of training, ``tokens_<N>.<param>``). :func:`faithful.train_saes` writes
them; this module finds, lists and plots them.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from .. import storage
from ..models import model_name

RUN_FILE = "faithful_run.json"
CURVES_FILE = "curves.jsonl"
SNAPSHOT_FILE = "snapshots.safetensors"


def run_dir(model, dataset_name: str, hook: str, seed: int, profile) -> Path:
    """``runs/<model>/<dataset>/<hook>/<profile>/seed<N>`` for a loaded model or a model name."""
    prof = profile if isinstance(profile, str) else profile.name
    name = model if isinstance(model, str) else model_name(model)
    return storage.runs_dir() / name / dataset_name / hook / prof / f"seed{seed}"


def list_runs(model=None, dataset_name: str | None = None, profile=None) -> list[dict]:
    """Finished runs under ``runs/`` (optionally filtered), each ``faithful_run.json`` + ``path``."""
    name = model if isinstance(model, str) or model is None else model_name(model)
    prof = profile if isinstance(profile, str) or profile is None else profile.name
    out = []
    for meta_path in sorted(storage.runs_dir().glob(f"*/*/*/*/seed*/{RUN_FILE}")):
        meta = storage.read_json(meta_path)
        s = meta["settings"]
        if ((name is None or s["model"] == name) and (dataset_name is None or s["dataset"] == dataset_name)
                and (prof is None or s["profile"] == prof)):
            out.append({**meta, "path": str(meta_path.parent)})
    return out


def plot_training_curves(runs, metrics=("mse", "explained_variance", "explained_variance_without_sinks", "l0",
                                        "dead_latents"), path=None):
    """One panel per metric, one line per run (checkpoint folders or ``list_runs`` dicts); a metric
    a run did not log (runs trained before it was) is left out of that panel."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for run in runs:
        folder = Path(run["path"] if isinstance(run, dict) else run)
        rows = read_curves(folder)
        meta = storage.read_json(folder / RUN_FILE)
        label = f"{meta['settings']['dataset']} s{meta['seed']}"
        for ax, m in zip(axes, metrics):
            have = [r for r in rows if m in r]
            ax.plot([r["tokens"] for r in have], [r[m] for r in have], label=label)
    for ax, m in zip(axes, metrics):
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("training tokens")
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        storage.save_figure(fig, path)
    return fig


def write_curves(folder: Path, rows: list[dict]) -> None:
    """Write ``rows`` (one dict per logged step) to ``folder``'s :data:`CURVES_FILE`."""
    (folder / CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_curves(folder: Path) -> list[dict]:
    """The rows of ``folder``'s :data:`CURVES_FILE` (none if it has no curves yet)."""
    path = folder / CURVES_FILE
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.is_file() else []
