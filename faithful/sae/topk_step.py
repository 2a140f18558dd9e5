"""A cheaper training step for SAELens's TopK SAE: the same loss and gradients, by hand.

SAELens's ``TopKTrainingSAE.training_forward_pass`` works on dense ``[batch, d_sae]`` tensors
throughout: the ReLU'd TopK activations are scattered into a dense matrix and decoded by a
dense matmul, the AuxK activations likewise over all latents, and autograd differentiates it
all. With ``k`` = 32 of 4,608 latents that is almost all zeros. :func:`topk_losses` computes the
same losses and writes their gradients into ``.grad`` without autograd, doing densely only what
has to be dense (the way EleutherAI's sparsify does it):

* one encoder matmul ``(x - b_dec) @ W_enc`` (bf16 inputs when the trainer autocasts), then the
  bias, the decoder-norm rescaling and ``torch.topk``;
* the decoder as ``embedding_bag`` over the ``k`` chosen rows of ``W_dec``; its own backward gives
  the gradient at each chosen activation without a ``[batch, d_sae]`` product;
* both weight gradients, ``W_decᵀ``'s ``Sᵀ ∂out`` and ``W_enc``'s ``xᵀ ∂pre``, as products of the
  sparse ``[d_sae, batch]`` matrix of chosen entries (CSR, ``k`` per token) with a dense one;
  ``b_enc``'s is an ``index_add_``, and ``b_dec``'s through the input ``x - b_dec`` is ``-W_enc ∂b_enc``;
* AuxK: the dead latents' columns, dense (``[batch, n_dead]`` matmuls over their rows only),
  with all but each row's top ``d_in / 2`` zeroed when there are more (:func:`_aux_k`).

:class:`TopKTrainer` is SAELens's ``SAETrainer`` (Adam, clipping at 1.0, schedulers, dead-latent
counters, logging dict) with ``_train_step`` routed through :func:`topk_losses`, Adam's fused
kernel, and the clipping's scale applied inside it. ``tests/sae/test_topk_step.py`` checks the
losses and every gradient against SAELens's own forward pass and autograd, and whole optimiser
steps against SAELens's trainer.
"""
from __future__ import annotations

import warnings

import torch
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

