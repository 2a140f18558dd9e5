"""The Faithful dataset (paper §3.1, §5.4): a model's own text, sampled from its start token.

``generate_faithful_dataset(model, n_tokens)`` samples documents from the start-of-document
token (``faithful.start_token_id``; ``<|endoftext|>`` for SmolLM2), each ending at a stop
token (``faithful.stop_token_ids``) or at ``max_length`` tokens, until at least ``n_tokens``
tokens are written. ``start="flat"`` draws the first token uniformly from the non-special
vocabulary instead (paper §5.4), and a temperature above 1 is the other widening variant.

On disk (``data/faithful-<model>-<settings>/``) it is a Hugging Face dataset that
``datasets.load_from_disk`` reads, with columns ``id, seed, temp, top_p, text, tokens,
token_ids``: ``token_ids`` are the generated tokens only (no start token, no stop token),
``tokens = len(token_ids)``, ``text = decode(token_ids)``. Every consumer prepends the start
token itself. ``faithful_meta.json`` records the model, start, settings, package version and
the token target. Samples that stop at once (no token) are not stored; their count is kept.

Resumable: each batch is one shard ``data-NNNNN.arrow``, written to a temporary file and
renamed, with its own seed derived from ``(seed, shard index)``. A run stopped by Ctrl-C, a
kill or a full disk continues on the next call at the first missing shard, which is the same
batch it would have been: same seed and settings ⇒ same texts, no sample lost or duplicated.
Asking for more tokens extends the dataset; a folder holding other settings is refused.

Backends: ``"hf"`` (the Hugging Face model behind the loaded one, fastest on CPU),
``"hooked"`` (the ``HookedTransformer`` itself; any model), ``"auto"`` (``hf`` when the HF
weights are at hand, else ``hooked``), and ``"vllm"`` for GPU users generating 100M tokens as
the paper did (``pip install vllm``; thin, see :func:`_vllm_sampler`).
"""
from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import math
import os
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .. import storage
from ..config import as_profile
from ..models import model_name, non_special_vocab, start_token_id, stop_token_ids
from . import sampling

META_FILE = "faithful_meta.json"
STARTS = ("bos", "flat")
BACKENDS = ("auto", "hf", "hooked", "vllm")
_IDENTITY = ("model", "start", "temperature", "top_p", "max_length", "batch_size", "seed",
             "backend", "dtype", "start_token_id", "stop_token_ids")


def generate_faithful_dataset(model, n_tokens: int, *, out_dir: str | os.PathLike | None = None,
                              start: str = "bos", temperature: float = 1.0, top_p: float = 1.0,
                              max_length: int = 256, batch_size: int = 64, seed: int = 42,
                              backend: str = "auto", dtype: torch.dtype | None = None,
                              progress: bool = True, max_shards: int | None = None) -> Path:
    """Sample at least ``n_tokens`` tokens of Faithful text into ``out_dir``; return the folder.

    ``model``: a loaded model (``faithful.load_model``). ``start``: ``"bos"`` (the paper) or
    ``"flat"``. ``temperature`` > 0 and ``top_p`` in (0, 1] (the paper's defaults are 1 and 1).
    ``max_length``: most generated tokens per document. ``batch_size`` documents are sampled
    together; one batch is one shard. ``dtype``: default the precision policy's
    choice for the device (:func:`faithful.precision.choose`: bf16 only where it measured faster). ``max_shards``: stop after writing this many new
    shards in this call (time-boxed runs; call again to continue). The dataset ends at the
    first whole shard that reaches ``n_tokens``, so it can exceed it by less than one batch.
    """
    settings = _settings(model, n_tokens, start, temperature, top_p, max_length, batch_size,
                         seed, backend, dtype)
    out = Path(out_dir) if out_dir is not None else default_dir(model, settings)
    meta = _claim(out, settings, n_tokens)
    total = meta["tokens"]
    if total >= n_tokens:
        return out
    sampler = _make_sampler(model, settings)

    bar = tqdm(total=n_tokens, initial=total, unit="tok", desc=f"faithful {out.name}",
               disable=not progress, dynamic_ncols=True)
    written = 0
    try:
        while total < n_tokens and (max_shards is None or written < max_shards):
            shard = meta["shards"]
            rows = sampler(shard, on_tokens=bar.update)
            info = _write_shard(out, shard, rows, model.tokenizer, settings)
            written += 1
            total += info["tokens"]
            meta.update(tokens=total, samples=meta["samples"] + info["samples"],
                        empty_dropped=meta["empty_dropped"] + info["empty"], shards=shard + 1)
            _write_index(out, meta)
    finally:
        bar.close()
    return out


