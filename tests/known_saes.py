"""Hand-built SAELens TopK SAEs with known outputs, for the metric tests."""
import torch


def topk_sae(d_in, d_sae, k, hook="blocks.1.hook_resid_post", **cfg):
    """A TopK SAE (SAELens's own init) reading ``hook``."""
    from sae_lens import TopKSAE, TopKSAEConfig

    c = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **cfg)
    c.metadata.hook_name = hook
    return TopKSAE(c)


def identity_sae(d, hook="blocks.1.hook_resid_post"):
    """W_enc = [I, −I], W_dec = [I; −I], k = d, biases 0: x̂ = relu(x) − relu(−x) = x exactly."""
    sae = topk_sae(d, 2 * d, d, hook)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae
