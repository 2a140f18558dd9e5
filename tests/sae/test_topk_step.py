"""The sparse TopK training step against SAELens's own: same losses, gradients and counters."""
import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from faithful.sae.topk_step import TopKTrainer, topk_losses

D_IN, D_SAE, K, BATCH = 16, 96, 4, 64


def _sae(seed=0, **cfg):
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, **cfg))
    with torch.no_grad():  # make every bias matter
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae


def _dead(n):
    mask = torch.zeros(D_SAE, dtype=torch.bool)
    mask[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))[:n]] = True
    return mask


def _grads(sae, loss):
    sae.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


def _our_grads(sae, x, dead, **kw):
    """topk_losses writes the gradients itself (over whatever .grad held)."""
    for p in sae.parameters():
        p.grad = torch.full_like(p, 123.0)  # stale values must be overwritten, not added to
    out = topk_losses(sae, x, dead, **kw)
    return out, {n: p.grad.clone() for n, p in sae.named_parameters()}


def _reference(sae, x, dead, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return sae.training_forward_pass(TrainStepInput(
            sae_in=x, dead_neuron_mask=dead, coefficients={}, n_training_steps=0, is_logging_step=False))


# none, fewer than d_in/2, a few more, many more, all (each TopK latent is also an AuxK candidate)
@pytest.mark.parametrize("n_dead", [0, 3, D_IN // 2 + 2, 60, D_SAE])
@pytest.mark.parametrize("cfg", [{}, {"rescale_acts_by_decoder_norm": False}, {"apply_b_dec_to_input": False},
                                 {"rescale_acts_by_decoder_norm": False, "apply_b_dec_to_input": False}])
def test_losses_and_gradients_equal_saelens_in_fp32(n_dead, cfg):
    sae = _sae(**cfg)
    x = torch.randn(BATCH, D_IN) * 2
    dead = _dead(n_dead) if n_dead else None
    ref = _reference(sae, x, dead)
    g_ref = _grads(sae, ref.loss)
    ours, g_ours = _our_grads(sae, x, dead)
    assert not ours["loss"].requires_grad
    torch.testing.assert_close(ours["hidden_pre"], ref.hidden_pre, rtol=1e-5, atol=1e-6)
    for key in ("mse_loss", "auxiliary_reconstruction_loss"):
        assert ours[key].item() == pytest.approx(ref.losses[key].item(), rel=1e-5, abs=1e-6)
    assert (ours["auxiliary_reconstruction_loss"].item() > 0) == bool(n_dead)
    torch.testing.assert_close(ours["sae_out"], ref.sae_out, rtol=1e-5, atol=1e-5)
    dense = torch.zeros(BATCH, D_SAE).scatter_(1, ours["indices"], ours["acts"].detach())
    torch.testing.assert_close(dense, ref.feature_acts, rtol=1e-5, atol=1e-6)
    norm = torch.linalg.vector_norm(torch.stack([g.double().norm() for g in g_ours.values()]))
    assert ours["grad_norm"].item() == pytest.approx(norm.item(), rel=1e-6)  # the clip's norm, summed on the way
    for name in g_ref:
        torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_step_is_close_to_saelens_autocast():
    """Inputs far from the origin, b_dec at their mean: x - b_dec must be rounded, not x."""
    sae = _sae()
    gen = torch.Generator().manual_seed(0)
    offset = torch.randn(D_IN, generator=gen) * 30
    x = offset + torch.randn(BATCH, D_IN, generator=gen)
    with torch.no_grad():
        sae.b_dec.copy_(offset)
    exact = _reference(sae, x, None)
    ref = _reference(sae, x, _dead(10), autocast=True)
    g_ref = _grads(sae, ref.loss)
    ours, g_ours = _our_grads(sae, x, _dead(10), bf16=True)
    err_ref = (ref.hidden_pre.float() - exact.hidden_pre).abs().mean()
    err_ours = (ours["hidden_pre"] - exact.hidden_pre).abs().mean()
    assert err_ours <= 1.5 * err_ref + 1e-6
    assert ours["loss"].item() == pytest.approx(ref.loss.item(), rel=2e-2)
    for name in g_ref:
        rel = (g_ours[name] - g_ref[name]).norm() / g_ref[name].norm()
        assert rel < 0.1, name


def test_reused_gradients_give_the_same_step():
    """Gradients carry over from step to step: a second call on the same batch must give the same
    numbers (nothing accumulated, nothing stale), and another batch other ones."""
    sae = _sae()
    x = torch.randn(BATCH, D_IN)
    first, g_first = _our_grads(sae, x, _dead(60))
    topk_losses(sae, x + 1, _dead(3))
    again = topk_losses(sae, x, _dead(60))
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, g_first[name], rtol=0, atol=0, msg=name)
    assert again["loss"].item() == first["loss"].item()
    assert not torch.equal(topk_losses(sae, x + 1, None)["sae_out"], first["sae_out"])


def test_hidden_pre_is_only_kept_when_asked():
    sae, x = _sae(), torch.randn(BATCH, D_IN)
    assert topk_losses(sae, x, None, keep_hidden_pre=False)["hidden_pre"] is None
    assert topk_losses(sae, x, None)["hidden_pre"].shape == (BATCH, D_SAE)


def _trainer(cls, sae):
    cfg = SAETrainerConfig(total_training_samples=BATCH * 20, train_batch_size_samples=BATCH, lr=1e-3,
                           lr_end=1e-3, device="cpu", autocast=False, dead_feature_window=3,
                           feature_sampling_window=100)
    tr = cls(cfg=cfg, sae=sae, data_provider=iter(()))
    tr.activation_scaler.scaling_factor = 1.0
    return tr


def test_trainer_steps_match_saelens_trainer():
    """Six optimiser steps, dead latents appearing on the way: same counters, weights within Adam's rounding."""
    ref, ours = _trainer(SAETrainer, _sae()), _trainer(TopKTrainer, _sae())
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(BATCH, D_IN, generator=gen) * 2 for _ in range(6)]
    aux_steps = 0
    for step, x in enumerate(batches):
        out_ref, out = ref.step(x), ours.step(x)
        ref.n_training_steps += 1
        ours.n_training_steps += 1
        assert out.loss.item() == pytest.approx(out_ref.loss.item(), rel=1e-4)
        aux_steps += out.losses["auxiliary_reconstruction_loss"].item() > 0
    assert aux_steps >= 2  # the AuxK path ran
    torch.testing.assert_close(ours.act_freq_scores, ref.act_freq_scores)
    torch.testing.assert_close(ours.n_forward_passes_since_fired, ref.n_forward_passes_since_fired)
    for name, p in ref.sae.named_parameters():
        torch.testing.assert_close(getattr(ours.sae, name), p, rtol=1e-4, atol=1e-5, msg=name)
    log_ref = ref.build_train_step_log_dict(out_ref, 1)
    log = ours.build_train_step_log_dict(out, 1)
    for key in ("metrics/l0", "metrics/explained_variance", "sparsity/dead_features", "losses/mse_loss"):
        assert log[key] == pytest.approx(log_ref[key], rel=1e-4), key


def test_unsupported_settings_are_refused():
    sae = _sae(normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="normalize_activations"):
        topk_losses(sae, torch.randn(4, D_IN), None)
    with pytest.raises(ValueError, match=r"\[batch, d_in\]"):
        topk_losses(_sae(), torch.randn(2, 4, D_IN), None)


def test_the_clipping_scale_is_set_for_one_step_only():
    """The clip's scale reaches fused Adam as its grad_scale for that step only: a later plain
    optimiser step must not inherit it."""
    tr = _trainer(TopKTrainer, _sae())
    tr.step(torch.randn(BATCH, D_IN) * 50)  # large: the clip is active
    assert not hasattr(tr.optimizer, "grad_scale")
    # fused Adam divides the gradients in place: they end clipped to norm 1, as after SAELens's clip
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.sae.parameters()]))
    assert total.item() == pytest.approx(1.0, abs=1e-4)
