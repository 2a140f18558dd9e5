"""A cheaper training step for SAELens's TopK SAE: the same loss and gradients, by hand.

SAELens's ``TopKTrainingSAE.training_forward_pass`` works on dense ``[batch, d_sae]`` tensors
throughout: the ReLU'd TopK activations are scattered into a dense matrix and decoded by a
dense matmul, the AuxK activations likewise over all latents, and autograd differentiates it
all. With ``k`` = 32 of 4,608 latents that is almost all zeros, and on a CPU those passes, and
``torch.topk`` itself, cost more than the encoder's matmul.

:func:`topk_losses` computes the same losses and writes their gradients into ``.grad`` without
autograd, doing densely only what has to be dense:

* one encoder matmul ``(x - b_dec) @ W_enc`` (bf16 when the trainer autocasts);
* bias, decoder-norm rescaling and TopK selection in one pass over each row
  (:func:`faithful.native.bias_topk`);
* decoding the ``k`` chosen rows of ``W_dec``, the squared error, and the gradient at each chosen
  activation, row by row (:func:`faithful.native.decode_rows`);
* both weight gradients, ``W_decᵀ``'s ``Sᵀ ∂out`` and ``W_enc``'s ``xᵀ ∂pre``, in one pass over
  the chosen entries grouped by latent (:func:`faithful.native.sparse_outer`); ``b_enc``'s is an
  ``index_add_``, and ``b_dec``'s through the input ``x - b_dec`` is ``-W_enc ∂b_enc``;
* AuxK: the dead latents' columns, dense (``[batch, n_dead]`` matmuls over their rows only),
  with all but each row's top ``d_in / 2`` zeroed when there are more (:func:`_aux_k`); their
  gradient rows and columns are added by ``sparse_outer`` as it writes the weight gradients.

The clipping's gradient norm comes from the kernel that writes the weight gradients: each
latent's share (``sparse_outer``'s ``latent_sq``), AuxK's included.

Those kernels are compiled C on CPU and torch's operations elsewhere (:mod:`faithful.native`).
Buffers and gradients are reused from step to step (:class:`Workspace`).

:class:`TopKTrainer` is SAELens's ``SAETrainer`` (Adam, clipping at 1.0, schedulers, dead-latent
counters, logging dict) with ``_train_step`` routed through :func:`topk_losses`, Adam's fused
kernel, and the clipping's scale applied inside it. ``tests/unit/test_topk_step.py`` checks the
losses and every gradient against SAELens's own forward pass and autograd, and whole optimiser
steps against SAELens's trainer, with the compiled kernels and without.
"""
from __future__ import annotations

import math

import torch

from . import native

try:
    from sae_lens.saes.sae import TrainStepOutput
    from sae_lens.training.sae_trainer import SAETrainer
except ImportError as err:  # pragma: no cover - sae_lens is a hard dependency
    raise ImportError("faithful.topk_step needs sae_lens>=6 (pip install -e .)") from err

SUPPORTED_NORMALISATION = ("none", "expected_average_only_in")
AUX_PAD = 64
"""AuxK's matmuls run over the dead latents padded with zeros to a multiple of this (see :func:`_aux_k`)."""


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


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    """``p.grad``, kept from step to step (a fresh one costs page faults); created if missing."""
    if p.grad is None:
        p.grad = torch.empty_like(p)
    return p.grad


def topk_losses(sae, x: torch.Tensor, dead: torch.Tensor | None, *, bf16: bool = False,
                work: Workspace | None = None, keep_hidden_pre: bool = True) -> dict:
    """The losses of SAELens's ``TopKTrainingSAE`` on the (already scaled) batch ``x``, and their
    gradients, written into the parameters' ``.grad`` (overwritten, not accumulated).

    Returns a dict with ``loss`` (MSE + AuxK), ``mse_loss``, ``auxiliary_reconstruction_loss``,
    ``sae_out`` ``[batch, d_in]``, ``indices`` and ``acts`` (``[batch, k]``: the chosen latents,
    in increasing order, and their ReLU'd activations) and ``hidden_pre`` (the rescaled
    pre-activations, a reused buffer when ``work`` is given; None unless ``keep_hidden_pre``),
    ``row_sq_err`` (``[batch]``: each row's ``‖sae_out − x‖²``) and ``grad_norm`` (the gradients'
    global L2 norm, float64), all without autograd. ``dead`` is the trainer's dead-latent mask;
    ``bf16`` runs the encoder and AuxK matmuls in bf16.
    """
    cfg = sae.cfg
    if cfg.normalize_activations not in SUPPORTED_NORMALISATION:
        raise ValueError(f"topk_losses supports normalize_activations in {SUPPORTED_NORMALISATION}, "
                         f"not {cfg.normalize_activations!r}: train with SAELens's own step instead")
    if cfg.reshape_activations != "none" or x.dim() != 2:
        raise ValueError(f"topk_losses takes a [batch, d_in] batch (reshape_activations='none'), not "
                         f"shape {tuple(x.shape)} with reshape_activations={cfg.reshape_activations!r}")
    work = work or Workspace()
    with torch.no_grad():
        return _losses_and_grads(sae, x, dead, bf16, work, keep_hidden_pre)


