"""Tokenising texts into contexts and reading activations at a hook, batch by batch.

Every metric that looks at activations (fake features, reconstruction faithfulness, probing,
the feature browser) goes through these functions, so the rules live in one place:

* each context starts with the model's start token (``faithful.start_token_id``);
* the forward pass stops right after the hook's layer (``stop_at_layer``) unless logits are needed;
* position 0, special tokens and padding are masked out by ``faithful.content_mask``;
* evaluation contexts are packed the same way for every metric (:func:`eval_contexts`), from the
  documents held out from training (:mod:`faithful.data.splits`);
* the language model runs in the precision :func:`faithful.precision.choose` picks for its device
  (bf16 autocast only where bf16 products measured faster); ``autocast=True``/``False`` forces
  bf16/fp32 for one call;
* activations are read by ``run_with_cache`` (whole contexts get an all-ones attention mask, so
  that TransformerLens never guesses padding from the token ids);
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from . import precision
from .data.corpora import load_corpus
from .data.splits import take_part
from .models import content_mask, non_special_vocab, special_token_ids, start_token_id

SINK_NORM_RATIO = 5.0
"""A content token whose activation norm exceeds this multiple of its batch's median norm is a
sink, left out of ``explained_variance_without_sinks``. SmolLM2's sinks are 24–75× the median;
other tokens stay under 3×."""


def not_sinks(x: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: the rows of ``x`` ``[n, d]`` whose norm is at most :data:`SINK_NORM_RATIO` × their median."""
    norms = x.norm(dim=-1)
    return norms <= SINK_NORM_RATIO * norms.median() if len(norms) else norms.bool()


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """``Σ‖x − x̄‖²`` over the rows of ``x`` (a float64 scalar)."""
    x64 = x.double()
    return (x64 - x64.mean(0)).pow(2).sum()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor | None, total: torch.Tensor | None = None,
                       row_errors: torch.Tensor | None = None) -> float:
    """``1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`` over the rows of ``x`` (float64; NaN for no rows).
    ``total``: :func:`total_variance` of ``x``, when several reconstructions of one batch share it;
    ``row_errors``: the rows' ``‖x − x̂‖²``, when the caller has them (``x_hat`` is then not read)."""
    if not len(x):
        return float("nan")
    total = total_variance(x) if total is None else total
    err = row_errors.double().sum() if row_errors is not None else (x.double() - x_hat.double()).pow(2).sum()
    return (1 - err / total).item()