def faithful_dataset_for(model, profile, **overrides) -> Path:
    """The Faithful dataset of ``model`` at the profile's budget, generated or reused.

    Uses the profile's ``faithful_tokens``, ``max_length`` and ``gen_batch_size``;
    ``overrides`` go to :func:`generate_faithful_dataset` (``n_tokens``, ``start``, ``temperature`` …).
    """
    profile = as_profile(profile)
    kwargs = dict(n_tokens=profile.faithful_tokens, max_length=profile.max_length,
                  batch_size=profile.gen_batch_size)
    kwargs.update(overrides)
    return generate_faithful_dataset(model, **kwargs)


def load_faithful_dataset(path: str | os.PathLike):
    """The dataset written by :func:`generate_faithful_dataset` (memory-mapped, all finished shards;
    a warning when its generation has not finished)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} holds no Faithful dataset ({META_FILE} missing): create "
                                "it with faithful.generate_faithful_dataset(model, n_tokens)")
    files = _shard_files(path)
    if not files:
        raise FileNotFoundError(f"{path} has no finished shard yet: run generate_faithful_dataset "
                                "again with the same settings to continue")
    meta = read_meta(path)
    if not meta.get("complete", True):
        warnings.warn(f"{path} is an unfinished Faithful dataset ({meta['tokens']:,} of {meta['n_tokens']:,} "
                      "tokens: its generation stopped early); run generate_faithful_dataset again with the "
                      "same settings to finish it", stacklevel=2)
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])


def read_meta(path: str | os.PathLike) -> dict:
    """The ``faithful_meta.json`` of a Faithful dataset folder."""
    return storage.read_json(Path(path) / META_FILE)


def default_dir(model, settings: dict) -> Path:
    """``data/faithful-<model>-<start>-t<T>-p<P>-len<L>-s<seed>``."""
    slug = (f"{settings['start']}-t{settings['temperature']:g}-p{settings['top_p']:g}"
            f"-len{settings['max_length']}-s{settings['seed']}")
    return storage.data_dir() / f"faithful-{model_name(model)}-{slug}"


def shard_seed(seed: int, shard: int) -> int:
    """The RNG seed of shard ``shard``: independent streams, reproducible on resume."""
    return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- settings, folder
def _settings(model, n_tokens, start, temperature, top_p, max_length, batch_size, seed,
              backend, dtype) -> dict:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens <= 0:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r} "
                         "(1.0 samples the model's own distribution)")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r} (1.0 turns nucleus sampling off)")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if not (isinstance(max_length, int) and 1 <= max_length <= model.cfg.n_ctx):
        raise ValueError(f"max_length must be an integer in 1..{model.cfg.n_ctx} (the model's "
                         f"context), got {max_length!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = str(model.cfg.device or "cpu")
    dtype = dtype or sampling.default_dtype(device)
    if backend == "auto":
        backend = "hf" if sampling.hf_source(model) else "hooked"
    elif backend in ("hf", "vllm") and not sampling.hf_source(model):
        raise ValueError(f"backend={backend!r} needs the Hugging Face weights of "
                         f"{model_name(model)} and none were found: use backend='hooked'")
    return dict(model=model_name(model), start=start, temperature=float(temperature),
                top_p=float(top_p), max_length=max_length, batch_size=batch_size, seed=int(seed),
                backend=backend, dtype=str(dtype).replace("torch.", ""),
                start_token_id=start_token_id(model), stop_token_ids=stop_token_ids(model),
                device=device)


def _claim(out: Path, settings: dict, n_tokens: int) -> dict:
    """Create or re-open ``out``; refuse a folder holding anything else. Returns the meta."""

    ident = {k: settings[k] for k in _IDENTITY}
    if (out / META_FILE).is_file():
        meta = storage.read_json(out / META_FILE)
        old = {k: meta["settings"].get(k) for k in _IDENTITY}
        diff = {k: (old[k], ident[k]) for k in _IDENTITY if old[k] != ident[k]}
        if diff:
            lines = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds a Faithful dataset with other settings ({lines}); "
                             "refusing to mix them. Pass the same settings to extend it, or "
                             "another out_dir (or delete the folder) for a new dataset.")
    elif out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ValueError(f"{out} exists and is not a Faithful dataset folder: choose another out_dir")
    counts = _count_shards(out)
    meta = dict(model=settings["model"], start=settings["start"], settings=settings,
                package_version=importlib.metadata.version("faithful"), n_tokens=max(n_tokens, _old_target(out)), **counts)
    _write_index(out, meta)
    return meta


def _old_target(out: Path) -> int:
    try:
        return int(storage.read_json(out / META_FILE)["n_tokens"])
    except (OSError, KeyError, ValueError):
        return 0


def _shard_files(out: Path) -> list[Path]:
    files = sorted(out.glob("data-*.arrow"))
    for i, f in enumerate(files):
        if f.name != f"data-{i:05d}.arrow":
            raise RuntimeError(f"{out} is missing shard data-{i:05d}.arrow (found {f.name}); "
                               "the folder was edited by hand: delete it and generate again")
    return files


def _count_shards(out: Path) -> dict:
    """Exact counts from the shards themselves (each carries its own in its schema)."""
    counts = dict(tokens=0, samples=0, empty_dropped=0, shards=0)
    for f in _shard_files(out) if out.is_dir() else []:
        with pa.memory_map(str(f)) as src:
            info = json.loads(pa.ipc.open_stream(src).schema.metadata[b"faithful"])
        counts["tokens"] += info["tokens"]
        counts["samples"] += info["samples"]
        counts["empty_dropped"] += info["empty"]
        counts["shards"] += 1
    return counts


# ----------------------------------------------------------------------------- writing
def _features():
    return datasets.Features({
        "id": datasets.Value("int64"), "seed": datasets.Value("int64"),
        "temp": datasets.Value("float64"), "top_p": datasets.Value("float64"),
        "text": datasets.Value("string"), "tokens": datasets.Value("int64"),
        "token_ids": datasets.List(datasets.Value("int32")),
    })


def _write_shard(out: Path, shard: int, rows: list[list[int]], tokenizer, settings: dict) -> dict:
    """Write one batch as ``data-NNNNN.arrow`` atomically; return its counts."""
    keep = [(i, ids) for i, ids in enumerate(rows) if ids]
    texts = tokenizer.batch_decode([ids for _, ids in keep]) if keep else []
    info = dict(shard=shard, samples=len(keep), empty=len(rows) - len(keep),
                tokens=sum(len(ids) for _, ids in keep), seed=shard_seed(settings["seed"], shard))
    features = _features()
    schema = features.arrow_schema
    schema = schema.with_metadata({**(schema.metadata or {}), b"faithful": json.dumps(info).encode()})
    table = pa.table({
        "id": [shard * settings["batch_size"] + i for i, _ in keep],
        "seed": [settings["seed"]] * len(keep),
        "temp": [settings["temperature"]] * len(keep),
        "top_p": [settings["top_p"]] * len(keep),
        "text": texts,
        "tokens": [len(ids) for _, ids in keep],
        "token_ids": [ids for _, ids in keep],
    }, schema=schema)
    path = out / f"data-{shard:05d}.arrow"
    tmp = out / f".data-{shard:05d}.arrow.tmp"
    try:
        _write_arrow(tmp, table)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing shard {shard} of {out}; "
                          "nothing half-written is left: free space and call again to resume") from exc
        raise
    return info


def _write_arrow(path: Path, table) -> None:
    with open(path, "wb") as f:
        with pa.ipc.new_stream(f, table.schema) as writer:
            writer.write_table(table)
        f.flush()
        os.fsync(f.fileno())


def _write_index(out: Path, meta: dict) -> None:
    """``faithful_meta.json`` plus the two files that make the folder ``load_from_disk``-able."""
    out.mkdir(parents=True, exist_ok=True)
    meta["complete"] = meta["tokens"] >= meta["n_tokens"]
    storage.write_json(out / META_FILE, meta)
    names = [f"data-{i:05d}.arrow" for i in range(meta["shards"])]
    fingerprint = hashlib.sha256(json.dumps([meta["settings"], names]).encode()).hexdigest()[:16]
    storage.write_json(out / "dataset_info.json", {
        "citation": "", "description": f"Faithful dataset of {meta['model']} (FaithfulSAE §3.1)",
        "features": _features().to_dict(), "homepage": "", "license": ""})
    storage.write_json(out / "state.json", {
        "_data_files": [{"filename": n} for n in names], "_fingerprint": fingerprint,
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": None})


# ----------------------------------------------------------------------------- samplers
def _make_sampler(model, settings: dict):
    """``sampler(shard, on_tokens) -> list of token-id lists`` for the chosen backend."""
    flat = None
    if settings["start"] == "flat":
        flat = non_special_vocab(model)
    if settings["backend"] == "vllm":
        return _vllm_sampler(model, settings, flat)
    dtype = getattr(torch, settings["dtype"])
    if settings["backend"] == "hf":
        stepper = sampling.HFStepper(sampling.hf_source(model), settings["device"], dtype)
    else:
        stepper = sampling.HookedStepper(model, dtype)

    def sampler(shard: int, on_tokens=None) -> list[list[int]]:
        gen = torch.Generator(device=stepper.device).manual_seed(shard_seed(settings["seed"], shard))
        return sampling.sample_batch(
            stepper, settings["batch_size"], start_id=settings["start_token_id"],
            stop_ids=settings["stop_token_ids"], max_length=settings["max_length"],
            temperature=settings["temperature"], top_p=settings["top_p"], generator=gen,
            first_tokens=flat, on_tokens=on_tokens)

    return sampler


def _vllm_sampler(model, settings: dict, flat):
    """Sampling with vLLM (GPU; the paper's path to 100M tokens). Same shards and seeds."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise ImportError("backend='vllm' needs vLLM on a CUDA machine: `pip install vllm` "
                          "(or use backend='hf', which runs anywhere)") from None
    llm = LLM(model=sampling.hf_source(model), dtype=settings["dtype"], seed=settings["seed"])
    stops = set(settings["stop_token_ids"])

    def sampler(shard: int, on_tokens=None) -> list[list[int]]:
        base = shard_seed(settings["seed"], shard)
        rng = torch.Generator().manual_seed(base)
        prompts, params = [], []
        for i in range(settings["batch_size"]):
            first = [] if flat is None else [int(flat[torch.randint(len(flat), (1,), generator=rng)])]
            prompts.append({"prompt_token_ids": [settings["start_token_id"], *first]})
            params.append(SamplingParams(
                temperature=settings["temperature"], top_p=settings["top_p"],
                max_tokens=settings["max_length"] - len(first), seed=(base + i) % 2**63,
                stop_token_ids=sorted(stops), ignore_eos=False))
        rows = []
        for prompt, result in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
            ids = [t for t in result.outputs[0].token_ids]
            while ids and ids[-1] in stops:
                ids.pop()
            rows.append(prompt["prompt_token_ids"][1:] + ids)
            if on_tokens is not None:
                on_tokens(len(rows[-1]))
        return rows

    return sampler