def _losses_and_grads(sae, x, dead, bf16, work, keep_hidden_pre) -> dict:
    cfg, (batch, d_in), d_sae = sae.cfg, x.shape, sae.cfg.d_sae
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dt, lp = W_enc.dtype, torch.bfloat16 if bf16 else W_enc.dtype
    x = x.to(dt)
    # One [batch, 2 d_in] buffer holds the MSE's gradient at the output and the encoder's input
    # side by side: the sparse backward reads both rows of an entry as one contiguous row.
    g_x = work.get("g_x", (batch, 2 * d_in), dt, x.device)
    g_out, x_c = g_x[:, :d_in], g_x[:, d_in:]
    if cfg.apply_b_dec_to_input:
        torch.sub(x, b_dec, out=x_c)
    else:
        x_c.copy_(x)
    # x - b_dec is rounded to bf16 once, as under SAELens's autocast; in bf16 the two halves are
    # also kept rounded, side by side, for the sparse backward (half the bytes to read).
    g_x_lp = g_x if lp == dt else work.get("g_x_lp", (batch, 2 * d_in), lp, x.device)
    x_lp = x_c if lp == dt else g_x_lp[:, d_in:].copy_(x_c)
    # The decoder norm only ranks latents: the decoder reads activation ÷ norm, in which it
    # cancels, so no gradient flows through it (as in SAELens, where it cancels numerically).
    norm = W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    shape = (batch, d_sae)
    W_lp = W_enc if lp == dt else work.get("W_enc", W_enc.shape, lp, x.device).copy_(W_enc)
    xw = torch.mm(x_lp, W_lp, out=work.get("xw", shape, lp, x.device))
    hidden_pre = work.get("hidden_pre", shape, dt, x.device) if keep_hidden_pre else None
    n_dead = int(dead.sum()) if dead is not None else 0
    dead_ids = dead.nonzero().squeeze(1) if n_dead else None
    # The dead latents' pre-activations (for AuxK) are picked while each row is in cache.
    idx, dead_pre = native.bias_topk(xw, b_enc, norm, cfg.k, out=hidden_pre, cols=dead_ids)
    raw = xw.gather(1, idx).to(dt) + b_enc[idx]  # the decoder reads relu(raw) (÷ norm cancelled)
    a = raw.relu()
    # The decoder, and the backward pass by hand: ∂mse/∂sae_out, ∂mse/∂raw (through the ReLU),
    # then the decoder's and the encoder's weights (sparse) and the biases.
    sae_out, sq_err, _, g_raw = native.decode_rows(idx, a, W_dec, b_dec, x, 2 / batch, g=g_out)
    mse = sq_err.mean()
    grad_W_dec, grad_b_enc = _grad(W_dec), _grad(b_enc)
    if lp != dt:
        g_x_lp[:, :d_in].copy_(g_out)
    aux, extra = mse.new_zeros(()), None
    if n_dead:  # AuxK's gradient rows and columns for the dead latents, added by sparse_outer
        aux, extra, g_aux = _aux_k(sae, dead_pre, dead_ids, norm, x_lp, sae_out, x, lp)
    *_, sq = native.sparse_outer(idx, a, g_raw, g_x_lp[:, :d_in], g_x_lp[:, d_in:], d_sae,
                                 out=(grad_W_dec, _grad(W_enc)), extra=extra,
                                 latent_sq=work.get("latent_sq", (2, d_sae), torch.float64, x.device))
    grad_sq = sq.sum()  # Σ of squared weight gradients, for the clipping's norm without a pass over them
    grad_b_enc.zero_().index_add_(0, idx.flatten(), g_raw.flatten())
    if n_dead:
        grad_b_enc.index_add_(0, dead_ids, g_aux)
    # b_dec: the decoder's bias, and through the encoder's input x - b_dec: -W_enc (Σ ∂hidden_pre).
    grad_b_dec = _grad(b_dec).copy_(g_out.sum(0))
    if cfg.apply_b_dec_to_input:
        grad_b_dec.sub_(W_enc @ grad_b_enc)
    grad_sq += _sq(grad_b_enc) + _sq(grad_b_dec)
    acts = (raw * norm[idx]).relu() if norm is not None else a
    return {"loss": mse + aux, "mse_loss": mse, "auxiliary_reconstruction_loss": aux,
            "sae_out": sae_out, "indices": idx, "acts": acts, "hidden_pre": hidden_pre,
            "row_sq_err": sq_err, "grad_norm": grad_sq.clamp_min(0).sqrt()}