SUPPORTED_NORMALISATION = ("none", "expected_average_only_in")


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    """``p.grad``, kept from step to step (a fresh one costs page faults); created if missing."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad


def topk_losses(sae, x: torch.Tensor, dead: torch.Tensor | None, *, bf16: bool = False,
                keep_hidden_pre: bool = True) -> dict:
    """The losses of SAELens's ``TopKTrainingSAE`` on the (already scaled) batch ``x``, and their
    gradients, written into the parameters' ``.grad`` (overwritten, not accumulated).

    Returns a dict with ``loss`` (MSE + AuxK), ``mse_loss``, ``auxiliary_reconstruction_loss``,
    ``sae_out`` ``[batch, d_in]``, ``indices`` and ``acts`` (``[batch, k]``: the chosen latents,
    in increasing order, and their ReLU'd activations), ``hidden_pre`` (the rescaled
    pre-activations; None unless ``keep_hidden_pre``), ``row_sq_err`` (``[batch]``: each row's
    ``‖sae_out − x‖²``) and ``grad_norm`` (the gradients' global L2 norm, float64), all without
    autograd. ``dead`` is the trainer's dead-latent mask; ``bf16`` runs the encoder and AuxK
    matmuls on bf16 inputs, as SAELens's trainer does under autocast.
    """
    cfg = sae.cfg
    if cfg.normalize_activations not in SUPPORTED_NORMALISATION:
        raise ValueError(f"topk_losses supports normalize_activations in {SUPPORTED_NORMALISATION}, "
                         f"not {cfg.normalize_activations!r}: train with SAELens's own step instead")
    if cfg.reshape_activations != "none" or x.dim() != 2:
        raise ValueError(f"topk_losses takes a [batch, d_in] batch (reshape_activations='none'), not "
                         f"shape {tuple(x.shape)} with reshape_activations={cfg.reshape_activations!r}")
    with torch.no_grad():
        return _losses_and_grads(sae, x, dead, bf16, keep_hidden_pre)


def _losses_and_grads(sae, x, dead, bf16, keep_hidden_pre) -> dict:
    cfg, batch, d_sae = sae.cfg, x.shape[0], sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dt, lp = W_enc.dtype, torch.bfloat16 if bf16 else W_enc.dtype
    x = x.to(dt)
    x_c = x - b_dec if cfg.apply_b_dec_to_input else x
    x_lp = x_c.to(lp)  # x - b_dec is rounded to bf16 once, as under SAELens's autocast
    # The decoder norm only ranks latents: the decoder reads activation ÷ norm, in which it
    # cancels, so no gradient flows through it (as in SAELens, where it cancels numerically).
    norm = W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    pre = (x_lp @ W_enc.to(lp)).to(dt) + b_enc  # [batch, d_sae], before the rescaling
    dead_ids = dead.nonzero().squeeze(1) if dead is not None and bool(dead.any()) else None
    dead_pre = pre.index_select(1, dead_ids) if dead_ids is not None else None
    hidden_pre = pre.mul_(norm) if norm is not None else pre
    idx = hidden_pre.topk(cfg.k, dim=1, sorted=False).indices.sort(dim=1).values
    raw = hidden_pre.gather(1, idx) / norm[idx] if norm is not None else hidden_pre.gather(1, idx)
    a = raw.relu()  # what the decoder reads (÷ norm cancelled)
    sae_out, sq_err, g_out, g_raw = _decode(idx, a, W_dec, b_dec, x, 2 / batch)
    mse = sq_err.mean()
    # Both weight gradients from the chosen entries: Sᵀ ∂out and (Sᵀ x_c)ᵀ, S sparse [batch, d_sae].
    grad_W_dec, grad_W_enc, grad_b_enc = _grad(W_dec), _grad(W_enc), _grad(b_enc)
    S_t = _latent_major(idx, d_sae)
    torch.mm(S_t(a), g_out, out=grad_W_dec)
    grad_W_enc.copy_((S_t(g_raw) @ x_lp.to(dt)).T)
    grad_b_enc.zero_().index_add_(0, idx.flatten(), g_raw.flatten())
    aux = mse.new_zeros(())
    if dead_ids is not None:
        aux = _aux_k(sae, dead_pre, dead_ids, norm, x_lp, sae_out, x, lp)
    # b_dec: the decoder's bias, and through the encoder's input x - b_dec: -W_enc (Σ ∂hidden_pre).
    grad_b_dec = _grad(b_dec).copy_(g_out.sum(0))
    if cfg.apply_b_dec_to_input:
        grad_b_dec.sub_(W_enc @ grad_b_enc)
    grad_norm = torch.stack([torch.linalg.vector_norm(p.grad) for p in sae.parameters()]).double()
    acts = (raw * norm[idx]).relu() if norm is not None else a
    return {"loss": mse + aux, "mse_loss": mse, "auxiliary_reconstruction_loss": aux,
            "sae_out": sae_out, "indices": idx, "acts": acts,
            "hidden_pre": hidden_pre if keep_hidden_pre else None,
            "row_sq_err": sq_err, "grad_norm": torch.linalg.vector_norm(grad_norm)}


def _decode(idx, a, W, bias, x, scale):
    """The decoder ``bias + Σⱼ a[:, j] W[idx[:, j]]`` (``embedding_bag``), each row's squared
    error, ``g = scale · (out − x)`` and ``⟨g, W[idx]⟩`` where ``a > 0`` (else 0): with ``scale =
    2 / rows``, the MSE's gradients at the output and at the activations before their ReLU.
    embedding_bag's own backward gives the latter without a ``[rows, d_sae]`` product."""
    with torch.enable_grad():
        w = a.detach().requires_grad_()
        out = torch.nn.functional.embedding_bag(idx, W.detach(), per_sample_weights=w, mode="sum") + bias
        err = out.detach() - x
        g = err * scale
        (dots,) = torch.autograd.grad(out, w, grad_outputs=g)
    return out.detach(), err.pow(2).sum(-1), g, dots * (a > 0)


def _latent_major(idx: torch.Tensor, n: int):
    """``values ↦ Sᵀ``: the sparse ``[n, rows]`` CSR matrix holding ``values`` ``[rows, k]`` at
    ``(idx[i, j], i)``, built from one sort of the entries by latent shared by every ``values``."""
    rows, k = idx.shape
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n).cumsum(0)
    col = order // k

    def build(values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is not
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values.flatten()[order], (n, rows), check_invariants=False)
    return build


