"""A cheaper training step for SAELens's TopK SAE: the same loss and gradients, fewer dense passes.

SAELens's ``TopKTrainingSAE.training_forward_pass`` works on dense ``[batch, d_sae]`` tensors
throughout: the ReLU'd TopK activations are scattered into a dense matrix and decoded by a
dense matmul, the AuxK activations likewise over all latents, and the decoder-norm rescaling
multiplies the full pre-activations with autograd watching. With ``k`` = 32 of 4,608 latents
that is almost all zeros, and on a CPU those passes cost more than the encoder's matmul.

:func:`topk_losses` computes the same quantities with only the work that has to be dense:

* one encoder matmul ``(x - b_dec) @ W_enc`` (bf16 when the trainer autocasts) without
  autograd; ``b_dec``'s gradient through the input is a vector product, and ``b_enc``'s an
  ``index_add_`` over the chosen latents;
* TopK selection, then a gather of the ``k`` chosen pre-activations, which carry the gradient
  (:class:`_EncoderAt`: one ``xᵀ G`` matmul in the backward pass);
* decoding with ``embedding_bag``: ``Σ_j a_j / ‖W_dec[j]‖ · W_dec[j]`` over the ``k`` chosen rows;
* AuxK: the ``d_in / 2`` chosen dead latents are gathered in the same pass and decoded by one
  dense matmul over the dead latents' decoder rows only (:class:`_DeadDecode`).

The ``[batch, d_sae]`` buffers are reused from step to step (:class:`Workspace`).

:class:`TopKTrainer` is SAELens's ``SAETrainer`` (Adam, clipping at 1.0, schedulers, dead-latent
counters, logging dict) with ``_train_step`` routed through :func:`topk_losses`, and Adam's
fused kernel. ``tests/unit/test_topk_step.py`` checks the losses and every gradient against
SAELens's own forward pass, and whole optimiser steps against SAELens's trainer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:
    from sae_lens.saes.sae import TrainStepOutput
    from sae_lens.training.sae_trainer import SAETrainer
except ImportError as err:  # pragma: no cover - sae_lens is a hard dependency
    raise ImportError("faithful.topk_step needs sae_lens>=6 (pip install -e .)") from err

SUPPORTED_NORMALISATION = ("none", "expected_average_only_in")


class Workspace:
    """Named buffers reused across steps: a fresh 19 MB tensor costs more in page faults on
    first touch than the arithmetic done in it. A name keeps one flat buffer per dtype and
    hands out views of any shape that fits."""

    def __init__(self):
        self._bufs: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape, dtype, device) -> torch.Tensor:
        n, key = math.prod(shape), (name, dtype, torch.device(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


class _EncoderAt(torch.autograd.Function):
    """``xw[i, idx[i, j]] + bias[idx[i, j]]``, where ``xw = x @ W_enc`` was computed without autograd.

    Backward: the ``[batch, k]`` gradient is scattered into a dense ``[batch, d_sae]`` matrix and
    ``∂W_enc = xᵀ G`` is one matmul in ``x``'s dtype. ``idx``'s first ``n_unique`` columns name
    distinct latents per row, and so do the rest (AuxK's), but a latent may be in both parts: the
    second part is added to what the first wrote (1.5 ms at 1,024 × (32 + 288) entries, against
    2.5 ms for index_put_'s ``accumulate``); ``∂bias`` is an fp32 ``index_add_`` (autograd's own
    backward of ``bias[idx]`` does the same sum ten times slower).
    """

    @staticmethod
    def forward(ctx, W_enc, bias, x_lp, xw, idx, work, n_unique):
        ctx.save_for_backward(x_lp, idx)
        ctx.d_sae, ctx.dtype, ctx.work, ctx.n_unique = xw.shape[1], W_enc.dtype, work, n_unique
        return xw.gather(1, idx).to(W_enc.dtype) + bias[idx]

    @staticmethod
    def backward(ctx, grad):
        x_lp, idx = ctx.saved_tensors
        dense = ctx.work.get("grad_pre", (grad.shape[0], ctx.d_sae), x_lp.dtype, grad.device)
        g, k = grad.to(x_lp.dtype), ctx.n_unique
        _put(dense.zero_(), idx[:, :k], g[:, :k])
        if idx.shape[1] > k:
            flat = _flat(dense, idx[:, k:])
            dense.view(-1).index_put_((flat,), dense.view(-1)[flat] + g[:, k:].flatten())
        grad_W = (x_lp.T.contiguous() @ dense).to(ctx.dtype)  # contiguous: 2× faster
        grad_bias = grad.new_zeros(ctx.d_sae).index_add_(0, idx.flatten(), grad.flatten())
        return grad_W, grad_bias, None, None, None, None, None


class _DeadDecode(torch.autograd.Function):
    """AuxK's reconstruction ``Σ_j vals[i, j] · W_dec[dead_ids[pos[i, j]]]`` as one dense matmul
    over the dead latents' rows: ``[batch, n_dead] @ W_dec[dead_ids]`` in dtype ``lp``.

    ``d_in / 2`` latents per row are too many for ``embedding_bag``, and a matmul over all
    ``d_sae`` rows does work for live latents that are never chosen. ``pos`` holds distinct
    positions per row (``None``: every dead latent, in order).
    """

    @staticmethod
    def forward(ctx, W_dec, dead_ids, pos, vals, work, lp):
        W_sub = W_dec.index_select(0, dead_ids).to(lp)
        if pos is None:
            dense = vals.to(lp)
        else:
            dense = _put(work.get("aux_acts", (vals.shape[0], len(dead_ids)), lp, vals.device).zero_(),
                         pos, vals.to(lp))
        ctx.save_for_backward(W_sub, dead_ids, pos, dense)  # dense may be a workspace view:
        ctx.work, ctx.dtype, ctx.d_sae = work, W_dec.dtype, W_dec.shape[0]  # reuse before backward raises
        return (dense @ W_sub).to(W_dec.dtype)

    @staticmethod
    def backward(ctx, grad):
        W_sub, dead_ids, pos, dense = ctx.saved_tensors
        g = grad.to(W_sub.dtype)
        grad_W = ctx.work.get("aux_grad_W_dec", (ctx.d_sae, W_sub.shape[1]), ctx.dtype, g.device).zero_()
        grad_W.index_copy_(0, dead_ids, (dense.T @ g).to(ctx.dtype))
        grad_vals = g @ W_sub.T
        grad_vals = (grad_vals if pos is None else grad_vals.gather(1, pos)).to(ctx.dtype)
        return grad_W, None, None, grad_vals, None, None


def _flat(dense: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Positions of ``dense[i, idx[i, j]]`` in ``dense.view(-1)``, flattened."""
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None] * dense.shape[1]
    return (idx + rows).flatten()


