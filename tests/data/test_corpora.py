"""Corpora by name (registry, shared data files, splits) and by path; the Alpaca template; errors."""
import gzip
import json

import datasets
import pytest

import faithful
from faithful.data import corpora
from faithful import storage

SHARED = storage.shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="no shared data folder")


def _write_jsonl(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A hand-made shared-data folder: a web file, a split probing set, an instruction file."""
    d = tmp_path / "shared"
    d.mkdir()
    _write_jsonl(d / "mini_web.jsonl.gz", [{"text": "a web page"}, {"text": "another page"}], gz=True)
    _write_jsonl(d / "sst2_train.jsonl.gz", [{"text": "good film", "label": 1}], gz=True)
    _write_jsonl(d / "sst2_validation.jsonl.gz", [{"text": "bad", "label": 0}, {"text": "ok", "label": 1}], gz=True)
    _write_jsonl(d / "instr.jsonl", [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                                     {"instruction": "Translate.", "input": "chat", "output": "cat"}])
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(d))
    return d


def test_registry_lists_the_papers_corpora():
    for name in ("pile-uncopyrighted", "fineweb", "openwebtext", "tinystories", "alpaca", "flan",
                 "open-instruct", "sst2", "cola", "ag_news", "yelp_polarity"):
        assert name in faithful.CORPORA
    assert faithful.CORPORA["flan"].hub_id == "Open-Orca/FLAN"
    assert faithful.CORPORA["sst2"].kind == "probe" and faithful.CORPORA["alpaca"].kind == "instruction"


def test_local_files_by_name_and_split(data_dir):
    web = faithful.load_corpus("mini_web")
    assert web["text"] == ["a web page", "another page"]
    assert faithful.load_corpus("sst2")["label"] == [1]  # registry name + default split
    val = faithful.load_corpus("sst2", "validation")
    assert val["text"] == ["bad", "ok"] and val["label"] == [0, 1]
    assert faithful.load_corpus("sst2_validation")["label"] == [0, 1]
    assert len(faithful.load_corpus("mini_web", n_docs=1)) == 1
    assert "mini_web" in faithful.available_corpora()


def test_alpaca_template_known_answer(data_dir):
    ds = faithful.load_corpus(data_dir / "instr.jsonl")
    assert ds["text"][0] == ("Below is an instruction that describes a task. Write a response that "
                             "appropriately completes the request.\n\n### Instruction:\nAdd 2 and 3.\n\n"
                             "### Response:\n5")
    assert ds["text"][1].endswith("### Instruction:\nTranslate.\n\n### Input:\nchat\n\n### Response:\ncat")
    assert "paired with an input" in ds["text"][1]


def test_faithful_by_name_and_by_path(tiny_model, home):
    profile = faithful.get_profile("smoke").replace(faithful_tokens=48, max_length=12, gen_batch_size=4)
    ds = faithful.load_corpus("faithful", model=tiny_model, profile=profile)
    assert {"text", "token_ids", "tokens"} <= set(ds.column_names) and sum(map(len, ds["token_ids"])) >= 48
    folder = faithful.faithful_dataset_for(tiny_model, profile)
    assert faithful.load_corpus(folder)["token_ids"] == ds["token_ids"]
    assert corpora.corpus_kind("faithful") == "faithful"


def test_paths_parquet_jsonl_gz_and_saved_datasets(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["x y", "z"], "label": [0, 1]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert faithful.load_corpus(tmp_path / "d.parquet")["text"] == ["x y", "z"]
    _write_jsonl(tmp_path / "d.jsonl.gz", [{"text": "gz one"}, {"text": "gz two"}], gz=True)
    assert faithful.load_corpus(tmp_path / "d.jsonl.gz")["text"] == ["gz one", "gz two"]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert faithful.load_corpus(str(tmp_path / "saved"))["label"] == [0, 1]
    # a saved DatasetDict: its train split by default, another by name, a missing one named
    datasets.DatasetDict({"test": ds.select([1]), "train": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert faithful.load_corpus(tmp_path / "dict")["text"] == ["x y"]
    assert faithful.load_corpus(tmp_path / "dict", "test")["text"] == ["z"]
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        faithful.load_corpus(tmp_path / "dict", "validation")
    datasets.DatasetDict({"validation": ds.select([1]), "test": ds.select([0])}).save_to_disk(str(tmp_path / "vt"))
    assert faithful.load_corpus(tmp_path / "vt")["text"] == ["z"]  # no train split: the first one
    with pytest.raises(ValueError, match="holds one split, so split='test' does not apply"):
        faithful.load_corpus(tmp_path / "d.parquet", "test")
    assert faithful.load_corpus(tmp_path / "d.jsonl.gz", "train")["text"] == ["gz one", "gz two"]


def test_empty_sources_are_refused_with_their_path(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    (tmp_path / "e.json").write_text(" [\n  ]\n")
    (tmp_path / "full.json").write_text('[{"text": "one"}]')
    assert faithful.load_corpus(tmp_path / "full.json")["text"] == ["one"]
    _write_jsonl(tmp_path / "e.jsonl.gz", [], gz=True)
    empty = datasets.Dataset.from_dict({"text": []})
    empty.to_parquet(str(tmp_path / "e.parquet"))
    empty.save_to_disk(str(tmp_path / "e_saved"))
    datasets.DatasetDict({"train": empty}).save_to_disk(str(tmp_path / "e_dict"))
    for name in ("e.jsonl", "e.json", "e.jsonl.gz", "e.parquet", "e_saved", "e_dict"):
        with pytest.raises(ValueError, match=f"{name}.* holds no rows"):
            faithful.load_corpus(tmp_path / name)


def test_dataset_without_text_names_its_columns(tmp_path):
    _write_jsonl(tmp_path / "bad.jsonl", [{"sentence": "s", "score": 1}])
    with pytest.raises(ValueError, match=r"\['sentence', 'score'\]"):
        faithful.load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a saved Hugging Face dataset"):
        faithful.load_corpus(tmp_path / "folder")
    _write_jsonl(tmp_path / "nulls.jsonl", [{"text": "fine"}, {"text": None}, {"text": None}])
    with pytest.raises(ValueError, match=r"nulls.jsonl has 2 rows whose text is null \(the first: row 1\)"):
        faithful.load_corpus(tmp_path / "nulls.jsonl")
    import datasets

    mixed = datasets.Dataset.from_dict({"text": ["a", None, "b", "c"]})
    with pytest.raises(ValueError, match=r"has 1 rows whose text is null \(the first: row 2\)"):
        faithful.data.corpora.to_text(mixed.select([3, 0, 1]))  # an index mapping: rows as the dataset shows them
    assert faithful.data.corpora.to_text(mixed.select([3, 0])) is not None
    _write_jsonl(tmp_path / "numbers.jsonl", [{"text": 1}, {"text": 2}])
    with pytest.raises(ValueError, match="numbers.jsonl's text column holds .*int64.*not strings"):
        faithful.load_corpus(tmp_path / "numbers.jsonl")


def test_offline_hub_corpus_lists_local_names(data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="mini_web.*sst2_validation|sst2_train.*mini_web") as err:
        faithful.load_corpus("fineweb")
    assert "HuggingFaceFW/fineweb" in str(err.value)
    with pytest.raises(ValueError, match="unknown corpus 'nope'") as err:
        faithful.load_corpus("nope")
    local, hub = str(err.value).split("Available locally: ")[1].split("; from the hub (registry): ")
    assert local.split(", ") == ["instr", "mini_web", "sst2_train", "sst2_validation"]
    assert "fineweb" in hub and "fineweb" not in local
    # any hub id is tried on the hub (here: offline), a missing file's name is not
    with pytest.raises(RuntimeError, match="taken for a hub id.*'someone/corpus'.*mini_web"):
        faithful.load_corpus("someone/corpus")
    for missing in ("data/missing.jsonl", "./missing", "../missing", f"{data_dir}/missing"):
        with pytest.raises(ValueError, match="unknown corpus .*no such path"):
            faithful.load_corpus(missing)
    with pytest.raises(ValueError, match="n_docs"):
        faithful.load_corpus("mini_web", n_docs=0)
    with pytest.raises(ValueError, match="'mini_web' has no split 'test'.*mini_web.jsonl.*split=None"):
        faithful.load_corpus("mini_web", "test")


def test_unknown_name_without_a_shared_data_folder_says_how_to_set_one(home, monkeypatch):
    monkeypatch.delenv("FAITHFUL_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="no shared data folder .set FAITHFUL_DATA_DIR") as err:
        faithful.load_corpus("wikipedia_en_sample")
    assert "Available locally: none" in str(err.value)


@needs_shared
def test_shared_samples_used_by_the_notebooks(monkeypatch):
    monkeypatch.setenv("FAITHFUL_DATA_DIR", str(SHARED))
    for name in ("wikipedia_en_sample", "c4_en_train_first1000", "alpaca", "dolly_15k_mosaic_1k"):
        ds = faithful.load_corpus(name, n_docs=5)
        assert len(ds) == 5 and all(isinstance(t, str) and t for t in ds["text"])
    assert set(faithful.load_corpus("ag_news", "test", n_docs=50)["label"]) <= {0, 1, 2, 3}
    assert faithful.load_corpus("alpaca", n_docs=1)["text"][0].startswith("Below is an instruction")
