"""Batched unconditional sampling with a KV cache: the inner loop of Faithful generation.

Every sequence of a batch starts from the same single start token, so all rows always have
the same length: no padding, no attention mask, no position bookkeeping. A row that samples a
stop token (or reaches ``max_length``) leaves the batch, and its rows are dropped from the KV
cache, so finished rows cost nothing.

Two interchangeable *steppers* run the model one token at a time (``step(tokens [B, 1]) ->
logits [B, V]``, ``keep(mask)`` drops rows):

* :class:`HFStepper` – the plain Hugging Face causal LM behind the model (same weights: for the
  embedded model the converted folder in ``data/models``), with a ``DynamicCache`` that appends
  in place. The fastest path on CPU: no hook points, SDPA attention with grouped KV heads.
* :class:`HookedStepper` – the ``HookedTransformer`` itself with TransformerLens's KV cache;
  works for every model ``faithful.load_model`` returns (the tiny test model included).

The weights run in the precision :func:`faithful.precision.choose` picks for the device (bf16
only where bf16 products measured faster); logits are turned to float32 before temperature,
top-p and sampling.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from .. import precision
from ..models import EMBEDDED, ensure_embedded_model, model_name


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The sampling weights' dtype on ``device``: the precision policy's choice (:func:`faithful.precision.choose`)."""
    return precision.dtype(precision.choose(device))


class HookedStepper:
    """One-token steps of a ``HookedTransformer`` with TransformerLens's KV cache."""

    name = "hooked"

    def __init__(self, model, dtype: torch.dtype):
        if model.cfg.dtype != dtype:  # a private copy: never change the caller's model
            model = copy.deepcopy(model).to(dtype)
            model.cfg.dtype = dtype
        self.model, self.device = model, torch.device(model.cfg.device or "cpu")
        self.cache = None

    def reset(self, batch: int) -> None:
        self.cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, batch)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens.to(self.device), past_kv_cache=self.cache,
                            attention_mask=torch.ones_like(tokens, device=self.device))
        return logits[:, -1].float()

    def keep(self, mask: torch.Tensor) -> None:
        idx = mask.nonzero().squeeze(1).to(self.device)
        for entry in self.cache.entries:
            entry.past_keys = entry.past_keys[idx]
            entry.past_values = entry.past_values[idx]
        self.cache.previous_attention_mask = self.cache.previous_attention_mask[idx]


class HFStepper:
    """One-token steps of the Hugging Face causal LM (``source``: folder or hub id)."""

    name = "hf"

    def __init__(self, source: str | Path, device: str | torch.device, dtype: torch.dtype):
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(source), dtype=dtype, attn_implementation="sdpa").to(self.device).eval()
        self.cache = None

    def reset(self, batch: int) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.cache.layers = [_append_in_place_layer()() if type(layer) is DynamicLayer else layer
                             for layer in self.cache.layers]  # sliding-window layers stay as they are

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=tokens.to(self.device), past_key_values=self.cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def keep(self, mask: torch.Tensor) -> None:
        self.cache.batch_select_indices(mask.nonzero().squeeze(1).to(self.device))


