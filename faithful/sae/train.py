"""Training TopK SAEs (Gao et al., 2024) with SAELens 6, every seed from one language-model pass.

``train_saes(model, dataset, seeds=(42, 49))`` builds one SAELens ``TopKTrainingSAE`` and one
``SAETrainer`` per seed under ``torch.manual_seed(seed)``; their step is :mod:`faithful.sae.topk_step`.
The decoder bias starts at the geometric median of the first activations (:data:`B_DEC_INITS`).
One :class:`~faithful.sae.stream.ActivationStream` runs the model once per batch and every seed's
trainer steps on it: the seed changes only the initialisation, as in the paper.

Each run goes to ``runs/<model>/<dataset>/<hook>/<profile>/seed<N>/`` in SAELens format, with
``faithful_run.json`` (settings, tokens seen, seconds) and ``curves.jsonl`` (:mod:`faithful.sae.runs`).
A finished run is reused; an interrupted one resumes from its last checkpoint
(``.seed<N>.resume/``, written atomically) and ends with the weights of an uninterrupted run.
"""
from __future__ import annotations

import copy
import numbers
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from tqdm.auto import tqdm

from .. import storage
from ..activations import explained_variance, lm_precision, not_sinks, total_variance
from ..config import as_profile
from ..data.corpora import dataset_label, load_corpus
from ..data.splits import split_rule, take_part
from ..models import hook_name, model_name, sae_preset
from .runs import RUN_FILE, SNAPSHOT_FILE, read_curves, run_dir, write_curves
from .stream import ActivationStream, load_trainer_state, pack_contexts, save_trainer_state
from .topk_step import TopKTrainer

SNAPSHOT_HALVINGS = 3
"""Each run keeps its weights after 1/2, 1/4 … 1/2**SNAPSHOT_HALVINGS of its steps (with the run
itself, points evenly spaced in log tokens) in :data:`SNAPSHOT_FILE`, so SFR and FFR can be read
against training tokens without retraining (:func:`faithful.sae.load.load_snapshots`)."""
CHECKPOINT_SECONDS = 300
"""Default wall time between resumable checkpoints: a crash loses at most this much training,
and short runs do not pay for checkpoints of every seed (Adam state included) they never need."""
B_DEC_INITS = ("geometric_median", "zeros")
"""Ways to start the decoder bias. SmolLM2's residual stream has a large common component (at the
``cpu`` hook the median is ≈70 % as long as an average activation): from ``zeros`` it dominates
every pre-activation, the same few latents win TopK on every token and most of the others die.
``benchmarks/b_dec_init.py`` measures dead latents, explained variance and CE loss for both."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a run's weights (besides the seed)."""

    model: str
    """Model name (``faithful.model_name``)."""
    dataset: str
    """Dataset name used in folder paths."""
    fingerprint: str
    """SHA-256 prefix of the packed token contexts trained on."""
    hook: str
    """Hook point, ``blocks.L.hook_resid_post``."""
    d_in: int
    """Width of the activations."""
    d_sae: int
    """Number of latents."""
    k: int
    """Active latents per token (TopK)."""
    lr: float
    """Adam learning rate (constant, as in Gao et al.)."""
    n_tokens: int
    """Content tokens each SAE sees (position 0 and special tokens excluded)."""
    context_size: int
    """Tokens per context, start token included."""
    batch_size: int
    """Activation tokens per optimiser step."""
    architecture: str = "topk"
    """SAELens architecture (only ``topk``)."""
    aux_loss_coefficient: float = 1.0
    """AuxK loss weight (SAELens default)."""
    b_dec_init: str = "geometric_median"
    """Decoder bias before training: ``geometric_median`` of the first shuffle block's scaled
    activations, the same for every seed (Gao et al., 2024, like OpenAI's and EleutherAI's
    trainers), or ``zeros`` (SAELens 6's default; see :data:`B_DEC_INITS`)."""
    dead_feature_window: int = 1000
    """Steps without firing after which a latent counts as dead (SAELens default; capped
    at a quarter of the run for short runs)."""
    block_contexts: int = 64
    """Contexts per shuffle block of the activation stream."""
    precision: str = "fp32"
    """``bf16``: the language model under bf16 autocast and the SAE's encoder products in bf16 (as
    SAELens's trainer autocasts); ``fp32``: both in fp32. The precision policy's choice for the
    device unless asked (:mod:`faithful.precision`)."""
    profile: str = "cpu"
    """Profile the settings came from."""
    documents: str = split_rule("train")
    """Which documents of the dataset are trained on: its training split (:mod:`faithful.data.splits`);
    the held-out rest is what every evaluation reads."""
    trainer: str = "faithful.topk_step.TopKTrainer/4"
    """The training step's implementation and version (a run made by another is not resumed)."""


