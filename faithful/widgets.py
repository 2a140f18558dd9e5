"""Browse the shared and orphan features of two SAEs (for example two seeds) in JupyterLab.

The library computes, the widget only shows:

* :func:`feature_examples` – each latent's top-activating contexts, its firing frequency;
* :func:`top_logits` – the tokens a latent's decoder direction promotes through the unembedding;
* :func:`feature_html` – one latent as HTML: frequency, promoted tokens, highlighted contexts;
* :class:`FeatureBrowser` – ipywidgets: pick *shared* / *orphan (A)* / *orphan (B)*, slide through
  them, see each latent beside its Hungarian partner and their cosine similarity.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import ipywidgets as W
import torch
from IPython.display import display

from .activations import iter_activations, tokenize_texts
from .metrics.sfr import shared_feature_ratio
from .sae.load import load_sae, sae_hook


@dataclass
class FeatureExamples:
    """Top-activating contexts of every latent of one SAE on a set of texts."""

    tokens: torch.Tensor
    """[n_contexts, context_size] token ids the examples index into."""
    attention_mask: torch.Tensor
    """[n_contexts, context_size] 1 where ``tokens`` is text, 0 on padding."""
    values: torch.Tensor
    """[d_sae, n_top] the latent's largest activation in each of its top contexts (descending)."""
    contexts: torch.Tensor
    """[d_sae, n_top] which context each top value comes from."""
    frequency: torch.Tensor
    """[d_sae] fraction of content tokens on which the latent fires (> 0)."""


def _check_texts(texts) -> list[str]:
    texts = texts if isinstance(texts, str) else list(texts)
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings (one per context), e.g. "
                         "load_corpus(name)['text'][:64]" + ("; got one string" if isinstance(texts, str) else ""))
    if not texts:
        raise ValueError("texts is empty: give the texts whose contexts the browser shows")
    return texts


@torch.no_grad()
def feature_examples(model, sae, texts: Sequence[str], *, context_size: int = 64, n_top: int = 5,
                     batch_size: int = 16, hook: str | None = None, progress: bool = True) -> FeatureExamples:
    """Run ``texts`` through the model and the SAE; keep each latent's ``n_top`` best contexts."""
    sae = load_sae(sae)
    texts = _check_texts(texts)
    hook = sae_hook(model, sae, hook)
    if sae.cfg.d_in != model.cfg.d_model:
        raise ValueError(f"SAE width d_in={sae.cfg.d_in} does not match the model's d_model="
                         f"{model.cfg.d_model}: was it trained on another model?")
    tokens, attn = tokenize_texts(model, list(texts), context_size)
    d_sae = sae.cfg.d_sae
    best_v = torch.full((d_sae, 0), float("-inf"))
    best_c = torch.zeros((d_sae, 0), dtype=torch.long)
    fires = torch.zeros(d_sae)
    n_content = 0
    for acts, mask, rows in iter_activations(model, tokens, hook, attention_mask=attn,
                                             batch_size=batch_size, progress=progress):
        lat = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu() * mask.cpu()[..., None]
        fires += (lat > 0).sum(dim=(0, 1)).float()
        n_content += int(mask.sum())
        per_ctx = lat.amax(dim=1).T                                   # [d_sae, b]
        ctx_ids = torch.arange(rows.start, rows.stop).expand(d_sae, -1)
        v = torch.cat([best_v, per_ctx], dim=1)
        c = torch.cat([best_c, ctx_ids], dim=1)
        top = v.topk(min(n_top, v.shape[1]), dim=1)
        best_v, best_c = top.values, c.gather(1, top.indices)
    return FeatureExamples(tokens, attn, best_v, best_c, fires / max(n_content, 1))


@torch.no_grad()
def top_logits(model, sae, latent: int, k: int = 8) -> list[tuple[str, float]]:
    """Tokens whose logits the latent's decoder direction raises most (direct path through W_U)."""
    logits = sae.W_dec[latent].float().to(model.W_U.device) @ model.W_U.float()
    top = logits.topk(k)
    return [(model.tokenizer.decode([i]), float(v)) for v, i in zip(top.values, top.indices)]


@torch.no_grad()
def token_activations(model, sae, tokens: torch.Tensor, latent: int, hook: str | None = None) -> torch.Tensor:
    """The latent's activation at every position of one context (0 outside the content mask)."""
    hook = sae_hook(model, sae, hook)
    acts, mask, _ = next(iter_activations(model, tokens[None], hook))
    lat = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype))[0, :, latent].float().cpu()
    return lat * mask[0].cpu()


def feature_html(model, sae, examples: FeatureExamples, latent: int, *, title: str = "",
                 window: int = 12) -> str:
    """One latent as an HTML card: frequency, promoted tokens, top contexts with highlights."""
    freq = float(examples.frequency[latent])
    promoted = ", ".join(f"<code>{html.escape(t)}</code>" for t, _ in top_logits(model, sae, latent, 6))
    rows = []
    for v, c in zip(examples.values[latent].tolist(), examples.contexts[latent].tolist()):
        if v <= 0:
            continue
        toks = examples.tokens[c][examples.attention_mask[c].bool()]
        acts = token_activations(model, sae, toks, latent)
        peak = int(acts.argmax())
        lo, hi = max(1, peak - window), min(len(toks), peak + 4)
        spans = []
        for pos in range(lo, hi):
            a = float(acts[pos]) / max(v, 1e-9)
            text = html.escape(model.tokenizer.decode([int(toks[pos])])).replace("\n", "⏎")
            spans.append(f'<span style="background: rgba(255,140,0,{max(a, 0):.2f})">{text}</span>')
        rows.append(f"<li><b>{v:.2f}</b> … {''.join(spans)}</li>")
    body = "".join(rows) or "<li><i>never fires on these texts</i></li>"
    return (f"<div style='font-family: sans-serif; font-size: 13px'><h4>{html.escape(title)} latent "
            f"{latent}</h4><p>fires on {100 * freq:.2f}% of tokens · promotes {promoted}</p>"
            f"<ol>{body}</ol></div>")


