"""One way to get an SAE and the hook it reads, for every metric.

:func:`load_sae` turns an SAE or a checkpoint folder into a SAELens SAE; :func:`load_snapshots`
gives a run's SAE at each point of training it kept; :func:`sae_hook` reads the SAE's hook from
``sae.cfg.metadata.hook_name`` and checks that it exists in the model.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from sae_lens import SAE

from .. import storage
from ..models import model_name
from .runs import RUN_FILE, SNAPSHOT_FILE


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


def load_snapshots(folder, device: str = "cpu") -> dict[int, SAE]:
    """A run's SAE at every point of training it kept (:data:`~faithful.sae.runs.SNAPSHOT_FILE`) and
    at its end: ``{training tokens: SAE}`` in order of tokens. Snapshots are stored in fp16."""
    final = load_sae(folder, device)
    folder = Path(folder).expanduser()
    tokens_seen = int(storage.read_json(folder / RUN_FILE)["tokens_seen"])
    weights: dict[int, dict[str, torch.Tensor]] = {}
    if (folder / SNAPSHOT_FILE).is_file():
        for key, w in load_file(str(folder / SNAPSHOT_FILE)).items():
            point, param = key.split(".", 1)
            weights.setdefault(int(point.removeprefix("tokens_")), {})[param] = w
    saes = {}
    for tokens in sorted(weights):
        sae = copy.deepcopy(final)
        sae.load_state_dict({k: v.to(device=device, dtype=final.W_dec.dtype) for k, v in weights[tokens].items()})
        saes[tokens] = sae
    saes[tokens_seen] = final
    return saes


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