def train_saes(model, dataset, *, layer=None, seeds=(42, 49), d_sae=None, k=None, lr=None,
               n_tokens=None, context_size=None, batch_size=None, architecture="topk",
               out_dir=None, dataset_name=None, profile="cpu", progress=True,
               checkpoint_every=None, overwrite=False, b_dec_init="geometric_median",
               autocast: bool | None = None) -> list[Path]:
    """Train one TopK SAE per seed on ``dataset`` at ``layer``; return their checkpoint folders.

    ``dataset`` is a corpus name or path (``faithful.load_corpus``) or a ``datasets.Dataset``
    with ``text`` rows (and ``token_ids``, used when present); only its training split is read
    (:mod:`faithful.data.splits`), and the run records how many times it was passed over (``epochs``). Arguments left at None come from
    ``faithful.sae_preset(model, profile)`` and ``profile`` (a :class:`faithful.config.Profile` or
    its name: ``train_tokens``, ``train_batch_size``; it also names the run's folder). ``out_dir`` replaces ``runs/`` as the root. ``checkpoint_every``
    (optimiser steps; default: after ``CHECKPOINT_SECONDS`` of wall time) sets how often a
    resumable checkpoint is written; Ctrl-C (or Jupyter's interrupt) also writes one after the
    current step, then stops. ``overwrite=True`` retrains runs whose folder holds other settings.
    ``b_dec_init`` starts the decoder bias at the data's geometric median or at zero (:data:`B_DEC_INITS`).
    ``autocast``: None for the precision policy's choice (:mod:`faithful.precision`), True/False for
    bf16/fp32 in the language model and the SAE's encoder products.
    """
    profile = as_profile(profile)
    preset = sae_preset(model, profile)
    hook = hook_name(model, preset.layer if layer is None else layer)
    d_sae, k = _given(d_sae, preset.d_sae), _given(k, preset.k)
    lr, ctx = _given(lr, preset.lr), _given(context_size, preset.context_size)
    n_tokens, batch_size = _given(n_tokens, profile.train_tokens), _given(batch_size, profile.train_batch_size)
    _check_args(model, architecture, d_sae, k, lr, ctx, n_tokens, batch_size, seeds, b_dec_init)
    d_sae, k, ctx, n_tokens, batch_size = map(int, (d_sae, k, ctx, n_tokens, batch_size))
    seeds = tuple(int(s) for s in seeds)
    if isinstance(dataset, (str, Path)):
        dataset_name = dataset_name or dataset_label(dataset)
        dataset = load_corpus(dataset, model=model, profile=profile)
    dataset = take_part(dataset, "train")
    contexts, epochs, fingerprint = pack_contexts(model, dataset, ctx, n_tokens)
    dataset_name = dataset_name or f"dataset-{fingerprint[:8]}"
    settings = TrainSettings(
        model=model_name(model), dataset=dataset_name, fingerprint=fingerprint, hook=hook,
        d_in=model.cfg.d_model, d_sae=d_sae, k=k, lr=lr, n_tokens=n_tokens, context_size=ctx,
        batch_size=batch_size, architecture=architecture, b_dec_init=b_dec_init,
        dead_feature_window=min(1000, max(1, n_tokens // batch_size // 4)),
        block_contexts=ActivationStream.block_size_for(batch_size, ctx), profile=profile.name,
        precision=lm_precision(model, autocast))
    dirs = {s: _seed_dir(out_dir, model, dataset_name, hook, s, profile) for s in seeds}
    for folder in dirs.values():  # what a killed run left: temporary folders, a half-swapped one
        storage.recover(folder)
        storage.recover(_resume_dir(folder))
    todo = [s for s in seeds if not _finished(dirs[s], settings, overwrite)]
    if todo:
        _Run(model, settings, contexts, epochs, todo, dirs, progress, checkpoint_every).fit()
    return [dirs[s] for s in seeds]


def train_corpora(model, profile, *, progress=True, overwrite=False) -> dict[str, list[Path]]:
    """Train (or reuse) SAEs of every seed of ``profile.seeds`` on every corpus of ``profile.corpora``;
    name → folders.

    ``"faithful"`` is the profile's Faithful dataset (``faithful.data.generate.faithful_dataset_for``).
    ``overwrite=True`` retrains runs made with other settings (by default they stop with an error).
    """
    profile = as_profile(profile)
    return {name: train_saes(model, name, seeds=profile.seeds, profile=profile, progress=progress,
                             overwrite=overwrite) for name in profile.corpora}


def make_sae(settings: TrainSettings, seed: int, device: str = "cpu"):
    """A freshly initialised SAELens ``TopKTrainingSAE``, seeded by hand (SAELens ignores cfg seeds).

    Initialised on the CPU, then moved to ``device``: CUDA's generator draws other numbers for the
    same seed, and a seed should start from the same weights on every device."""
    cfg = TopKTrainingSAEConfig(
        d_in=settings.d_in, d_sae=settings.d_sae, k=settings.k, device="cpu",
        normalize_activations="expected_average_only_in",
        aux_loss_coefficient=settings.aux_loss_coefficient)
    meta = cfg.metadata
    meta.model_name, meta.hook_name = settings.model, settings.hook
    meta.context_size, meta.prepend_bos, meta.seqpos_slice = settings.context_size, True, (1, None)
    meta.dataset_path, meta.seed = settings.dataset, seed
    torch.manual_seed(seed)
    return TopKTrainingSAE(cfg).to(device)


# ----------------------------------------------------------------------------- internals
def _given(value, default):
    """``value`` unless it is None (a 0 is kept, and refused by :func:`_check_args`)."""
    return default if value is None else value


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy ints too


def _check_args(model, architecture, d_sae, k, lr, ctx, n_tokens, batch_size, seeds, b_dec_init):
    counts = {"d_sae": d_sae, "k": k, "context_size": ctx, "n_tokens": n_tokens, "batch_size": batch_size}
    for name, value in counts.items():
        if not _whole(value):
            raise TypeError(f"{name} must be a whole number, got {value!r}")
    if isinstance(seeds, (numbers.Integral, str)) or not all(_whole(s) for s in seeds):
        raise TypeError(f"seeds must be a tuple of integers, e.g. seeds=(42,) for one seed, got {seeds!r}")
    seeds = tuple(seeds)
    if b_dec_init not in B_DEC_INITS:
        raise ValueError(f"b_dec_init={b_dec_init!r} is not one of {B_DEC_INITS}")
    if architecture != "topk":
        raise ValueError(f"architecture {architecture!r} is not supported: the paper trains TopK SAEs "
                         "(architecture='topk')")
    if d_sae <= 0:
        raise ValueError(f"d_sae={d_sae} must be positive (the paper's SAEs are 8x to 32x d_model wide)")
    if not 0 < k < d_sae:
        raise ValueError(f"k={k} must be between 1 and d_sae-1 (d_sae={d_sae}): a TopK SAE keeps k "
                         "of its d_sae latents; lower k or widen the SAE")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be positive (the paper's SAEs use 2e-4 to 5e-4; the cpu profile 3e-3)")
    if ctx > model.cfg.n_ctx or ctx < 2:
        raise ValueError(f"context_size={ctx} must be in 2..{model.cfg.n_ctx} (the model's n_ctx)")
    if n_tokens <= 0 or batch_size <= 0:
        raise ValueError(f"n_tokens ({n_tokens}) and batch_size ({batch_size}) must be positive")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, got {seeds!r}")


def _seed_dir(out_dir, model, dataset_name, hook, seed, profile) -> Path:
    if out_dir is None:
        return run_dir(model, dataset_name, hook, seed, profile)
    return Path(out_dir) / f"seed{seed}"


def _resume_dir(folder: Path) -> Path:
    """Where the run in ``folder`` keeps its last resumable checkpoint (hidden: it never loads as a run)."""
    return folder.with_name(f".{folder.name}.resume")


def _finished(folder: Path, settings: TrainSettings, overwrite: bool) -> bool:
    meta_path = folder / RUN_FILE
    if not meta_path.is_file():
        return False
    saved, now = storage.read_json(meta_path)["settings"], asdict(settings)
    if saved == now:
        return True
    if overwrite:
        return False
    diff = ", ".join(f"{k} {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
                     for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))
    raise FileExistsError(f"{folder} holds a run with other settings ({diff}): pass overwrite=True "
                          "to retrain it, or out_dir= to keep both")


class _Run:
    """One shared-stream training run of several seeds (internal)."""

    def __init__(self, model, settings: TrainSettings, contexts, epochs, seeds, dirs, progress,
                 checkpoint_every):
        self.s, self.seeds, self.dirs, self.progress, self.epochs = settings, seeds, dirs, progress, epochs
        self.steps = max(1, settings.n_tokens // settings.batch_size)
        self.every, self.last_checkpoint = checkpoint_every, time.perf_counter()
        device = str(model.cfg.device or "cpu")
        self.stream = ActivationStream(model, contexts, settings.hook,
                                       block_contexts=settings.block_contexts,
                                       autocast=settings.precision == "bf16")
        cfg = SAETrainerConfig(
            total_training_samples=self.steps * settings.batch_size,
            train_batch_size_samples=settings.batch_size, lr=settings.lr, lr_end=settings.lr,
            device=device,
            autocast=settings.precision == "bf16", dead_feature_window=settings.dead_feature_window,
            feature_sampling_window=self.steps + 1)
        self.saes, self.trainers = {}, {}
        for seed in seeds:
            self.saes[seed] = make_sae(settings, seed, device)
            self.trainers[seed] = TopKTrainer(cfg=cfg, sae=self.saes[seed], data_provider=iter(()))
        self.curves: dict[int, list[dict]] = {s: [] for s in seeds}
        # inference weights at 1/2, 1/4, 1/8 … of the run (fp16: they serve SFR and FFR, not training)
        self.snapshot_steps = {self.steps >> i for i in range(1, SNAPSHOT_HALVINGS + 1)} - {0}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {s: {} for s in seeds}
        self.sae_seconds = dict.fromkeys(seeds, 0.0)  # optimiser steps only, per seed
        self.t_start = time.perf_counter()

    def resume_dir(self, seed) -> Path:
        return _resume_dir(self.dirs[seed])

    def fit(self) -> None:
        step = self._try_resume()
        if step == 0:
            self._init_from_data()
        bar = tqdm(total=self.steps * self.s.batch_size, initial=step * self.s.batch_size,
                   unit="tok", desc=f"SAEs {self.s.dataset} seeds {self.seeds}", disable=not self.progress)
        log_every = max(1, self.steps // 50)
        # Ctrl-C ends the current step, saves a checkpoint there and then stops (a second one at once).
        with storage.deferred_interrupt() as interrupt:
            while step < self.steps:
                batch = self.stream.next_batch(self.s.batch_size)
                logging, stats = (step + 1) % log_every == 0 or step + 1 == self.steps, None
                for seed, tr in self.trainers.items():
                    t = time.perf_counter()
                    out = tr.step(batch)
                    self.sae_seconds[seed] += time.perf_counter() - t
                    if logging:
                        stats = stats or _BatchStats(out.sae_in)  # the same scaled batch for every seed
                        self._log(seed, tr, out, stats)
                    tr.n_training_steps += 1
                step += 1
                bar.update(self.s.batch_size)
                if step in self.snapshot_steps:
                    for seed, tr in self.trainers.items():
                        self.snapshots[seed].update(_inference_weights(tr, f"tokens_{tr.n_training_samples}."))
                due = interrupt.requested or (step % self.every == 0 if self.every else
                                              time.perf_counter() - self.last_checkpoint >= CHECKPOINT_SECONDS)
                if due and step < self.steps:
                    self._checkpoint(step)
                    self.last_checkpoint = time.perf_counter()
                if interrupt.requested and step < self.steps:
                    bar.close()
                    raise KeyboardInterrupt(f"training stopped at step {step} of {self.steps}; "
                                            "the same call resumes there")
        bar.close()
        self._finish()
        if interrupt.requested:  # during the last step: the run is saved, and the caller still stops
            raise KeyboardInterrupt("training finished its last step and was saved; the same call reuses it")

    def _init_from_data(self) -> None:
        """Activation scale (SAELens's ``expected_average_only_in``) and, by default, the decoder
        bias, from the first block, which is trained on next: nothing is read twice."""
        acts = self.stream.peek()
        factor = self.s.d_in ** 0.5 / acts.norm(dim=-1).mean().item()
        b_dec = geometric_median(acts * factor) if self.s.b_dec_init == "geometric_median" else None
        for tr in self.trainers.values():
            tr.activation_scaler.scaling_factor = factor
            if b_dec is not None:
                tr.sae.b_dec.data.copy_(b_dec)

    @torch.no_grad()
    def _log(self, seed, trainer, out, stats: _BatchStats) -> None:
        """One point of the training curves: SAELens's log-dict metrics (MSE, AuxK loss, explained
        variance, L0, dead latents), computed directly (building SAELens's dict costs a pass per
        seed), and the explained variance without the batch's sinks."""
        fired = out.feature_acts._values()  # the chosen latents' activations; a zero did not fire
        errs = trainer.row_sq_err  # the step's own ‖sae_out − x‖² per row: no second pass over the batch
        self.curves[seed].append({
            "step": trainer.n_training_steps + 1, "tokens": trainer.n_training_samples,
            "mse": float(out.losses["mse_loss"]),
            "aux_loss": float(out.losses.get("auxiliary_reconstruction_loss", 0.0)),
            "explained_variance": explained_variance(stats.x, None, stats.total, errs),
            "explained_variance_without_sinks": explained_variance(stats.x_typical, None, stats.total_typical,
                                                                   errs[stats.typical]),
            "l0": (fired != 0).sum().item() / len(stats.x),
            "dead_latents": int(trainer.dead_neurons.sum()), "seconds": time.perf_counter() - self.t_start})

    def _checkpoint(self, step: int) -> None:
        for seed, tr in self.trainers.items():
            with storage.atomic_dir(self.resume_dir(seed), overwrite=True) as tmp:
                tr.sae.save_model(tmp)
                save_trainer_state(tr, tmp)
                write_curves(tmp, self.curves[seed])
                _write_snapshots(tmp, self.snapshots[seed])
                storage.write_json(tmp / "resume.json", {"settings": asdict(self.s), "step": step,
                                                        "stream": self.stream.state()})

    def _try_resume(self) -> int:
        metas = []
        for seed in self.seeds:
            path = self.resume_dir(seed) / "resume.json"
            metas.append(storage.read_json(path) if path.is_file() else None)
        ok = all(m is not None and m["settings"] == asdict(self.s) for m in metas) and \
            len({m["step"] for m in metas}) == 1
        if not ok:
            for seed in self.seeds:
                shutil.rmtree(self.resume_dir(seed), ignore_errors=True)  # restart cleanly
            return 0
        for seed, tr in self.trainers.items():
            folder = self.resume_dir(seed)
            tr.sae.load_weights_from_checkpoint(folder)
            load_trainer_state(tr, folder)
            self.curves[seed] = read_curves(folder)
            if (folder / SNAPSHOT_FILE).is_file():
                self.snapshots[seed] = load_file(str(folder / SNAPSHOT_FILE))
        self.stream.load_state(metas[0]["stream"])
        return int(metas[0]["step"])

    def _finish(self) -> None:
        for seed, tr in self.trainers.items():
            sae = tr.sae
            sae.fold_activation_norm_scaling_factor(tr.activation_scaler.scaling_factor)
            tr.activation_scaler.scaling_factor = None
            tr.set_final_sae_metadata()
            with storage.atomic_dir(self.dirs[seed], overwrite=True) as tmp:
                sae.save_inference_model(tmp)
                write_curves(tmp, self.curves[seed])
                _write_snapshots(tmp, self.snapshots[seed])
                storage.write_json(tmp / RUN_FILE, {
                    "settings": asdict(self.s), "seed": seed, "tokens_seen": tr.n_training_samples,
                    "epochs": self.epochs, "seconds": time.perf_counter() - self.t_start,
                    # this session's share (a resumed run counts from the resume)
                    "lm_seconds": self.stream.lm_seconds, "sae_seconds": self.sae_seconds[seed],
                    "final": self.curves[seed][-1] if self.curves[seed] else {}})
            shutil.rmtree(self.resume_dir(seed), ignore_errors=True)


@torch.no_grad()
def _inference_weights(trainer, prefix: str) -> dict[str, torch.Tensor]:
    """The weights ``_finish`` would save now (scale folded, then SAELens's inference processing), fp16."""
    sae = copy.deepcopy(trainer.sae)
    if trainer.activation_scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    return {prefix + k: v.half().cpu() for k, v in state.items()}


def _write_snapshots(folder: Path, snapshots: dict[str, torch.Tensor]) -> None:
    if snapshots:
        save_file({k: v.contiguous() for k, v in snapshots.items()}, str(folder / SNAPSHOT_FILE))


class _BatchStats:
    """What the training curves need of a batch that does not depend on the SAE, computed once
    for all seeds: its total variance, and its tokens other than sinks (``not_sinks``) with theirs."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.typical = not_sinks(x)  # a batch with a sink has most of its variance there
        self.x_typical = x[self.typical]
        self.total, self.total_typical = total_variance(x), total_variance(self.x_typical)


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """The point with the least summed Euclidean distance to the rows of ``points`` ``[n, d]``:
    Weiszfeld's iterations from the mean, in float64 (a robust centre: outliers barely move it)."""
    pts = points.double()
    guess = pts.mean(0)
    for _ in range(max_iter):
        w = 1 / (pts - guess).norm(dim=-1).clamp_min(1e-12)
        new = (w[:, None] * pts).sum(0) / w.sum()
        done = (new - guess).norm() <= tol * (1 + guess.norm())
        guess = new
        if done:
            break
    return guess.to(points.dtype)
