"""One way to get an SAE and the hook it reads, for every metric.

:func:`load_sae` turns an SAE or a checkpoint folder into a SAELens SAE; :func:`sae_hook` reads
the SAE's hook from ``sae.cfg.metadata.hook_name`` and checks that it exists in the model.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from sae_lens import SAE

from ..models import model_name


class NotACheckpointError(FileNotFoundError, ValueError):
    """A path that is not a SAELens checkpoint folder."""


def load_sae(path_or_sae, device: str = "cpu"):
    """An SAE given as is, or loaded from a SAELens checkpoint folder onto ``device``."""
    if isinstance(path_or_sae, torch.nn.Module) and hasattr(path_or_sae, "W_dec") and hasattr(path_or_sae, "cfg"):
        return path_or_sae
    if not isinstance(path_or_sae, (str, Path)):
        raise TypeError(f"expected a SAELens SAE or a checkpoint folder, got {type(path_or_sae).__name__}")
    path = Path(path_or_sae).expanduser()
    if not (path / "cfg.json").is_file():
        raise NotACheckpointError(f"{path} is not a SAELens checkpoint folder (no cfg.json): pass a folder "
                                  "written by faithful.train_saes or SAE.save_model")

    return SAE.load_from_disk(str(path), device=device)


def sae_hook(model, sae, hook: str | None = None) -> str:
    """The hook an SAE reads (``sae.cfg.metadata.hook_name`` unless ``hook`` is given), checked on ``model``."""
    meta = getattr(sae.cfg, "metadata", None)
    hook = hook or (getattr(meta, "hook_name", None) if meta is not None else None)
    if not hook:
        raise ValueError("the SAE has no hook: its cfg.metadata has no hook_name; pass hook='blocks.N.hook_resid_post'"
                         " or set sae.cfg.metadata.hook_name")
    if hook not in model.hook_dict:
        raise ValueError(f"hook {hook!r} does not exist in {model_name(model)} ({model.cfg.n_layers} layers), so it "
                         "is not a hook of this model: was this SAE trained on another model?")
    trained_on = getattr(meta, "model_name", None) if meta is not None else None
    if trained_on and trained_on != model_name(model):
        warnings.warn(f"SAE trained on {trained_on!r} is applied to {model_name(model)!r}", stacklevel=3)
    return hook