class FeatureBrowser:
    """Shared and orphan features of two SAEs, side by side, in an ipywidgets panel.

    ``sfr`` is a :class:`faithful.metrics.sfr.SFRResult` for ``(sae_a, sae_b)``; it is computed when
    omitted. Shared features are listed by descending matched cosine, orphans by ascending
    (the most clearly unmatched first). :meth:`html` gives a page without any widget, for
    scripts and tests; displaying the object in a notebook shows the interactive panel.
    """

    CATEGORIES = ("shared", "orphan (A)", "orphan (B)")

    def __init__(self, model, sae_a, sae_b, texts: Sequence[str], *, sfr=None, threshold: float = 0.7,
                 context_size: int = 64, n_top: int = 5, names: tuple[str, str] = ("A", "B"),
                 progress: bool = True):
        sae_a, sae_b = load_sae(sae_a), load_sae(sae_b)
        texts = _check_texts(texts)
        self.model, self.saes, self.names = model, (sae_a, sae_b), names
        self.sfr = sfr if sfr is not None else shared_feature_ratio(sae_a, sae_b, threshold)
        self.examples = tuple(feature_examples(model, s, texts, context_size=context_size, n_top=n_top,
                                               progress=progress) for s in (sae_a, sae_b))
        pairs, sims = self.sfr.pairs, self.sfr.similarities
        self._partner = ({int(a): (int(b), float(s)) for (a, b), s in zip(pairs, sims)},
                         {int(b): (int(a), float(s)) for (a, b), s in zip(pairs, sims)})
        shared = [int(pairs[i, 0]) for i in (-sims).argsort(kind="stable") if sims[i] > self.sfr.threshold]
        self.lists = {
            "shared": shared,
            "orphan (A)": self._by_similarity(self.sfr.orphans_a, 0),
            "orphan (B)": self._by_similarity(self.sfr.orphans_b, 1),
        }
        self._widget = None

    def _by_similarity(self, latents, side: int) -> list[int]:
        return sorted((int(i) for i in latents), key=lambda i: self._partner[side].get(i, (-1, -2.0))[1])

    def counts(self) -> dict[str, int]:
        return {c: len(v) for c, v in self.lists.items()}

    def html(self, category: str = "shared", index: int = 0) -> str:
        """The page for the ``index``-th latent of ``category``: the latent and its partner."""
        if category not in self.lists:
            raise ValueError(f"unknown category {category!r}; choose one of {self.CATEGORIES}")
        items = self.lists[category]
        if not items:
            return f"<p>No {category} features at threshold {self.sfr.threshold}.</p>"
        if not 0 <= index < len(items):
            raise IndexError(f"{category} has {len(items)} features; index {index} is out of range")
        side = 1 if category == "orphan (B)" else 0
        latent = items[index]
        partner = self._partner[side].get(latent)
        cards = [feature_html(self.model, self.saes[side], self.examples[side], latent, title=self.names[side])]
        if partner is None:
            head = f"{self.names[side]} latent {latent} has no Hungarian partner (wider dictionary)"
        else:
            other, sim = partner
            head = (f"{self.names[side]} {latent} ↔ {self.names[1 - side]} {other}: "
                    f"cosine {sim:.3f} ({'shared' if sim > self.sfr.threshold else 'orphan'})")
            cards.append(feature_html(self.model, self.saes[1 - side], self.examples[1 - side], other,
                                      title=self.names[1 - side]))
        cols = "".join(f"<div style='flex: 1; min-width: 0'>{c}</div>" for c in cards)
        return f"<p><b>{html.escape(head)}</b></p><div style='display: flex; gap: 16px'>{cols}</div>"

    @property
    def widget(self):
        if self._widget is None:
            counts = self.counts()
            category = W.ToggleButtons(options=[(f"{c} ({counts[c]})", c) for c in self.CATEGORIES])
            index = W.IntSlider(0, 0, max(counts["shared"] - 1, 0), description="feature")
            page = W.HTML()

            def refresh(*_):
                n = len(self.lists[category.value])
                index.max = max(n - 1, 0)
                page.value = self.html(category.value, min(index.value, index.max))

            category.observe(refresh, "value")
            index.observe(refresh, "value")
            refresh()
            summary = W.HTML(f"<b>SFR {self.sfr.ratio:.3f}</b> at cosine &gt; {self.sfr.threshold} · "
                             f"{counts['shared']} shared, {counts['orphan (A)']} / {counts['orphan (B)']} orphans")
            self._widget = W.VBox([summary, category, index, page])
        return self._widget

    def _ipython_display_(self):
        display(self.widget)
