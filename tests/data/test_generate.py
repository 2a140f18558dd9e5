"""Faithful dataset generation on the tiny random model: sampling, stopping, shards, resume."""
import errno

import datasets
import pytest
import torch

import faithful
from faithful.data import generate, sampling
from faithful.data.generate import generate_faithful_dataset, load_faithful_dataset, read_meta

SMALL = dict(max_length=8, batch_size=4, progress=False, dtype=torch.float32)


def rows(path):
    ds = load_faithful_dataset(path)
    return list(zip(ds["id"], ds["token_ids"]))


# ----------------------------------------------------------------------------- sampling loop
class Scripted:
    """A stepper whose 'model' emits script[row][t] at step t, and which checks its inputs."""

    device = torch.device("cpu")

    def __init__(self, script, vocab=50):
        self.script, self.vocab, self.fed = script, vocab, []

    def reset(self, batch):
        self.rows, self.t = torch.arange(batch), 0

    def step(self, tokens):
        self.fed.append((self.rows.clone(), tokens[:, 0].clone()))
        logits = torch.full((len(self.rows), self.vocab), -1e4)
        for j, r in enumerate(self.rows.tolist()):
            logits[j, self.script[r][self.t]] = 0.0
        self.t += 1
        return logits

    def keep(self, mask):
        self.rows = self.rows[mask]


def test_sample_batch_stops_at_stop_tokens_and_drops_finished_rows():
    # row 0 stops after 2 tokens (EOS 2), row 1 runs to max_length, row 2 stops at once
    # (start token 0 as separator), row 3 stops after 4 tokens.
    script = [[5, 6, 2, 9, 9, 9], [7, 7, 7, 7, 7, 7], [0, 9, 9, 9, 9, 9], [3, 4, 5, 6, 2, 9]]
    st = Scripted(script)
    out = sampling.sample_batch(st, 4, start_id=0, stop_ids=[0, 2], max_length=5,
                                temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert out == [[5, 6], [7, 7, 7, 7, 7], [], [3, 4, 5, 6]]
    # the first step feeds the start token to every row; later steps feed each live row its
    # own previous token, and finished rows are gone from the batch
    assert st.fed[0][1].tolist() == [0, 0, 0, 0]
    assert st.fed[1][0].tolist() == [0, 1, 3] and st.fed[1][1].tolist() == [5, 7, 3]
    assert st.fed[2][0].tolist() == [0, 1, 3] and st.fed[2][1].tolist() == [6, 7, 4]
    assert st.fed[3][0].tolist() == [1, 3] and st.fed[3][1].tolist() == [7, 5]
    assert len(st.fed) == 5  # no step after the last token


def test_hf_cache_layer_holds_what_dynamic_layer_holds():
    """HFStepper's in-place cache layer against transformers' DynamicLayer (which concatenates):
    the same keys and values through a multi-token first update, buffer growth past 64 and 130
    tokens, and row drops before and after growing."""
    from transformers.cache_utils import DynamicLayer

    ours, ref = sampling._append_in_place_layer()(), DynamicLayer()
    gen = torch.Generator().manual_seed(0)
    rows = 5
    for t in range(150):
        k, v = (torch.randn(rows, 3, 3 if t == 0 else 1, 8, generator=gen) for _ in range(2))
        got, want = ours.update(k, v), ref.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if t in (40, 100, 101):
            keep = torch.arange(1, rows)  # drop the first row
            ours.batch_select_indices(keep)
            ref.batch_select_indices(keep)
            rows -= 1
    assert ours.get_seq_length() == ref.get_seq_length() == 152
    assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)


def test_sample_next_matches_probabilities_temperature_and_top_p():
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = p.log().repeat(20000, 1)
    gen = torch.Generator().manual_seed(1)
    freq = torch.bincount(sampling.sample_next(logits, 1.0, 1.0, gen), minlength=3) / 20000
    assert torch.allclose(freq, p, atol=0.015)
    hot = p.sqrt() / p.sqrt().sum()  # temperature 2 → p^(1/2), renormalised
    freq = torch.bincount(sampling.sample_next(logits, 2.0, 1.0, gen), minlength=3) / 20000
    assert torch.allclose(freq, hot, atol=0.015)
    # top_p 0.6: the nucleus is {0, 1} (0.5 < 0.6 ≤ 0.8), renormalised to 5/8, 3/8
    freq = torch.bincount(sampling.sample_next(logits, 1.0, 0.6, gen), minlength=3) / 20000
    assert freq[2] == 0 and abs(freq[0] - 0.625) < 0.015
    # top_p 0.5: token 0 alone fills the nucleus
    assert (sampling.sample_next(logits[:100], 1.0, 0.5, gen) == 0).all()


