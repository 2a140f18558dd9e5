"""The GPU path, where a CUDA device is present (skipped elsewhere; CI has none).

On a GPU the language model runs under bf16 autocast where the GPU supports it (the precision
policy, faithful.precision), and every metric moves its tensors to the model's device.
These tests check that path against references computed on the same GPU (SAELens's own forward
pass, autograd and trainer) and against the CPU: the same losses, gradients, weights and metrics.
"""
import numpy as np
import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

import faithful
from faithful import precision
from faithful.data import sampling
from faithful.sae.topk_step import TopKTrainer, topk_losses
from toy import SMALL


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

D_IN, D_SAE, K, BATCH = 64, 512, 8, 256


@pytest.fixture(autouse=True)
def exact_matmuls():
    """fp32 products in fp32 (no TF32), so that fp32 results compare at fp32 tolerances."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _sae(device, seed=0):
    """The same weights on every device: drawn on the CPU, then moved."""
    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae.to(device)


def _dead(n, device):
    mask = torch.zeros(D_SAE, dtype=torch.bool)
    mask[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))[:n]] = True
    return mask.to(device)


@pytest.mark.parametrize("n_dead", [0, 20, 300])
def test_step_on_cuda_equals_saelens_autograd(n_dead):
    sae = _sae("cuda")
    x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(2)).cuda() * 2
    dead = _dead(n_dead, "cuda") if n_dead else None
    ref = sae.training_forward_pass(TrainStepInput(sae_in=x, dead_neuron_mask=dead, coefficients={},
                                                   n_training_steps=0, is_logging_step=False))
    sae.zero_grad()
    ref.loss.backward()
    g_ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    ours = topk_losses(sae, x, dead)
    assert ours["sae_out"].device.type == "cuda"
    for key in ("mse_loss", "auxiliary_reconstruction_loss"):
        assert ours[key].item() == pytest.approx(ref.losses[key].item(), rel=1e-5, abs=1e-6)
    assert (ours["auxiliary_reconstruction_loss"].item() > 0) == bool(n_dead)
    torch.testing.assert_close(ours["sae_out"], ref.sae_out, rtol=1e-5, atol=1e-5)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, g_ref[name], rtol=1e-4, atol=1e-5, msg=name)


def _trainer(cls, sae, device, autocast=False):
    cfg = SAETrainerConfig(total_training_samples=BATCH * 20, train_batch_size_samples=BATCH, lr=1e-3,
                           lr_end=1e-3, device=device, autocast=autocast, dead_feature_window=3,
                           feature_sampling_window=100)
    tr = cls(cfg=cfg, sae=sae, data_provider=iter(()))
    tr.activation_scaler.scaling_factor = 1.0
    return tr


def test_trainer_steps_on_cuda_match_saelens_and_the_cpu(monkeypatch):
    """Eight optimiser steps with dead latents appearing: ours on CUDA against SAELens's trainer on
    CUDA (same counters, weights within Adam's rounding) and against ours on the CPU."""
    ref = _trainer(SAETrainer, _sae("cuda"), "cuda")
    ours = _trainer(TopKTrainer, _sae("cuda"), "cuda")
    cpu = _trainer(TopKTrainer, _sae("cpu"), "cpu")
    assert ours.optimizer.param_groups[0]["fused"]  # fused Adam runs on CUDA too
    gen = torch.Generator().manual_seed(0)
    aux_steps = 0
    for _ in range(8):
        x = torch.randn(BATCH, D_IN, generator=gen) * 2
        out_ref, out, out_cpu = ref.step(x.cuda()), ours.step(x.cuda()), cpu.step(x)
        for tr in (ref, ours, cpu):
            tr.n_training_steps += 1
        assert out.loss.item() == pytest.approx(out_ref.loss.item(), rel=1e-4)
        assert out.loss.item() == pytest.approx(out_cpu.loss.item(), rel=1e-4)
        aux_steps += out.losses["auxiliary_reconstruction_loss"].item() > 0
    assert aux_steps >= 2  # the AuxK path ran
    torch.testing.assert_close(ours.n_forward_passes_since_fired, ref.n_forward_passes_since_fired)
    torch.testing.assert_close(ours.n_forward_passes_since_fired.cpu(), cpu.n_forward_passes_since_fired)
    for name, p in ref.sae.named_parameters():
        torch.testing.assert_close(getattr(ours.sae, name), p, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(getattr(ours.sae, name).cpu(), getattr(cpu.sae, name), rtol=1e-4, atol=1e-5,
                                   msg=name)


def test_bf16_step_on_cuda_is_close_to_saelens_autocast():
    ref = _trainer(SAETrainer, _sae("cuda"), "cuda", autocast=True)
    ours = _trainer(TopKTrainer, _sae("cuda"), "cuda", autocast=True)
    x = torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(3)).cuda() * 2
    assert ours.step(x).loss.item() == pytest.approx(ref.step(x).loss.item(), rel=2e-2)
    for name, p in ref.sae.named_parameters():
        rel = (getattr(ours.sae, name) - p).norm() / p.norm()
        assert rel < 1e-2, name


@pytest.fixture(scope="module")
def cuda_model():
    return faithful.load_model("tiny-random", device="cuda", seed=0)


@pytest.fixture(scope="module")
def cpu_model():
    return faithful.load_model("tiny-random", device="cpu", seed=0)


def test_a_seed_starts_from_the_same_weights_on_every_device():
    from faithful.sae import train

    settings = train.TrainSettings(model="m", dataset="d", fingerprint="", hook="h", d_in=D_IN, d_sae=D_SAE, k=K,
                                   lr=1e-3, n_tokens=1, context_size=2, batch_size=1)
    on_gpu, on_cpu = train.make_sae(settings, 42, "cuda"), train.make_sae(settings, 42)
    assert on_gpu.W_dec.device.type == "cuda" and on_gpu.cfg.device.startswith("cuda")
    for name, p in on_cpu.named_parameters():
        assert torch.equal(getattr(on_gpu, name).cpu(), p), name


def test_training_on_cuda_end_to_end_and_like_the_cpu(cuda_model, cpu_model, texts, home):
    """Both seeds from one model pass on the GPU; the checkpoints load on the CPU with the same
    outputs; the same run on the CPU, both in fp32, ends at nearly the same weights (not bit for
    bit: the products sum in other orders)."""
    from faithful import storage
    from faithful.sae import train

    gpu = faithful.train_saes(cuda_model, texts, seeds=(42, 49), out_dir=home / "gpu", autocast=False, **SMALL)
    cpu = faithful.train_saes(cpu_model, texts, seeds=(42, 49), out_dir=home / "cpu", autocast=False, **SMALL)
    for g, c in zip(gpu, cpu):
        meta = storage.read_json(g / train.RUN_FILE)
        assert meta["tokens_seen"] == SMALL["n_tokens"]
        on_gpu, on_cpu = faithful.load_sae(g, device="cuda"), faithful.load_sae(g)
        x = torch.randn(32, on_cpu.cfg.d_in)
        torch.testing.assert_close(on_gpu(x.cuda()).cpu(), on_cpu(x), rtol=1e-4, atol=1e-4)
        cpu_sae = faithful.load_sae(c)
        cos = torch.nn.functional.cosine_similarity(on_cpu.W_dec, cpu_sae.W_dec, dim=1)
        assert cos.median() > 0.99, cos.median()
    a, b = (faithful.load_sae(p) for p in gpu)
    assert not torch.equal(a.W_dec, b.W_dec)  # the seeds differ


def test_metrics_on_cuda_equal_the_cpu(cuda_model, cpu_model, texts, home):
    (path,) = faithful.train_saes(cpu_model, texts, seeds=(42,), out_dir=home / "runs", **SMALL)
    sae_cpu, sae_gpu = faithful.load_sae(path), faithful.load_sae(path, device="cuda")
    kw = dict(n_tokens=600, context_size=32, autocast=False, progress=False)
    on_cpu = faithful.reconstruction_metrics(cpu_model, sae_cpu, texts, **kw)
    on_gpu = faithful.reconstruction_metrics(cuda_model, sae_gpu, texts, **kw)
    for key in ("ce_clean", "ce_spliced", "l2", "explained_variance", "l0"):
        assert getattr(on_gpu, key) == pytest.approx(getattr(on_cpu, key), rel=1e-3, abs=1e-4), key
    ffr = [faithful.fake_feature_ratio(m, s, n_tokens=2048, seq_len=32, autocast=False) for m, s in
           ((cpu_model, sae_cpu), (cuda_model, sae_gpu))]
    assert np.abs(ffr[0].token_frequencies - ffr[1].token_frequencies).max() < 0.01
    other = faithful.train_saes(cpu_model, texts, seeds=(49,), out_dir=home / "runs", **SMALL)[0]
    sfr_cpu = faithful.shared_feature_ratio(path, other)
    sfr_gpu = faithful.shared_feature_ratio(sae_gpu, faithful.load_sae(other, device="cuda"))
    assert sfr_gpu.ratio == pytest.approx(sfr_cpu.ratio, abs=1e-6)


def test_sampling_on_cuda_in_bf16(cuda_model, home):
    """The GPU samples in bf16 by default; the same seed gives the same documents."""
    from faithful.data.generate import generate_faithful_dataset, load_faithful_dataset, read_meta

    kw = dict(max_length=16, batch_size=16, progress=False)
    a = load_faithful_dataset(generate_faithful_dataset(cuda_model, 300, out_dir=home / "a", **kw))
    b = load_faithful_dataset(generate_faithful_dataset(cuda_model, 300, out_dir=home / "b", **kw))
    assert read_meta(home / "a")["tokens"] == sum(a["tokens"]) >= 300
    assert a["token_ids"] == b["token_ids"]
    assert not set(faithful.stop_token_ids(cuda_model)) & {t for ids in a["token_ids"] for t in ids}
    assert sampling.default_dtype(torch.device("cuda")) == torch.bfloat16


def test_the_policy_picks_bf16_on_a_gpu_that_supports_it(cuda_model):
    assert precision.choose("cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert precision.choose("cuda", False) == "fp32"
    sae = _sae("cuda")
    x = torch.randn(BATCH, D_IN, device="cuda")
    out = topk_losses(sae, x, _dead(40, "cuda"), bf16=True)
    assert out["loss"].device.type == "cuda" and torch.isfinite(out["loss"])
