"""Text corpora by name or path, as ``datasets.Dataset``s with a ``text`` column.

``load_corpus(name_or_path, split=None)`` resolves, in this order:

1. ``"faithful"`` – the Faithful dataset of ``model`` at ``profile``'s budget
   (``faithful.data.generate.faithful_dataset_for``); or a path to a folder holding
   ``faithful_meta.json`` (a Faithful dataset written by ``generate_faithful_dataset``).
2. A path to a ``.jsonl``, ``.jsonl.gz``, ``.json``, ``.parquet`` file or a saved HF dataset
   folder. A saved ``DatasetDict`` gives ``split`` (default: ``train``, else its first split);
   the others hold one split, and any ``split`` but ``train`` is refused.
3. A file of the shared data folder (``FAITHFUL_DATA_DIR``, see ``storage.shared_data_dir``)
   by its name: ``wikipedia_en_sample``, ``c4_en_train_first1000``, ``alpaca``,
   ``sst2_validation`` … and, for registry names, ``<name>_<split>`` (``sst2`` + ``"train"``).
4. A registry name (:data:`CORPORA`) downloaded from the Hugging Face hub, or any hub dataset
   id (``owner/name`` that is not a missing path in an existing folder; its ``text`` column or
   instruction fields); offline, a clear error lists what is available locally.

A source without rows is refused with the path that is empty.

Instruction data (columns ``instruction``/``input``/``output``) becomes text through the
Alpaca training template (:data:`ALPACA_TEMPLATE`, from tatsu-lab/stanford_alpaca
``train.py``, followed by the response). Probing sets keep their ``label`` column.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage
from ..config import as_profile
from ..models import hub_reachable, load_model
from . import generate
from .generate import load_faithful_dataset

ALPACA_TEMPLATE = {
    "with_input": ("Below is an instruction that describes a task, paired with an input that provides "
                   "further context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"),
    "no_input": ("Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"),
}
"""The Alpaca prompt + response; ``with_input`` is used when the ``input`` field is non-empty."""


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus of the paper, and where to find it."""

    name: str
    """Name accepted by ``load_corpus``."""
    hub_id: str
    """Hugging Face dataset id (the paper's choice where it names one)."""
    config: str | None = None
    """Dataset configuration (``fineweb``: ``sample-10BT``; GLUE: ``cola``)."""
    split: str = "train"
    """Default split."""
    text_field: str = "text"
    """Column holding the text, or ``"alpaca"`` (instruction/input/output through the template),
    or ``"inputs+targets"`` (FLAN: the two fields joined by a blank line)."""
    kind: str = "web"
    """``web``, ``instruction`` or ``probe`` (probing sets also carry a ``label``)."""
    local: str | None = None
    """Stem of the shared-data file(s): ``<local>.jsonl.gz`` or ``<local>_<split>.jsonl.gz``."""


CORPORA: dict[str, CorpusSpec] = {c.name: c for c in [
    CorpusSpec("pile-uncopyrighted", "monology/pile-uncopyrighted"),
    CorpusSpec("fineweb", "HuggingFaceFW/fineweb", config="sample-10BT"),
    CorpusSpec("openwebtext", "Skylion007/openwebtext"),
    CorpusSpec("tinystories", "roneneldan/TinyStories", local="tinystories_validation_blocks"),
    CorpusSpec("alpaca", "aifeifei798/merged_uncensored_alpaca", text_field="alpaca",
               kind="instruction", local="alpaca"),
    CorpusSpec("flan", "Open-Orca/FLAN", text_field="inputs+targets", kind="instruction"),
    CorpusSpec("open-instruct", "xzuyn/open-instruct-uncensored-alpaca", text_field="alpaca",
               kind="instruction"),
    CorpusSpec("sst2", "stanfordnlp/sst2", text_field="sentence", kind="probe", local="sst2"),
    CorpusSpec("cola", "nyu-mll/glue", config="cola", text_field="sentence", kind="probe", local="cola"),
    CorpusSpec("ag_news", "fancyzhx/ag_news", kind="probe", local="ag_news"),
    CorpusSpec("yelp_polarity", "fancyzhx/yelp_polarity", kind="probe", local="yelp_polarity"),
]}
"""The paper's corpora (§4, App. A). ``alpaca`` resolves first to the shared Stanford Alpaca
sample; the hub id is the uncensored merge the paper used."""