def _aux_k(sae, vals, dead_ids, norm, x_lp, sae_out, x, lp) -> torch.Tensor:
    """AuxK (Gao et al. App. A.2) as SAELens computes it: each row's top ``d_in / 2`` dead latents,
    without ReLU, reconstruct the live latents' residual ``x - sae_out`` (no gradient through
    it) without bias; scaled by min(n_dead / k_aux, 1).

    The dead latents' columns are handled densely (``[batch, n_dead]`` matmuls over their rows
    only), with the unchosen ones zeroed when there are more than ``k_aux``. Adds their share to
    the gradients of ``W_dec``, ``W_enc`` and ``b_enc`` and returns the loss."""
    cfg, W_dec = sae.cfg, sae.W_dec
    batch, d_in = x_lp.shape
    k_aux = d_in // 2
    n_dead = len(dead_ids)  # vals [batch, n_dead]: their pre-activations, before the rescaling
    chosen = None
    if n_dead > k_aux:  # the top k_aux by rescaled pre-activation (hidden_pre's columns), as TopK ranks
        rank = vals if norm is None else vals * norm[dead_ids]
        chosen = torch.zeros_like(rank, dtype=torch.bool).scatter_(
            1, rank.topk(k_aux, dim=1, sorted=False).indices, True)
        vals = vals.masked_fill(~chosen, 0.0)
    coef = cfg.aux_loss_coefficient * min(n_dead / k_aux, 1.0)
    W_sub, vals_lp = W_dec.index_select(0, dead_ids).to(lp), vals.to(lp)
    diff = (vals_lp @ W_sub).to(x.dtype) + (sae_out - x)  # recon − (x − sae_out)
    loss = coef * diff.pow(2).sum(-1).mean()
    g_rec = (diff * (2 * coef / batch)).to(lp)
    g_vals = (g_rec @ W_sub.T).to(x.dtype)
    if chosen is not None:
        g_vals.masked_fill_(~chosen, 0.0)
    sae.W_dec.grad.index_add_(0, dead_ids, (vals_lp.T @ g_rec).to(x.dtype))
    sae.W_enc.grad.index_add_(1, dead_ids, (x_lp.T @ g_vals.to(lp)).to(x.dtype))
    sae.b_enc.grad.index_add_(0, dead_ids, g_vals.sum(0))
    return loss


def sparse_acts(indices: torch.Tensor, acts: torch.Tensor, d_sae: int) -> torch.Tensor:
    """``[batch, d_sae]`` sparse COO tensor of the TopK activations (what SAELens logs)."""
    rows = torch.arange(indices.shape[0], device=indices.device).repeat_interleave(indices.shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, indices.flatten()]), acts.flatten(),
                                   (indices.shape[0], d_sae), check_invariants=False)


class TopKTrainer(SAETrainer):
    """SAELens's ``SAETrainer`` whose step uses :func:`topk_losses` and fused Adam.

    Everything else — Adam's settings, gradient clipping at 1.0, the LR and coefficient
    schedulers, the dead-latent counters and ``build_train_step_log_dict`` — is SAELens's. Its
    ``TrainStepOutput.hidden_pre`` is an empty tensor: nothing reads it, and the ``[batch, d_sae]``
    matrix is not kept (call :func:`topk_losses` for it). ``row_sq_err`` holds the last step's
    ``[batch]`` squared reconstruction errors (the training curves' explained variance).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sae.W_enc.device.type in ("cpu", "cuda"):  # fused Adam's devices
            for group in self.optimizer.param_groups:  # before the first step creates Adam's state
                group["foreach"], group["fused"] = None, True

    def _clip_and_step(self, sae, max_norm: float, total: torch.Tensor) -> None:
        """SAELens's ``clip_grad_norm_(sae.parameters(), max_norm)`` then Adam's step, for
        gradients of norm ``total`` (as :func:`topk_losses` returns it). With fused Adam the clipping's scale is applied by Adam's kernel as it reads the
        gradients (its ``grad_scale``, which divides them; set for this step only), saving a read
        and a write of every gradient."""
        grads = [p.grad for p in sae.parameters()]
        coef = (max_norm / (total.to(grads[0].device, torch.float32) + 1e-6)).clamp(max=1.0)
        if not self.optimizer.param_groups[0].get("fused"):
            torch._foreach_mul_(grads, coef)
            self.optimizer.step()
            return
        self.optimizer.grad_scale = (1.0 / coef).float()
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.grad_scale

    def _train_step(self, sae, sae_in: torch.Tensor) -> TrainStepOutput:
        sae.train()
        out = topk_losses(sae, sae_in, self.dead_neurons, bf16=self.cfg.autocast, keep_hidden_pre=False)
        with torch.no_grad():
            fired = out["indices"][out["acts"] > 0]
            counts = torch.bincount(fired, minlength=sae.cfg.d_sae).to(self.act_freq_scores.dtype)
            self.n_forward_passes_since_fired += 1
            self.n_forward_passes_since_fired[counts > 0] = 0
            self.act_freq_scores += counts
            self.n_frac_active_samples += self.cfg.train_batch_size_samples
        # topk_losses wrote the gradients (overwriting the last step's: no zero_grad, whose
        # set_to_none would cost fresh buffers every step).
        self._clip_and_step(sae, 1.0, out["grad_norm"])
        self.row_sq_err = out["row_sq_err"]  # for training curves: no second pass over the batch
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        # hidden_pre is not kept (an empty tensor): SAELens's log dict does not read it, and
        # writing the [batch, d_sae] matrix costs a step 0.5 ms.
        return TrainStepOutput(
            sae_in=sae_in, sae_out=out["sae_out"],
            feature_acts=sparse_acts(out["indices"], out["acts"], sae.cfg.d_sae),
            hidden_pre=sae_in.new_empty(0), loss=out["loss"],
            losses={k: out[k] for k in ("mse_loss", "auxiliary_reconstruction_loss")})
