"""The activation stream that feeds every seed of one SAE training run, and trainer state on disk.

* :func:`pack_contexts` turns a corpus into ``[n, context_size]`` token contexts the way
  SAELens packs text: documents joined by the start token, cut into pieces of
  ``context_size - 1`` tokens, each piece prefixed with the start token. Rows with
  ``token_ids`` (a Faithful dataset) are used as generated, not re-tokenised.
* :class:`ActivationStream` runs the language model once per block of contexts (to the hook's
  layer only, in the run's precision), keeps the content
  positions (``faithful.content_mask``: no position 0, no special token), shuffles the block
  with a generator seeded by ``(data_seed, block)`` and hands out batches that may straddle
  blocks. Its position is two integers, so a resumed run reads exactly the batches an
  uninterrupted one would, and no buffer can be smaller than a batch.
* :func:`save_trainer_state` / :func:`load_trainer_state` write a SAELens ``SAETrainer``'s
  state (Adam moments, scheduler, dead-latent counters, activation scale) as safetensors +
  JSON, never pickle.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..activations import iter_activations, token_digest
from ..models import content_mask, special_token_ids, start_token_id

LM_BATCH = 32
"""Contexts per language-model forward pass while streaming training activations."""


def pack_contexts(model, dataset, context_size: int, n_tokens: int, *, chunk_docs: int = 256
                  ) -> tuple[torch.Tensor, int, str]:
    """Contexts holding at least ``n_tokens`` content tokens; ``(contexts, epochs, fingerprint)``.

    The dataset is repeated (``epochs`` > 1) when it holds fewer tokens than asked for.
    ``fingerprint`` is a SHA-256 prefix of the contexts: the data a run was trained on.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty: give it at least one non-empty text")
    use_ids = "token_ids" in dataset.column_names
    if not use_ids and "text" not in dataset.column_names:
        raise ValueError(f"the training dataset has no 'text' column (columns: {dataset.column_names}); "
                         "rename its text column to 'text' or load it with faithful.load_corpus")
    start, special = start_token_id(model), torch.tensor(special_token_ids(model))
    piece = context_size - 1
    stream: list[int] = []
    rows: list[torch.Tensor] = []
    n_content, epochs, pos, added = 0, 1, 0, 0
    while n_content < n_tokens:
        if pos >= len(dataset):
            if added == 0:
                raise ValueError("the training dataset holds no tokens to train on: every text is "
                                 "empty or made of special tokens only")
            pos, epochs, added = 0, epochs + 1, 0
        batch = dataset[pos: pos + chunk_docs]
        pos += chunk_docs
        docs = batch["token_ids"] if use_ids else model.tokenizer(
            batch["text"], add_special_tokens=False)["input_ids"]
        for ids in docs:
            if len(ids):
                stream.extend(list(ids) + [start])
                added += int((~torch.isin(torch.as_tensor(ids), special)).sum())
        n_rows = len(stream) // piece
        if n_rows == 0:
            continue
        body = torch.tensor(stream[: n_rows * piece], dtype=torch.long).view(n_rows, piece)
        content = (~torch.isin(body, special)).sum(1).cumsum(0)
        keep = min(n_rows, int(torch.searchsorted(content, n_tokens - n_content)) + 1)
        rows.append(torch.cat([torch.full((keep, 1), start), body[:keep]], dim=1))
        n_content += int(content[keep - 1])
        del stream[: keep * piece]
    contexts = torch.cat(rows)
    return contexts, epochs, token_digest(contexts)