# ----------------------------------------------------------------------------- the dataset
def test_dataset_columns_counts_and_determinism(tiny_model, home):
    a = generate_faithful_dataset(tiny_model, 40, out_dir=home / "a", **SMALL)
    b = generate_faithful_dataset(tiny_model, 40, out_dir=home / "b", **SMALL)
    c = generate_faithful_dataset(tiny_model, 40, out_dir=home / "c", seed=7, **SMALL)
    ds = load_faithful_dataset(a)
    assert ds.column_names == ["id", "seed", "temp", "top_p", "text", "tokens", "token_ids"]
    meta = read_meta(a)
    assert meta["tokens"] == sum(ds["tokens"]) >= 40 and meta["samples"] == len(ds)
    assert meta["tokens"] - 40 < 4 * 8  # stops at the first whole batch past the target
    assert meta["settings"]["start"] == "bos" and meta["package_version"] == faithful.__version__
    stops = set(faithful.stop_token_ids(tiny_model))
    for r in ds:
        assert r["tokens"] == len(r["token_ids"]) and 1 <= r["tokens"] <= 8
        assert not stops & set(r["token_ids"])
        assert r["text"] == tiny_model.tokenizer.decode(r["token_ids"])
        assert (r["seed"], r["temp"], r["top_p"]) == (42, 1.0, 1.0)
    assert rows(a) == rows(b)          # same seed and settings ⇒ same samples
    assert rows(a) != rows(c)          # another seed ⇒ other samples
    assert len(set(ds["id"])) == len(ds)
    # an ordinary Hugging Face dataset folder as well
    assert datasets.load_from_disk(str(a))["token_ids"] == ds["token_ids"]


def test_eos_ends_samples_early(tiny_model, home):
    """With the EOS logit raised, samples stop before max_length and never contain a stop token."""
    import copy

    eager = copy.deepcopy(tiny_model)
    with torch.no_grad():
        eager.unembed.b_U[2] += 11.0  # <|im_end|> now has about half the probability
    path = generate_faithful_dataset(eager, 30, out_dir=home / "eos", max_length=16,
                                     batch_size=8, progress=False)
    ds, meta = load_faithful_dataset(path), read_meta(path)
    assert meta["empty_dropped"] > 0                    # some stopped at once: not stored
    assert all(0 < n < 16 for n in ds["tokens"])        # the rest stopped early
    assert meta["samples"] + meta["empty_dropped"] == 8 * meta["shards"]
    assert all(2 not in ids and 0 not in ids for ids in ds["token_ids"])
    assert meta["tokens"] == sum(ds["tokens"])


def test_resume_after_interruption_loses_and_duplicates_nothing(tiny_model, home, monkeypatch):
    ref = generate_faithful_dataset(tiny_model, 100, out_dir=home / "ref", **SMALL)
    # 1) stopped cleanly after two shards (max_shards), then continued
    part = generate_faithful_dataset(tiny_model, 100, out_dir=home / "p", max_shards=2, **SMALL)
    assert read_meta(part)["shards"] == 2 and not read_meta(part)["complete"]
    with pytest.warns(UserWarning, match="unfinished Faithful dataset .* of 100 tokens.*run generate"):
        faithful.load_corpus(str(part))
    generate_faithful_dataset(tiny_model, 100, out_dir=part, **SMALL)
    assert rows(part) == rows(ref)
    # 2) killed (Ctrl-C) while writing the third shard
    real, calls = generate._write_shard, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_faithful_dataset(tiny_model, 100, out_dir=home / "k", **SMALL)
    monkeypatch.setattr(generate, "_write_shard", real)
    assert read_meta(home / "k")["shards"] == 2
    generate_faithful_dataset(tiny_model, 100, out_dir=home / "k", **SMALL)
    assert rows(home / "k") == rows(ref)


