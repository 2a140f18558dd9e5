"""Tokenising texts into contexts and reading activations at a hook, batch by batch.

Every metric that looks at activations (fake features, reconstruction faithfulness, probing,
the feature browser) goes through these functions, so the rules live in one place:

* each context starts with the model's start token (``faithful.start_token_id``);
* the forward pass stops right after the hook's layer (``stop_at_layer``) unless logits are needed;
* position 0, special tokens and padding are masked out by ``faithful.content_mask``;
* evaluation contexts are packed the same way for every metric (:func:`eval_contexts`);
* on CPU the language model runs under bf16 autocast by default (≈4.5× faster matmuls here);
  pass ``autocast=False`` for exact fp32;
* residual-stream hooks on unpadded contexts are read by :func:`faithful.lm_forward.residual_forward`
  (TransformerLens's blocks with fused SDPA attention; the same activations, faster); other
  hooks, and padded batches, by ``run_with_cache``;
* ``compile=True`` runs the forward pass to a residual-stream hook through ``torch.compile``
  (:func:`compiled_forward`): on this CPU ≈2.4× the eager speed, because the fp32 elementwise
  work around the bf16 matmuls (RMSNorm, rotary, reshapes) is fused and the weights are
  prepacked. It compiles once per model, hook and batch shape (≈1 min for SmolLM2 on 2
  cores; PyTorch caches compiled code on disk, so a later process compiles faster);
* glibc is asked to keep freed memory for the next batch (:func:`faithful.lm_forward.keep_freed_memory`).
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .lm_forward import keep_freed_memory, residual_forward, sdpa_view
from .models import content_mask, special_token_ids, start_token_id


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


def autocast_context(model, autocast: bool | None = None):
    """bf16 autocast on CPU by default (``autocast=None``); nothing on GPU unless asked."""
    device = torch.device(model.cfg.device or "cpu")
    if autocast is None:
        autocast = device.type == "cpu"
    if not autocast:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def layer_of(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    if not m:
        raise ValueError(f"cannot read a layer from hook name {hook!r} (expected 'blocks.N.hook_…')")
    return int(m.group(1))


_COMPILED_ATTR = "_faithful_compiled"  # on the model: the cache lives and dies with it


def residual_stop(hook: str) -> int | None:
    """``L`` for ``blocks.L.hook_resid_pre``, ``L + 1`` for ``blocks.L.hook_resid_post``, else None."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    return int(m.group(1)) + (m.group(2) == "post") if m else None


def compiled_forward(model, hook: str):
    """``tokens ↦ activations at hook`` through ``torch.compile``, cached per model and hook.

    Only residual-stream hooks (``blocks.L.hook_resid_pre`` / ``hook_resid_post``) are
    supported: the function is :func:`faithful.lm_forward.residual_forward`, which returns the
    residual stream where it stops, with no hooks at all. Compiled with inductor's *freezing*,
    so the model's weights are read once: a model whose weights are then changed needs a new object.
    """
    import torch._inductor.config as inductor_config

    stop = residual_stop(hook)
    if stop is None:
        raise ValueError(f"compile=True supports residual-stream hooks (blocks.L.hook_resid_pre/post), "
                         f"not {hook!r}: pass compile=False")
    per_model = model.__dict__.setdefault(_COMPILED_ATTR, {})
    if stop not in per_model:
        view = sdpa_view(model)  # built outside the traced function: copying modules breaks graphs

        def forward(tokens):
            return residual_forward(view, tokens, stop)
        compiled = torch.compile(forward, dynamic=False)

        def frozen(tokens):
            # Freezing makes the weights constants, prepacked for the CPU's bf16 matmul kernels
            # (+15% here); it must be on when a call compiles (options= does not reach it).
            # The model's weights must not change afterwards: they are baked in.
            with inductor_config.patch(freezing=True):
                return compiled(tokens)
        per_model[stop] = frozen
    return per_model[stop]