_LOCAL_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
_FILE_SUFFIXES = (*_LOCAL_SUFFIXES, ".json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
"""``owner/name``: tried on the hub unless it names a file type or lies in an existing folder."""


def load_corpus(name_or_path: str | os.PathLike, split: str | None = None, *,
                n_docs: int | None = None, model=None, profile=None):
    """Load a corpus as a ``datasets.Dataset`` with a ``text`` column (see module docstring).

    ``n_docs`` keeps the first ``n_docs`` rows (hub corpora are then streamed, not downloaded
    whole). ``model``/``profile`` only matter for ``"faithful"`` (default: the profile's model).
    """
    if n_docs is not None and n_docs <= 0:
        raise ValueError(f"n_docs must be positive, got {n_docs}")
    name = str(name_or_path)
    spec = CORPORA.get(name)
    if name == "faithful":
        ds = _faithful(model, profile)
    elif Path(name).expanduser().exists():
        ds = _from_path(Path(name).expanduser(), split)
    elif (local := _local_file(name, split, spec)) is not None:
        ds = _from_path(local)
    elif spec is not None or _hub_id(name):
        spec = spec or CorpusSpec(name, name)
        ds = _from_hub(spec, split or spec.split, n_docs)
    elif split is not None and (found := _local_file(name, None, spec)) is not None:
        raise ValueError(f"corpus {name!r} has no split {split!r} in the shared data folder: a split is read "
                         f"from NAME_SPLIT{_LOCAL_SUFFIXES[0]}, and {name!r} is {found.name} (its default split); "
                         "pass split=None for it")
    else:
        shared = storage.shared_data_dir()
        where = (f"not a file of the shared data folder ({shared})" if shared else
                 f"and there is no shared data folder (set FAITHFUL_DATA_DIR to the folder of the "
                 f"NAME.jsonl.gz samples; {storage.home().parent / 'shared' / 'data'} does not exist)")
        raise ValueError(
            f"unknown corpus {name!r}: no such path, {where}, and not a hub dataset id. Available locally: "
            f"{', '.join(local_corpora()) or 'none'}; from the hub (registry): {', '.join(sorted(CORPORA))}")
    if len(ds) == 0:
        raise ValueError(f"corpus {name!r} holds no rows: give it at least one text")
    if n_docs is not None and len(ds) > n_docs:
        ds = ds.select(range(n_docs))
    return to_text(ds, spec.text_field if spec else "text", source=name)


def available_corpora() -> list[str]:
    """Registry names and the names of every file in the shared data folder."""
    return sorted(CORPORA) + local_corpora()


def local_corpora() -> list[str]:
    """Names of the files in the shared data folder (``FAITHFUL_DATA_DIR``)."""
    root = storage.shared_data_dir()
    if root is None or not root.is_dir():
        return []
    return sorted(_stem(p) for p in root.iterdir() if p.name.endswith(_LOCAL_SUFFIXES))


def corpus_kind(name: str) -> str:
    """``faithful``, ``web``, ``instruction`` or ``probe`` for a corpus name (files: by content)."""
    if name == "faithful" or name.startswith("faithful"):
        return "faithful"
    if name in CORPORA:
        return CORPORA[name].kind
    for spec in CORPORA.values():
        if spec.local and name.startswith(spec.local):
            return spec.kind
    if any(w in name for w in ("alpaca", "dolly", "instruct", "flan")):
        return "instruction"
    return "web"


def to_text(ds, text_field: str = "text", source: str = "dataset"):
    """Give ``ds`` a ``text`` column (from ``text_field``, the Alpaca template or FLAN's fields)."""
    cols = ds.column_names
    if "text" in cols:
        return _checked_text(ds, source)
    if {"instruction", "output"} <= set(cols):
        return ds.map(_alpaca_text, desc="Alpaca template")
    if {"inputs", "targets"} <= set(cols):
        return ds.map(lambda r: {"text": f"{r['inputs']}\n\n{r['targets']}"})
    if text_field in cols:
        return _checked_text(ds.rename_column(text_field, "text"), source)
    raise ValueError(f"{source} has no text column: its columns are {cols}. Give it a 'text' column "
                     "(e.g. ds.rename_column('sentence', 'text')), or instruction/input/output "
                     "columns for the Alpaca template.")


def _checked_text(ds, source: str):
    """``ds`` if its ``text`` column holds strings without nulls (read from Arrow's metadata)."""
    feature = ds.features["text"]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"{source}'s text column holds {feature}, not strings: convert it, e.g. "
                         "ds.map(lambda r: {'text': str(r['text'])})")

    nulls = pc.is_null(ds.data.column("text"))
    if ds._indices is not None:  # after select/shuffle/filter: the rows the dataset shows
        nulls = nulls.take(ds._indices.column(0))
    if count := pc.sum(nulls).as_py():
        raise ValueError(f"{source} has {count} rows whose text is null (the first: row "
                         f"{pc.index(nulls, True).as_py()}); drop them, "
                         "e.g. ds.filter(lambda r: r['text'] is not None)")
    return ds


def _alpaca_text(row) -> dict:
    key = "with_input" if (row.get("input") or "").strip() else "no_input"
    return {"text": ALPACA_TEMPLATE[key].format(instruction=row["instruction"],
                                                input=row.get("input") or "", output=row["output"])}


def _stem(p: Path) -> str:
    for suf in _LOCAL_SUFFIXES:
        if p.name.endswith(suf):
            return p.name[: -len(suf)]
    return p.name


def dataset_label(dataset: str | Path) -> str:
    """Folder name of a dataset given by name or path: a file loses only its data suffix
    (``.jsonl.gz`` …), a folder keeps its whole name (``…-t1.5-p0.9-…`` stays distinct)."""
    path = Path(dataset)
    if not path.exists():
        return str(dataset)

    return path.name if path.is_dir() else _stem(path)


def _local_file(name: str, split: str | None, spec: CorpusSpec | None) -> Path | None:
    root = storage.shared_data_dir()
    if root is None:
        return None
    base = spec.local if spec and spec.local else name
    default = spec.split if spec else "train"
    stems = [base, f"{base}_{default}"] if split is None else [f"{base}_{split}"]
    if split == default:
        stems.append(base)  # a file without a split suffix holds the default split
    for stem in stems:
        for suf in _LOCAL_SUFFIXES:
            if (root / f"{stem}{suf}").is_file():
                return root / f"{stem}{suf}"
    return None


def _hub_id(name: str) -> bool:
    return bool(_HUB_ID.fullmatch(name)) and not name.endswith(_FILE_SUFFIXES) \
        and not Path(name).parent.is_dir()


def _from_path(path: Path, split: str | None = None):
    if split not in (None, "train") and not (path / "dataset_dict.json").is_file():
        raise ValueError(f"{path} holds one split, so split={split!r} does not apply: a split names "
                         "a split of a registry corpus, a shared file or a saved DatasetDict")
    if path.is_dir() and (path / "faithful_meta.json").is_file():
        return load_faithful_dataset(path)
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and not any((path / m).is_file() for m in markers):
        raise ValueError(f"{path} is a folder but not a saved Hugging Face dataset (no "
                         f"{' / '.join(markers)}); save it with Dataset.save_to_disk")
    if not path.name.endswith(_FILE_SUFFIXES) and not path.is_dir():
        raise ValueError(f"cannot read {path}: expected {', '.join(_FILE_SUFFIXES)} or a saved dataset folder")
    if (path / "dataset_dict.json").is_file():  # a saved DatasetDict: one split of it
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        if split is not None and split not in splits:
            raise ValueError(f"{path} has no split {split!r}; its splits are {splits}")
        path = path / (split or ("train" if "train" in splits else splits[0]))
    if _holds_no_rows(path):  # datasets fails on these with StopIteration or IndexError
        raise ValueError(f"{path} holds no rows: give it at least one text")
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    builder = "parquet" if path.name.endswith(".parquet") else "json"
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _holds_no_rows(path: Path) -> bool:
    """True for an empty file, or a saved dataset without data files."""
    if path.is_dir():
        state = path / "state.json"
        return state.is_file() and not json.loads(state.read_text()).get("_data_files")
    if path.name.endswith(".parquet"):
        return pq.read_metadata(str(path)).num_rows == 0

    def first_text(f) -> str:  # the rest of the file from its first non-blank character
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return chunk.lstrip()
        return ""

    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        head = first_text(f)
        if path.name.endswith(".json") and head.startswith("["):  # a JSON array: empty is []
            rest = head[1:].lstrip() or first_text(f)
            return rest.startswith("]")
        return not head


def _faithful(model, profile):
    if profile is None:
        raise ValueError("load_corpus('faithful') needs profile= (its budget: faithful_tokens, max_length), "
                         "e.g. load_corpus('faithful', model=model, profile=faithful.get_profile())")
    profile = as_profile(profile)
    if model is None:
        model = load_model(profile.model)
    return _from_path(Path(generate.faithful_dataset_for(model, profile)))


def _from_hub(spec: CorpusSpec, split: str, n_docs: int | None):
    offline = any(os.environ.get(v, "0") not in ("0", "", "false", "False")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline or not hub_reachable("huggingface.co", 443, 3.0):
        local = ", ".join(local_corpora()) or "none (set FAITHFUL_DATA_DIR to a folder of .jsonl.gz files)"
        guess = "" if spec.name in CORPORA else f"{spec.name!r} is no existing path, so it was taken for a hub id: "
        raise RuntimeError(
            f"{guess}cannot load corpus {spec.name!r} ({spec.hub_id}): the Hugging Face hub is "
            f"{'disabled (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)' if offline else 'unreachable'} and no "
            f"local copy was found in {storage.shared_data_dir()}. Available locally: {local}. "
            "Fix: connect to the internet, or pass a local .jsonl/.parquet file or dataset folder.")
    if n_docs is not None:
        stream = datasets.load_dataset(spec.hub_id, spec.config, split=split, streaming=True)
        return datasets.Dataset.from_list(list(stream.take(n_docs)))
    return datasets.load_dataset(spec.hub_id, spec.config, split=split)