@functools.lru_cache(maxsize=None)
def _append_in_place_layer() -> type:
    """The cache layer class :class:`HFStepper` uses (defined on first use: transformers loads lazily)."""
    class AppendInPlace(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers with room to spare.

        ``DynamicLayer`` appends each step's token with ``torch.cat``, copying the whole cache
        every step; here it is written in place, and a full buffer doubles. HFStepper only
        appends and drops rows (``update``, ``batch_select_indices``).
        """

        def update(self, key_states, value_states, *args, **kwargs):
            n, m = (self.keys.shape[-2] if self.is_initialized else 0), key_states.shape[-2]
            if not self.is_initialized or n + m > self._k.shape[-2]:
                room = max(2 * (n + m), 64)
                self._k = key_states.new_empty(*key_states.shape[:2], room, key_states.shape[-1])
                self._v = value_states.new_empty(*value_states.shape[:2], room, value_states.shape[-1])
                if self.is_initialized:
                    self._k[:, :, :n], self._v[:, :, :n] = self.keys, self.values
                self.device, self.is_initialized = key_states.device, True
            self._k[:, :, n:n + m], self._v[:, :, n:n + m] = key_states, value_states
            self.keys, self.values = self._k[:, :, :n + m], self._v[:, :, :n + m]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                n = self.keys.shape[-2]
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    return AppendInPlace


def hf_source(model) -> str | None:
    """The Hugging Face folder or hub id holding ``model``'s weights, or None.

    The embedded model's converted folder; otherwise the tokenizer's ``name_or_path`` when its
    config has the model's depth, width and vocabulary (so the tiny random model, which borrows
    SmolLM2's tokenizer, is not mistaken for SmolLM2).
    """
    if model_name(model) == EMBEDDED:
        return str(ensure_embedded_model())
    candidate = getattr(model, "faithful_source", None) or getattr(
        model.tokenizer, "name_or_path", None)
    if not candidate:
        return None
    try:
        cfg = AutoConfig.from_pretrained(str(candidate))
    except Exception:
        return None
    same = (getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layer", None)) == model.cfg.n_layers
            and getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)) == model.cfg.d_model
            and getattr(cfg, "vocab_size", None) == model.cfg.d_vocab)
    return str(candidate) if same else None


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)``, nucleus-truncated at ``top_p``.

    Inverse-CDF sampling: ``exp(logits - max)``, its running sum, one uniform number per row
    and a binary search. This is exact up to float32 rounding of the running sum (torch
    accumulates it in float64, so the mass of any run of tokens is off by < 2^-23 of the
    total) and about 10x cheaper than ``torch.multinomial`` or an exponential race over
    SmolLM2's 49k-token vocabulary, where sampling would otherwise rival the forward pass.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
    order = None
    if top_p < 1.0:
        weights, order = weights.sort(dim=-1, descending=True)
        cum = weights.cumsum(dim=-1)
        # tokens wholly past the nucleus (up to float rounding); the first one always stays
        beyond = (cum - weights) >= (top_p - 1e-6) * cum[:, -1:]
        weights = weights.masked_fill(beyond, 0.0)
    cum = weights.cumsum_(dim=-1)
    u = torch.rand((cum.shape[0], 1), generator=generator, device=cum.device) * cum[:, -1:]
    idx = torch.searchsorted(cum, u, right=True).clamp_(max=cum.shape[-1] - 1)
    if order is not None:
        idx = order.gather(-1, idx)
    return idx.squeeze(-1)


@torch.inference_mode()
def sample_batch(stepper, n_rows: int, *, start_id: int, stop_ids, max_length: int,
                 temperature: float, top_p: float, generator: torch.Generator,
                 first_tokens: torch.Tensor | None = None, on_tokens=None) -> list[list[int]]:
    """Sample ``n_rows`` documents from the start token; return their token ids.

    Each list holds the generated tokens only: no start token, no stop token, at most
    ``max_length`` ids. ``first_tokens`` (the ``flat`` start): the first token is drawn
    uniformly from these ids instead of from the model. ``on_tokens(n)`` is called after each
    step with the number of tokens kept (for a progress bar).
    """
    stop = torch.as_tensor(sorted(stop_ids), dtype=torch.long)
    out = torch.zeros((n_rows, max_length), dtype=torch.long)
    lengths = torch.zeros(n_rows, dtype=torch.long)
    rows = torch.arange(n_rows)  # which output row each live batch row writes to
    stepper.reset(n_rows)
    logits = stepper.step(torch.full((n_rows, 1), start_id, dtype=torch.long))
    for t in range(max_length):
        if t == 0 and first_tokens is not None:
            pick = torch.randint(len(first_tokens), (len(rows),), generator=generator,
                                 device=generator.device).cpu()
            nxt = first_tokens[pick]
        else:
            nxt = sample_next(logits, temperature, top_p, generator).cpu()
        ended = torch.isin(nxt, stop)
        live = ~ended
        out[rows[live], t] = nxt[live]
        lengths[rows[live]] += 1
        if on_tokens is not None:
            on_tokens(int(live.sum()))
        if t + 1 == max_length or not bool(live.any()):
            break
        if not bool(live.all()):
            stepper.keep(live)
            rows, nxt = rows[live], nxt[live]
        logits = stepper.step(nxt[:, None])
    return [out[i, : int(lengths[i])].tolist() for i in range(n_rows)]