def tokenize_texts(model, texts: Sequence[str], context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise each text into one context ``[start, tokens…]`` truncated to ``context_size``.

    Returns ``(tokens, attention_mask)``, both ``[len(texts), context_size]``, right-padded.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 (start token + one token), got {context_size}")
    if context_size > model.cfg.n_ctx:
        raise ValueError(f"context_size {context_size} exceeds the model's context of {model.cfg.n_ctx} tokens")
    tok = model.tokenizer
    start = start_token_id(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else start
    tokens = torch.full((len(texts), context_size), pad, dtype=torch.long)
    attn = torch.zeros((len(texts), context_size), dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [start] + tok(text, add_special_tokens=False)["input_ids"][: context_size - 1]
        tokens[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = 1
    return tokens, attn


def lm_precision(model, autocast: bool | None = None) -> str:
    """``"bf16"`` or ``"fp32"``: what ``model`` runs in (:func:`faithful.precision.choose` for its device)."""
    return precision.choose(model.cfg.device or "cpu", autocast)


def token_digest(tokens: torch.Tensor) -> str:
    """A short SHA-256 digest of packed token ids: names a training stream or an evaluation set."""
    return hashlib.sha256(tokens.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def layer_of(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    if not m:
        raise ValueError(f"cannot read a layer from hook name {hook!r} (expected 'blocks.N.hook_…')")
    return int(m.group(1))


@torch.no_grad()
def iter_activations(model, tokens: torch.Tensor, hook: str, *, attention_mask: torch.Tensor | None = None,
                     batch_size: int = 16, autocast: bool | None = None, progress: bool = False
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """Yield ``(activations [b, pos, d_in] float32, content mask [b, pos], row slice)`` per batch.

    ``autocast``: None for the precision policy's choice, True/False for bf16/fp32.
    """
    special = special_token_ids(model)
    stop = layer_of(hook) + 1
    device = model.cfg.device
    prec = lm_precision(model, autocast)
    starts = range(0, tokens.shape[0], batch_size)
    for s in tqdm(starts, desc=f"activations {hook}", disable=not progress, leave=False):
        rows = slice(s, min(s + batch_size, tokens.shape[0]))
        toks = tokens[rows].to(device)
        attn = attention_mask[rows].to(device) if attention_mask is not None else None
        with precision.autocast(device, prec):
            _, cache = model.run_with_cache(toks, names_filter=hook, stop_at_layer=stop,
                                            attention_mask=torch.ones_like(toks) if attn is None else attn)
        yield cache[hook].float(), content_mask(toks, special, attn), rows


def collect_activations(model, tokens: torch.Tensor, hook: str, **kwargs) -> torch.Tensor:
    """All content-position activations at ``hook``, flattened to ``[n_tokens, d_in]``."""
    parts = [acts[mask] for acts, mask, _ in iter_activations(model, tokens, hook, **kwargs)]
    if not parts:
        return torch.empty(0, model.cfg.d_model)
    return torch.cat(parts)


def random_token_contexts(model, n_contexts: int, context_size: int, seed: int) -> torch.Tensor:
    """``[n_contexts, context_size]``: the start token, then tokens uniform over the non-special vocabulary."""
    if n_contexts <= 0 or context_size < 2:
        raise ValueError("need n_contexts ≥ 1 and context_size ≥ 2")
    vocab = non_special_vocab(model)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(vocab), (n_contexts, context_size - 1), generator=gen)
    start = torch.full((n_contexts, 1), start_token_id(model), dtype=torch.long)
    return torch.cat([start, vocab[idx]], dim=1)


def eval_contexts(model, dataset, *, n_tokens: int, context_size: int, seed: int, split: str | None = "eval",
                  progress: bool = False) -> torch.Tensor:
    """``[n_contexts, context_size]`` packed contexts holding ``n_tokens`` tokens after the start token.

    ``dataset``: a ``datasets.Dataset`` (``token_ids`` used when present, else ``text``), a list
    of texts, or a name/path for :func:`faithful.load_corpus` (a Faithful dataset folder, a
    shared-data file name …). ``split``: ``"eval"`` reads only the documents held out from
    training (:mod:`faithful.data.splits`), ``None`` all of them. Documents are taken in a
    ``seed``-ed order, joined by the start token, packed and cut into rows of ``context_size − 1``
    tokens (as training packs them); each row starts with the start token. A dataset too small
    for the budget gives fewer rows, with a warning.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if not 2 <= context_size <= model.cfg.n_ctx:
        raise ValueError(f"context_size must be in 2..{model.cfg.n_ctx} (the model's context), got {context_size}")
    body = context_size - 1
    n_rows = math.ceil(n_tokens / body)
    need = n_rows * body
    start = start_token_id(model)
    special = set(special_token_ids(model))
    docs, use_ids = _documents(dataset, split)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(int(seed))).tolist()
    stream: list[int] = []
    tok = model.tokenizer
    for i in order:
        if len(stream) >= need:
            break
        if use_ids:
            ids = [int(t) for t in docs[i]]
            while ids and ids[0] in special:  # a stored leading start token
                ids = ids[1:]
        else:
            ids = tok(docs[i], add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if stream:
            stream.append(start)
        stream.extend(ids)
    n_full = min(n_rows, len(stream) // body)
    if n_full == 0:
        raise ValueError(f"the evaluation set has only {len(stream)} tokens, fewer than one context "
                         f"({body}); pass more documents or a smaller context_size")
    if n_full < n_rows:
        warnings.warn(f"the evaluation set holds {n_full * body} tokens, fewer than the {n_tokens} asked for; "
                      "using them all", stacklevel=2)
    rows = torch.tensor(stream[: n_full * body], dtype=torch.long).view(n_full, body)
    return torch.cat([torch.full((n_full, 1), start, dtype=torch.long), rows], dim=1)


def _documents(dataset, split: str | None) -> tuple[Sequence, bool]:
    """(documents, are_token_ids) of ``split`` from a Dataset, a list of texts or a corpus name/path."""
    if isinstance(dataset, (str, Path)):
        dataset = load_corpus(dataset)
    if isinstance(dataset, (list, tuple)):
        if not all(isinstance(t, str) for t in dataset):
            raise TypeError("a list dataset must hold texts (str)")
        return (list(dataset) if split is None else take_part(dataset, split)), False
    cols = getattr(dataset, "column_names", None)
    if cols is None:
        raise TypeError(f"dataset must be a datasets.Dataset, a list of texts or a corpus name/path, "
                        f"not {type(dataset).__name__}")
    if "text" not in cols and not (split is None and "token_ids" in cols):
        raise ValueError(f"the dataset has no 'text' column (columns: {cols}); evaluation splits "
                         "documents by their text")
    if split is not None:
        dataset = take_part(dataset, split)
    if "token_ids" in cols:
        return dataset["token_ids"], True
    return dataset["text"], False