def _run_compiled(fn, toks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Call ``fn`` on ``toks`` padded to ``batch_size`` rows (one static shape, one compilation)."""
    n = toks.shape[0]
    if n < batch_size:
        toks = torch.cat([toks, toks[-1:].expand(batch_size - n, -1)])
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    try:
        return fn(toks)[:n]
    except (BackendCompilerFailed, InductorError) as err:  # inductor needs a C++ compiler on CPU
        raise RuntimeError(f"torch.compile could not build the language model's kernels: {err}\n"
                           "Install a C/C++ compiler (e.g. gcc) or run without compiling "
                           "(compile=False; for training, compile_lm=False in the profile).") from err


@torch.no_grad()
def iter_activations(model, tokens: torch.Tensor, hook: str, *, attention_mask: torch.Tensor | None = None,
                     batch_size: int = 16, autocast: bool | None = None, progress: bool = False,
                     compile: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """Yield ``(activations [b, pos, d_in] float32, content mask [b, pos], row slice)`` per batch.

    ``compile=True`` uses :func:`compiled_forward` (residual-stream hooks, no attention mask).
    """
    from tqdm.auto import tqdm

    special = special_token_ids(model)
    stop = layer_of(hook) + 1
    resid_stop = residual_stop(hook)
    device = model.cfg.device
    if torch.device(device or "cpu").type == "cpu":
        keep_freed_memory()
    if compile and attention_mask is not None:
        raise ValueError("compile=True runs unpadded contexts only: pass attention_mask=None or compile=False")
    fn = compiled_forward(model, hook) if compile else None
    view = sdpa_view(model) if fn is None and resid_stop is not None and attention_mask is None else None
    starts = range(0, tokens.shape[0], batch_size)
    for s in tqdm(starts, desc=f"activations {hook}", disable=not progress, leave=False):
        rows = slice(s, min(s + batch_size, tokens.shape[0]))
        toks = tokens[rows].to(device)
        attn = attention_mask[rows].to(device) if attention_mask is not None else None
        with autocast_context(model, autocast):
            if fn is not None:
                acts = _run_compiled(fn, toks, batch_size)
            elif view is not None:
                acts = residual_forward(view, toks, resid_stop)
            else:
                _, cache = model.run_with_cache(toks, names_filter=hook, stop_at_layer=stop,
                                                attention_mask=attn)
                acts = cache[hook]
        yield acts.float(), content_mask(toks, special, attn), rows


def collect_activations(model, tokens: torch.Tensor, hook: str, **kwargs) -> torch.Tensor:
    """All content-position activations at ``hook``, flattened to ``[n_tokens, d_in]``."""
    parts = [acts[mask] for acts, mask, _ in iter_activations(model, tokens, hook, **kwargs)]
    if not parts:
        return torch.empty(0, model.cfg.d_model)
    return torch.cat(parts)


def non_special_vocab(model) -> torch.Tensor:
    """Token ids that are not special tokens: the support of random-token inputs."""
    special = torch.tensor(special_token_ids(model), dtype=torch.long)
    ids = torch.arange(model.cfg.d_vocab)
    return ids[~torch.isin(ids, special)]


def random_token_contexts(model, n_contexts: int, context_size: int, seed: int) -> torch.Tensor:
    """``[n_contexts, context_size]``: the start token, then tokens uniform over the non-special vocabulary."""
    if n_contexts <= 0 or context_size < 2:
        raise ValueError("need n_contexts ≥ 1 and context_size ≥ 2")
    vocab = non_special_vocab(model)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(vocab), (n_contexts, context_size - 1), generator=gen)
    start = torch.full((n_contexts, 1), start_token_id(model), dtype=torch.long)
    return torch.cat([start, vocab[idx]], dim=1)


def eval_contexts(model, dataset, *, n_tokens: int, context_size: int, seed: int,
                  progress: bool = False) -> torch.Tensor:
    """``[n_contexts, context_size]`` packed contexts holding ``n_tokens`` tokens after the start token.

    ``dataset``: a ``datasets.Dataset`` (``token_ids`` used when present, else ``text``), a list
    of texts, or a name/path for :func:`faithful.load_corpus` (a Faithful dataset folder, a
    shared-data file name …). Documents are taken in a ``seed``-ed order, each truncated to
    ``context_size − 1`` tokens, separated by the start token, packed and cut into rows of
    ``context_size − 1``; each row starts with the start token. A dataset too small for the
    budget gives fewer rows, with a warning.
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
    docs, use_ids = _documents(dataset)
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
        ids = ids[:body]
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


def _documents(dataset) -> tuple[Sequence, bool]:
    """(documents, are_token_ids) from a Dataset, a list of texts or a corpus name/path."""
    if isinstance(dataset, (str, Path)):
        from .corpora import load_corpus

        dataset = load_corpus(dataset)
    if isinstance(dataset, (list, tuple)):
        if not all(isinstance(t, str) for t in dataset):
            raise TypeError("a list dataset must hold texts (str)")
        return list(dataset), False
    cols = getattr(dataset, "column_names", None)
    if cols is None:
        raise TypeError(f"dataset must be a datasets.Dataset, a list of texts or a corpus name/path, "
                        f"not {type(dataset).__name__}")
    if "token_ids" in cols:
        return dataset["token_ids"], True
    if "text" in cols:
        return dataset["text"], False
    raise ValueError(f"the dataset has neither a 'token_ids' nor a 'text' column (columns: {cols})")
