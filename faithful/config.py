"""Named scales for the whole pipeline: ``smoke`` (tests, nbval), ``cpu`` (a 2-core laptop without
fast bf16, within an hour end to end), ``cpu-long`` (``cpu`` with five times the training tokens, for
the training curve) and ``paper`` (a GPU, the paper's Table 5 budgets).

Notebooks and the CLI read the profile named by ``FAITHFUL_PROFILE`` (default ``cpu``) with
:func:`get_profile` and pass it on; library functions never read the environment (a profile
argument defaults to ``"cpu"``, the plain default). The test suite sets ``smoke``. Model-specific SAE hyper-parameters (layer, width, k, lr,
context length) live in :data:`faithful.models.PRESETS`; a profile sets budgets and, where its
``d_sae``/``k``/``lr``/``context_size`` are not None, overrides the preset of any model (``smoke``
and ``cpu`` scale the SAE down; ``paper`` keeps every preset).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    """Profile name: smoke, cpu, cpu-long or paper."""
    model: str = "smollm2-135m"
    """Model every notebook loads (a name accepted by ``faithful.load_model``)."""
    faithful_tokens: int = 125_000
    """Tokens of Faithful text to sample from the start token: enough that its training split
    (:data:`faithful.data.splits.EVAL_FRACTION` is held out) holds ``train_tokens``, so the Faithful
    SAE, like every other, sees each training token once."""
    max_length: int = 256
    """Maximum tokens per sampled document (start token excluded)."""
    gen_batch_size: int = 64
    """Sequences sampled in parallel."""
    train_tokens: int = 100_000
    """Activation tokens each SAE is trained on."""
    d_sae: int | None = 4608
    """SAE width, for whatever model the profile runs (None: that model's Table 5 preset)."""
    k: int | None = 32
    """TopK sparsity, for whatever model the profile runs (None: the preset)."""
    lr: float | None = None
    """SAE learning rate (None: the model's preset). Smoke runs take ~40 steps and need a larger one."""
    context_size: int | None = 128
    """Tokens per training/evaluation context (None: the preset)."""
    train_batch_size: int = 1024
    """Activation tokens per SAE optimiser step."""
    eval_tokens: int = 2_048
    """Tokens per cell of the reconstruction-faithfulness matrix (every seed of every corpus is a row;
    all SAEs read the same tokens, so their differences are paired)."""
    eval_sets: tuple[str, ...] = ("faithful", "wikipedia_en_sample", "c4_en_train_first1000", "alpaca",
                                  "wikitext103_test", "tinystories_validation_blocks")
    """Columns of the reconstruction-faithfulness matrix: corpus names, read at their held-out split."""
    fake_tokens: int = 8_192
    """Random tokens per draw fed to the model to measure the Fake Feature Ratio."""
    fake_draws: int = 3
    """Independent random-token draws per SAE (its FFR is their mean)."""
    stats_tokens: int = 30_000
    """Tokens at which notebook 02 compares corpora (coverage and KL depend on sample size); the
    start and temperature variants of the Faithful dataset are sampled to this size."""
    probe_n_train: int = 800
    """Training texts per probing task."""
    probe_n_test: int = 400
    """Test texts per probing task."""
    corpora: tuple[str, ...] = ("faithful", "wikipedia_en_sample", "c4_en_train_first1000", "alpaca")
    """Training datasets compared throughout the notebooks."""
    seeds: tuple[int, ...] = (42, 49, 7)
    """SAE initialisation seeds: the paper's two and a third, so that every comparison has a spread
    (three SFR pairs, three FFR and fidelity values per corpus)."""

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Profile] = {
    # The notebooks' code paths, each once, in minutes on a 2-core CPU without fast bf16: two
    # corpora (every per-corpus step is the same code), a few hundred evaluation tokens per cell.
    "smoke": Profile(
        name="smoke",
        faithful_tokens=3_000,
        max_length=64,
        gen_batch_size=32,
        train_tokens=2_048,
        d_sae=256,
        k=8,
        lr=3e-3,
        context_size=64,
        train_batch_size=256,
        eval_tokens=512,
        eval_sets=("faithful", "wikipedia_en_sample", "wikitext103_test"),
        fake_tokens=1_024,
        fake_draws=2,
        stats_tokens=2_048,
        probe_n_train=64,
        probe_n_test=32,
        corpora=("faithful", "wikipedia_en_sample"),
    ),
    # Sized for `make demo` within an hour on a 2-core CPU with AVX2 only, where the model runs in
    # fp32 (the README lists each notebook's time). 100k tokens are ~97 optimiser steps per SAE,
    # half of what this profile trained on before: at the preset's lr (2e-4, for long runs) an SAE
    # this short barely moves, so lr is 3e-3 (200k tokens at 3e-3 gave explained variance 0.95 on
    # held-out Wikipedia activations and 4,323 of 4,608 latents firing; benchmarks/b_dec_init.py).
    "cpu": Profile(name="cpu", lr=3e-3),
    # Is `cpu`'s budget enough? The same SAEs on five times the tokens, Faithful against Wikipedia
    # only: `python -m faithful curve` reads SFR and FFR at 62k, 125k, 250k and 500k tokens from one
    # run per seed (its snapshots). Hours on a 2-core CPU; docs/training-curve.md has the result.
    "cpu-long": Profile(name="cpu-long", lr=3e-3, faithful_tokens=625_000, train_tokens=500_000, stats_tokens=150_000,
                        corpora=("faithful", "wikipedia_en_sample")),
    "paper": Profile(
        name="paper",
        model="gpt2",
        faithful_tokens=120_000_000,
        max_length=1024,
        gen_batch_size=256,
        train_tokens=100_000_000,
        d_sae=None,
        k=None,
        context_size=None,
        train_batch_size=4096,
        eval_tokens=1_000_000,
        eval_sets=("faithful", "pile-uncopyrighted", "fineweb"),
        fake_tokens=1_000_000,
        stats_tokens=100_000_000,
        probe_n_train=100_000,
        probe_n_test=10_000,
        corpora=("faithful", "pile-uncopyrighted", "fineweb"),
    ),
}


def as_profile(profile: Profile | str) -> Profile:
    """A :class:`Profile` given as itself or by name (for library functions: reads no environment)."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[profile]


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The named profile (default: ``$FAITHFUL_PROFILE`` or ``cpu``), with overrides, and the model
    ``$FAITHFUL_MODEL`` names. For notebooks and the CLI; library functions take a profile."""
    name = name or os.environ.get("FAITHFUL_PROFILE", "cpu")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} "
                         "(set FAITHFUL_PROFILE or pass name=)")
    prof = PROFILES[name]
    env_model = os.environ.get("FAITHFUL_MODEL")
    if env_model and "model" not in overrides:
        overrides["model"] = env_model
    return prof.replace(**overrides) if overrides else prof