def test_asking_for_more_tokens_extends(tiny_model, home):
    small = generate_faithful_dataset(tiny_model, 30, out_dir=home / "x", **SMALL)
    first = rows(small)
    generate_faithful_dataset(tiny_model, 90, out_dir=small, **SMALL)
    grown = rows(small)
    assert grown[: len(first)] == first and sum(len(t) for _, t in grown) >= 90
    assert rows(small) == rows(generate_faithful_dataset(tiny_model, 90, out_dir=home / "y", **SMALL))
    assert read_meta(small)["n_tokens"] == 90


def test_disk_full_mid_shard_leaves_no_corrupt_shard(tiny_model, home, monkeypatch):
    real = generate._write_arrow

    def full(path, table):
        path.write_bytes(b"ARROW half")  # a torn write …
        raise OSError(errno.ENOSPC, "No space left on device")

    out = home / "full"
    generate_faithful_dataset(tiny_model, 20, out_dir=out, **SMALL)  # one good shard first
    monkeypatch.setattr(generate, "_write_arrow", full)
    with pytest.raises(OSError, match="disk full") as err:
        generate_faithful_dataset(tiny_model, 60, out_dir=out, **SMALL)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in out.iterdir() if "data-" in p.name) == ["data-00000.arrow"]
    load_faithful_dataset(out)  # still readable
    monkeypatch.setattr(generate, "_write_arrow", real)
    generate_faithful_dataset(tiny_model, 60, out_dir=out, **SMALL)
    assert rows(out) == rows(generate_faithful_dataset(tiny_model, 60, out_dir=home / "r", **SMALL))


def test_flat_start_spreads_the_first_token(tiny_model, home):
    path = generate_faithful_dataset(tiny_model, 60, out_dir=home / "flat", start="flat",
                                     max_length=4, batch_size=16, progress=False)
    first = [ids[0] for ids in load_faithful_dataset(path)["token_ids"]]
    special = set(faithful.special_token_ids(tiny_model))
    assert not special & set(first)
    assert len(set(first)) >= 0.9 * len(first)  # uniform over ~49k tokens: nearly all distinct
    assert read_meta(path)["start"] == "flat"


def test_default_folder_and_profile_helper(tiny_model, home):
    prof = faithful.get_profile("smoke").replace(faithful_tokens=20, max_length=8, gen_batch_size=4)
    path = generate.faithful_dataset_for(tiny_model, prof, progress=False)
    assert path == home / "data" / "faithful-tiny-random-bos-t1-p1-len8-s42"
    assert read_meta(path)["settings"]["batch_size"] == 4
    assert generate.faithful_dataset_for(tiny_model, prof, progress=False) == path  # reused


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_tokens=0), "n_tokens"), (dict(n_tokens=-5), "n_tokens"), (dict(n_tokens=2.5), "n_tokens"),
    (dict(temperature=0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(start="uniform"), "start"), (dict(max_length=100_000), "max_length"),
    (dict(backend="llama.cpp"), "backend"), (dict(batch_size=0), "batch_size"),
])
def test_bad_inputs_raise_clear_errors(tiny_model, home, kwargs, match):
    args = dict(n_tokens=10, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_faithful_dataset(tiny_model, out_dir=home / "bad", **args)


def test_refuses_a_folder_with_other_settings(tiny_model, home):
    out = generate_faithful_dataset(tiny_model, 10, out_dir=home / "run", **SMALL)
    before = rows(out)
    with pytest.raises(ValueError, match="temperature.*refusing to mix"):
        generate_faithful_dataset(tiny_model, 50, out_dir=out, temperature=1.5, **SMALL)
    assert rows(out) == before
    other = home / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a Faithful dataset"):
        generate_faithful_dataset(tiny_model, 10, out_dir=other, **SMALL)
    with pytest.raises(FileNotFoundError, match="generate_faithful_dataset"):
        load_faithful_dataset(other)


def test_vllm_backend_absent_is_a_clear_error(tiny_model, home, monkeypatch):
    monkeypatch.setattr(sampling, "hf_source", lambda model: "somewhere")
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    with pytest.raises(ImportError, match="pip install vllm"):
        generate_faithful_dataset(tiny_model, 10, out_dir=home / "v", backend="vllm", **SMALL)


def test_tiny_model_has_no_hf_weights(tiny_model):
    # it borrows SmolLM2's tokenizer, but the HF backend must not take SmolLM2 for it
    assert sampling.hf_source(tiny_model) is None