def _sq(t: torch.Tensor) -> torch.Tensor:
    return t.double().pow(2).sum()


def _aux_k(sae, vals, dead_ids, norm, x_lp, sae_out, x, lp) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """AuxK (Gao et al. App. A.2) as SAELens computes it: each row's top ``d_in / 2`` dead latents,
    without ReLU, reconstruct the live latents' residual ``x - sae_out`` (no gradient through
    it) without bias; scaled by min(n_dead / k_aux, 1).

    The dead latents' columns are handled densely (``[batch, n_dead]`` matmuls over their rows
    only), with the unchosen ones zeroed when there are more than ``k_aux``. Returns the loss,
    ``(dead_ids, ∂W_dec rows, ∂W_enc columns as rows)`` for :func:`faithful.native.sparse_outer`
    to add, and ``∂b_enc`` at the dead latents."""
    cfg, W_dec = sae.cfg, sae.W_dec
    batch, d_in = x_lp.shape
    k_aux = d_in // 2
    n_dead = len(dead_ids)  # vals [batch, n_dead]: their pre-activations, before the rescaling
    chosen = None
    if n_dead > k_aux:  # the top k_aux by rescaled pre-activation (hidden_pre's columns), as TopK ranks
        rank = vals if norm is None else vals * norm[dead_ids]
        chosen = native.topk_mask(rank, k_aux)
        vals.masked_fill_(~chosen, 0.0)
    # The dead latents are padded with zeros to a multiple of AUX_PAD: the count changes from step
    # to step, and oneDNN builds its bf16 kernels for each new shape (4-6 ms for these four matmuls,
    # against 0.7-1.8 ms for a shape it has seen). The padding's products are zeros.
    # The activations and their gradient are kept transposed, [n_pad, batch]: oneDNN's bf16
    # matmuls over a transposed view take 3-4 times as long (0.7 against 0.2 ms here).
    n_pad = -(-n_dead // AUX_PAD) * AUX_PAD
    vals_t = vals.new_empty((n_pad, batch), dtype=lp)
    vals_t[:n_dead] = vals.T
    vals_t[n_dead:] = 0
    W_sub = W_dec.new_zeros((n_pad, d_in), dtype=lp)
    W_sub[:n_dead] = W_dec.index_select(0, dead_ids)
    coef = cfg.aux_loss_coefficient * min(n_dead / k_aux, 1.0)
    # recon - (x - sae_out), its squares per row and its gradient, in one pass
    g_rec, row_sq = native.aux_residual(vals_t.T @ W_sub, sae_out, x, 2 * coef / batch)
    loss = (coef * row_sq.mean()).to(W_dec.dtype)
    g_vals_t = W_sub @ g_rec.T  # the padding's rows are zeros
    if chosen is not None:
        g_vals_t[:n_dead].masked_fill_(~chosen.T, 0.0)
    rows = ((vals_t @ g_rec)[:n_dead], (g_vals_t @ x_lp)[:n_dead])
    return loss, (dead_ids, *rows), g_vals_t[:n_dead].sum(1, dtype=sae.b_enc.dtype)


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
        self.work = Workspace()
        if self.sae.W_enc.device.type in ("cpu", "cuda"):  # fused Adam's devices
            for group in self.optimizer.param_groups:  # before the first step creates Adam's state
                group["foreach"], group["fused"] = None, True

    def _clip_and_step(self, sae, max_norm: float, total: torch.Tensor) -> None:
        """SAELens's ``clip_grad_norm_(sae.parameters(), max_norm)`` then Adam's step, for
        gradients of norm ``total`` (summed as :func:`topk_losses` wrote them: no pass over them
        here). With fused Adam the clipping's scale is applied by Adam's kernel as it reads the
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
        out = topk_losses(sae, sae_in, self.dead_neurons, bf16=self.cfg.autocast, work=self.work,
                          keep_hidden_pre=False)
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