def _put(dense: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``dense[i, idx[i, j]] = vals[i, j]`` (distinct ``idx`` per row), by index_put_ on the flat
    view: scatter_ converts bf16 to fp32 and back on CPU, ten times slower."""
    dense.view(-1).index_put_((_flat(dense, idx),), vals.flatten())
    return dense


def topk_losses(sae, x: torch.Tensor, dead: torch.Tensor | None, *, bf16: bool = False,
                work: Workspace | None = None) -> dict:
    """The losses of SAELens's ``TopKTrainingSAE`` on the (already scaled) batch ``x``.

    Returns a dict with ``loss`` (MSE + AuxK, differentiable), ``mse_loss``,
    ``auxiliary_reconstruction_loss``, ``sae_out`` ``[batch, d_in]``, ``indices`` and ``acts``
    (``[batch, k]``: the chosen latents and their ReLU'd activations) and ``hidden_pre`` (the
    rescaled pre-activations, no gradient; a reused buffer when ``work`` is given). ``dead`` is
    the trainer's dead-latent mask; ``bf16`` runs the encoder and AuxK matmuls in bf16.
    """
    cfg = sae.cfg
    if cfg.normalize_activations not in SUPPORTED_NORMALISATION:
        raise ValueError(f"topk_losses supports normalize_activations in {SUPPORTED_NORMALISATION}, "
                         f"not {cfg.normalize_activations!r}: train with SAELens's own step instead")
    if cfg.reshape_activations != "none" or x.dim() != 2:
        raise ValueError(f"topk_losses takes a [batch, d_in] batch (reshape_activations='none'), not "
                         f"shape {tuple(x.shape)} with reshape_activations={cfg.reshape_activations!r}")
    work = work or Workspace()
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dt, lp = W_enc.dtype, torch.bfloat16 if bf16 else W_enc.dtype
    x = x.to(dt)
    if cfg.apply_b_dec_to_input:
        # x - b_dec is rounded to bf16 once, as under SAELens's autocast; b_dec's gradient
        # through the input, -(Σ_i ∂pre_i) W_encᵀ, flows through a zero-valued vector term
        # (W_enc's gradient from it would be an outer product with zeros: it is not computed).
        x_lp = (x - b_dec.detach()).to(lp)
        bias = b_enc - (b_dec - b_dec.detach()) @ W_enc.detach()
    else:
        x_lp, bias = x.to(lp), b_enc
    # The decoder norm only ranks latents: the decoder reads activation ÷ norm, in which it
    # cancels, so no gradient flows through it (as in SAELens, where it cancels numerically).
    norm = W_dec.detach().norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    shape = (x.shape[0], cfg.d_sae)
    with torch.no_grad():
        W_lp = W_enc if lp == dt else work.get("W_enc", W_enc.shape, lp, x.device).copy_(W_enc)
        xw = torch.mm(x_lp, W_lp, out=work.get("xw", shape, lp, x.device))
        # copy_ then add_: torch.add(xw, bias, out=) converts xw into a fresh fp32 tensor first
        # (3.1 ms against 0.9 ms at 1,024 × 4,608, and 19 MB allocated per step).
        hidden_pre = work.get("hidden_pre", shape, dt, x.device).copy_(xw).add_(bias)
        if norm is not None:
            hidden_pre.mul_(norm)
        idx = hidden_pre.topk(cfg.k, dim=-1, sorted=False).indices
        n_dead = int(dead.sum()) if dead is not None else 0
        aux_idx = pos = None
        if n_dead:
            dead_ids, pos = _aux_latents(hidden_pre, dead, n_dead, x.shape[-1] // 2, work)
            aux_idx = dead_ids.expand(x.shape[0], -1) if pos is None else dead_ids[pos]
    # One gather for the TopK and the AuxK latents (a dead latent may be in both: gradients add).
    both = idx if aux_idx is None else torch.cat([idx, aux_idx], dim=1)
    raw = _EncoderAt.apply(W_enc, bias, x_lp, xw, both, work, cfg.k)
    pre = raw[:, :cfg.k]
    # The decoder reads activation ÷ decoder norm when rescaling: that is the raw pre-activation.
    acts = (pre * norm[idx]).relu() if norm is not None else pre.relu()
    sae_out = F.embedding_bag(idx, W_dec, per_sample_weights=pre.relu(), mode="sum") + b_dec
    mse = (sae_out - x).pow(2).sum(-1).mean()
    aux = mse.new_zeros(())
    if aux_idx is not None:
        # AuxK (Gao et al. App. A.2) as SAELens computes it: the chosen dead latents, without
        # ReLU, reconstruct the live latents' residual without bias; scaled by min(n_dead / k_aux, 1).
        recon = _DeadDecode.apply(W_dec, dead_ids, pos, raw[:, cfg.k:], work, lp)
        scale = min(n_dead / (x.shape[-1] // 2), 1.0)
        aux = cfg.aux_loss_coefficient * scale * (recon - (x - sae_out).detach()).pow(2).sum(-1).mean()
    return {"loss": mse + aux, "mse_loss": mse, "auxiliary_reconstruction_loss": aux,
            "sae_out": sae_out, "indices": idx, "acts": acts, "hidden_pre": hidden_pre}


def _aux_latents(hidden_pre, dead, n_dead: int, k_aux: int, work):
    """``(dead_ids, pos)``: each row's top ``k_aux`` dead latents by (rescaled) pre-activation
    are ``dead_ids[pos[i]]``; ``pos`` is None when there are at most ``k_aux`` (all are chosen)."""
    dead_ids = dead.nonzero().squeeze(1)
    if n_dead <= k_aux:
        return dead_ids, None
    cols = work.get("dead_pre", (hidden_pre.shape[0], n_dead), hidden_pre.dtype, hidden_pre.device)
    torch.index_select(hidden_pre, 1, dead_ids, out=cols)
    return dead_ids, cols.topk(k_aux, dim=-1, sorted=False).indices


def sparse_acts(indices: torch.Tensor, acts: torch.Tensor, d_sae: int) -> torch.Tensor:
    """``[batch, d_sae]`` sparse COO tensor of the TopK activations (what SAELens logs)."""
    rows = torch.arange(indices.shape[0], device=indices.device).repeat_interleave(indices.shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, indices.flatten()]), acts.detach().flatten(),
                                   (indices.shape[0], d_sae), check_invariants=False)


class TopKTrainer(SAETrainer):
    """SAELens's ``SAETrainer`` whose step uses :func:`topk_losses` and fused Adam.

    Everything else — Adam's settings, gradient clipping at 1.0, the LR and coefficient
    schedulers, the dead-latent counters and ``build_train_step_log_dict`` — is SAELens's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.work = Workspace()
        if self.sae.W_enc.device.type in ("cpu", "cuda"):  # fused Adam's devices
            for group in self.optimizer.param_groups:  # before the first step creates Adam's state
                group["foreach"], group["fused"] = None, True

    def _train_step(self, sae, sae_in: torch.Tensor) -> TrainStepOutput:
        sae.train()
        out = topk_losses(sae, sae_in, self.dead_neurons, bf16=self.cfg.autocast, work=self.work)
        with torch.no_grad():
            fired = out["indices"][out["acts"] > 0]
            counts = torch.bincount(fired, minlength=sae.cfg.d_sae).to(self.act_freq_scores.dtype)
            self.n_forward_passes_since_fired += 1
            self.n_forward_passes_since_fired[counts > 0] = 0
            self.act_freq_scores += counts
            self.n_frac_active_samples += self.cfg.train_batch_size_samples
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        # hidden_pre is a workspace buffer: the next step overwrites it (SAELens's log dict
        # does not read it).
        return TrainStepOutput(
            sae_in=sae_in, sae_out=out["sae_out"].detach(),
            feature_acts=sparse_acts(out["indices"], out["acts"], sae.cfg.d_sae),
            hidden_pre=out["hidden_pre"], loss=out["loss"].detach(),
            losses={k: out[k].detach() for k in ("mse_loss", "auxiliary_reconstruction_loss")})