class ActivationStream:
    """Shuffled content-position activations at ``hook``, batch by batch (see module docstring)."""

    def __init__(self, model, contexts: torch.Tensor, hook: str, *, block_contexts: int,
                 lm_batch_size: int = LM_BATCH, data_seed: int = 0, autocast: bool | None = None):
        self.model, self.contexts, self.hook = model, contexts, hook
        self.block_contexts, self.lm_batch_size = max(1, block_contexts), lm_batch_size
        self.data_seed, self.autocast = data_seed, autocast
        self.n_blocks = math.ceil(len(contexts) / self.block_contexts)
        self.block, self.offset = 0, 0
        self._acts: torch.Tensor | None = None
        self.lm_seconds = 0.0
        self.lm_tokens = 0

    @staticmethod
    def block_size_for(batch_size: int, context_size: int, shuffle_batches: int = 8,
                       lm_batch_size: int = LM_BATCH) -> int:
        """Contexts per shuffle block: enough for ``shuffle_batches`` optimiser batches, in whole
        LM batches (a short last batch wastes a forward pass's fixed costs)."""
        n = math.ceil(shuffle_batches * batch_size / (context_size - 1))
        return lm_batch_size * math.ceil(n / lm_batch_size)

    def state(self) -> dict:
        return {"block": self.block, "offset": self.offset}

    def load_state(self, state: dict) -> None:
        self.block, self.offset, self._acts = int(state["block"]), int(state["offset"]), None

    def block_activations(self, block: int) -> torch.Tensor:
        """All content activations of one block, shuffled reproducibly: ``[n, d_in]`` float32."""
        rows = self.contexts[(block % self.n_blocks) * self.block_contexts:][: self.block_contexts]
        t0 = time.perf_counter()
        parts = [acts[mask] for acts, mask, _ in iter_activations(
            self.model, rows, self.hook, batch_size=self.lm_batch_size, autocast=self.autocast)]
        self.lm_seconds += time.perf_counter() - t0
        self.lm_tokens += rows.numel()
        acts = torch.cat(parts)
        gen = torch.Generator().manual_seed(self.data_seed * 1_000_003 + block)
        return acts[torch.randperm(len(acts), generator=gen)]

    def peek(self) -> torch.Tensor:
        """The current block's activations (computed once, then served by :meth:`next_batch`)."""
        if self._acts is None:
            self._acts = self.block_activations(self.block)
        return self._acts

    def next_batch(self, batch_size: int) -> torch.Tensor:
        parts, need = [], batch_size
        while need > 0:
            if self._acts is None:
                self._acts = self.block_activations(self.block)
            take = self._acts[self.offset: self.offset + need]
            parts.append(take)
            need -= len(take)
            self.offset += len(take)
            if self.offset >= len(self._acts):
                self.block, self.offset, self._acts = self.block + 1, 0, None
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def count_content(model, contexts: torch.Tensor) -> int:
    """Content tokens (those that are trained on) in ``contexts``."""
    return int(content_mask(contexts, special_token_ids(model)).sum())


# ----------------------------------------------------------------------------- trainer state
def save_trainer_state(trainer, path: Path) -> None:
    """Write ``trainer`` (a SAELens ``SAETrainer``) into folder ``path``: no pickle."""
    opt = trainer.optimizer.state_dict()
    tensors = {"act_freq_scores": trainer.act_freq_scores.contiguous(),
               "n_forward_passes_since_fired": trainer.n_forward_passes_since_fired.contiguous()}
    for pid, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"opt.{pid}.{key}"] = torch.as_tensor(val).contiguous()
    save_file(tensors, str(path / "trainer_state.safetensors"))
    meta = {
        "param_groups": opt["param_groups"],
        "lr_scheduler": _jsonable(trainer.lr_scheduler.state_dict()),
        "coefficient_schedulers": {k: _jsonable(s.state_dict())
                                   for k, s in trainer.coefficient_schedulers.items()},
        "n_training_samples": trainer.n_training_samples,
        "n_training_steps": trainer.n_training_steps,
        "n_frac_active_samples": trainer.n_frac_active_samples,
        "started_fine_tuning": trainer.started_fine_tuning,
        "scaling_factor": trainer.activation_scaler.scaling_factor,
    }
    (path / "trainer_state.json").write_text(json.dumps(meta, indent=1))


def load_trainer_state(trainer, path: Path) -> None:
    """Restore what :func:`save_trainer_state` wrote into ``trainer``."""
    tensors = load_file(str(path / "trainer_state.safetensors"))
    meta = json.loads((path / "trainer_state.json").read_text())
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched = trainer.lr_scheduler.state_dict()
    sched.update({k: v for k, v in meta["lr_scheduler"].items() if k in sched and v is not None})
    trainer.lr_scheduler.load_state_dict(sched)
    for k, s in trainer.coefficient_schedulers.items():
        s.load_state_dict(meta["coefficient_schedulers"][k])
    device = trainer.sae.W_dec.device  # safetensors loads to the CPU; SAELens indexes these on the SAE's device
    trainer.act_freq_scores = tensors["act_freq_scores"].to(device)
    trainer.n_forward_passes_since_fired = tensors["n_forward_passes_since_fired"].to(device)
    for key in ("n_training_samples", "n_training_steps", "n_frac_active_samples", "started_fine_tuning"):
        setattr(trainer, key, meta[key])
    trainer.activation_scaler.scaling_factor = meta["scaling_factor"]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return None  # functions (LambdaLR's lambdas) are rebuilt by the trainer itself
