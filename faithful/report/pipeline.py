"""The profile-wide steps: each computes one chapter's table for every corpus and seed of a
profile, saves it where :mod:`faithful.report.claims` reads it, and reuses what is on disk.

Notebooks 02 and 04–07 call these for their tables (after showing the metric on one example
with the library's own functions); ``python -m faithful stats | sfr | ffr | fidelity | probe``
runs them from a shell. Each takes a loaded model and a :class:`faithful.config.Profile`.
"""
from __future__ import annotations

from pathlib import Path

from .. import storage
from ..config import as_profile
from ..data.generate import faithful_dataset_for
from ..data.stats import DatasetStats, dataset_stats
from ..data.tasks import TASKS
from ..metrics.curve import TrainingCurve, training_curve
from ..metrics.ffr import FFRTable, ffr_table
from ..metrics.fidelity import FidelityMatrix, fidelity_matrix
from ..metrics.probing import ProbeTable, probe_table
from ..metrics.sfr import SFRTable, sfr_table
from ..models import model_name, sae_preset
from ..sae.train import train_corpora

SFR_THRESHOLD = 0.7
"""The paper's cosine threshold for a shared feature."""
FILES = {"stats": "dataset_stats", "sfr": "sfr/table2_4_sfr_by_dataset.json",
         "ffr": "ffr/table_c2_ffr_by_dataset.json", "fidelity": "fidelity/fidelity_matrix.json",
         "probe": "probing/probing.json", "curve": "curve/training_curve.json"}
"""Where each step's result lies under ``results/<model>/`` (``stats``: a folder, one JSON per corpus)."""


def corpus_source(model, profile, name: str):
    """What ``name`` of ``profile.corpora``/``eval_sets`` loads: the Faithful dataset's folder, else the name."""
    return faithful_dataset_for(model, profile) if name == "faithful" else name


def statistics(model, profile) -> list[DatasetStats]:
    """Table 1's statistics of every corpus of the profile, each at ``profile.stats_tokens`` tokens."""
    profile = as_profile(profile)
    out = storage.result_dir(profile.model, FILES["stats"])
    stats = []
    for name in profile.corpora:
        st = dataset_stats(model, corpus_source(model, profile, name), name=name, max_tokens=profile.stats_tokens)
        st.save(out)
        stats.append(st)
    return stats


def sfr(model, profile) -> SFRTable:
    """Tables 2 and 4: the SFR of every seed pair, per training corpus."""
    profile = as_profile(profile)
    table = sfr_table(train_corpora(model, profile), threshold=SFR_THRESHOLD, name="table2_4_sfr_by_dataset")
    table.save(storage.result_dir(profile.model, "sfr"))
    return table


def ffr(model, profile, *, progress: bool = True) -> FFRTable:
    """Table C.2: the FFR of every SAE over ``profile.fake_draws`` random-token draws."""
    profile = as_profile(profile)
    table = ffr_table(model, train_corpora(model, profile), n_tokens=profile.fake_tokens,
                      n_draws=profile.fake_draws, seed=0, progress=progress, name="table_c2_ffr_by_dataset")
    table.save(storage.result_dir(profile.model, "ffr"))
    return table


def curve(model, profile, *, progress: bool = True) -> TrainingCurve:
    """SFR and FFR against training tokens, from the snapshots of every corpus's runs (one random-token
    draw of ``profile.fake_tokens``: the seeds give the interval)."""
    profile = as_profile(profile)
    result = training_curve(model, train_corpora(model, profile), n_tokens=profile.fake_tokens, n_draws=1, seed=0,
                            sfr_threshold=SFR_THRESHOLD, progress=progress, profile=profile.name)
    result.save(storage.result_dir(profile.model, "curve"))
    return result


def fidelity(model, profile, *, progress: bool = True) -> FidelityMatrix:
    """App. B: every seed of every corpus's SAE on the held-out split of every evaluation set."""
    profile = as_profile(profile)
    eval_sets = {name: corpus_source(model, profile, name) for name in profile.eval_sets}
    return fidelity_matrix(model, train_corpora(model, profile), eval_sets, n_tokens=profile.eval_tokens,
                           context_size=sae_preset(model, profile).context_size, seed=0, progress=progress,
                           out_dir=storage.result_dir(profile.model, "fidelity"))


def probing(model, profile, *, progress: bool = True) -> ProbeTable:
    """Table C.1: probes on every task for every seed of every corpus's SAE."""
    profile = as_profile(profile)
    return probe_table(model, train_corpora(model, profile), tuple(TASKS), n_train=profile.probe_n_train,
                       n_test=profile.probe_n_test, seed=0, context_size=sae_preset(model, profile).context_size,
                       progress=progress, out_dir=storage.result_dir(profile.model, "probing"))


def result_path(model, step: str) -> Path:
    """Where ``step``'s result lies for ``model`` (a loaded model or its name)."""
    name = model if isinstance(model, str) else model_name(model)
    return storage.results_dir() / storage.slug(name) / FILES[step]
