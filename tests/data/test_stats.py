"""Dataset statistics against hand-computed answers."""
import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

import faithful
from faithful.data.stats import DatasetStats, dataset_stats, first_token_divergences, stats_table
from faithful.intervals import Estimate


def test_divergences_known_answer():
    # P = (1/2, 1/4, 1/4); first-token counts (3, 1, 0); ε = 1 → Q_ε = (4/7, 2/7, 1/7)
    d = first_token_divergences(np.array([0.5, 0.25, 0.25]), np.array([3, 1, 0]), epsilon=1.0)
    kl = 0.75 * math.log(7 / 8) + 0.25 * math.log(7 / 4)                # = 0.039756
    assert d["kl_model_data"] == pytest.approx(kl, abs=1e-12)
    assert d["kl_model_data"] == pytest.approx(0.039756, abs=1e-6)
    assert d["kl_data_model"] == pytest.approx(0.75 * math.log(1.5), abs=1e-12)  # Q = (3/4, 1/4, 0)
    # M = (5/8, 1/4, 1/8): JS = ½[½ln(4/5) + ¼ln 2] + ½[¾ln(6/5)]
    js = 0.5 * (0.5 * math.log(0.8) + 0.25 * math.log(2)) + 0.5 * (0.75 * math.log(1.2))
    assert d["js"] == pytest.approx(js, abs=1e-12) and d["js"] == pytest.approx(0.099228, abs=1e-6)
    same = first_token_divergences(np.array([0.2, 0.8]), np.array([200, 800]), epsilon=1e-9)
    assert same["kl_model_data"] == pytest.approx(0, abs=1e-9) and same["js"] == pytest.approx(0, abs=1e-12)
    assert math.isnan(first_token_divergences(np.ones(3), np.zeros(3))["js"])


@pytest.fixture(scope="module")
def peaked(tiny_model):
    """The tiny model with a known start distribution: P(100, 101, 102) = (½, ¼, ¼), the rest ≈ 0."""
    m = copy.deepcopy(tiny_model)
    with torch.no_grad():
        m.unembed.W_U.zero_()
        m.unembed.b_U.fill_(-40.0)
        m.unembed.b_U[[100, 101, 102]] = torch.tensor([0.5, 0.25, 0.25]).log()
    return m


def test_counts_coverage_and_kl_on_a_hand_made_dataset(peaked):
    docs = [[100, 60, 70], [100, 80], [101], [], [100, 60, 60, 60]]  # the empty document is not counted
    s = dataset_stats(peaked, docs, name="hand", epsilon=1e-3)
    V = peaked.cfg.d_vocab
    assert (s.total_tokens, s.sequences, s.length_min, s.length_max) == (10, 4, 1, 4)
    assert s.length_mean == 2.5 and s.length_median == 2.5
    assert s.length_std == pytest.approx(np.std([3, 2, 1, 4]))
    assert s.unique_tokens == 5 and s.all_token_coverage == pytest.approx(100 * 5 / V)
    assert s.unique_first_tokens == 2 and s.first_token_coverage == pytest.approx(100 * 2 / V)
    # by hand: P = (½, ¼, ¼) on tokens 100, 101, 102; first tokens 100, 100, 101, 100 → Q = (¾, ¼, 0)
    n_support = V - len(faithful.special_token_ids(peaked))
    denom = 4 + 1e-3 * n_support
    kl = (0.5 * math.log(0.5 / (3.001 / denom)) + 0.25 * math.log(0.25 / (1.001 / denom))
          + 0.25 * math.log(0.25 / (1e-3 / denom)))
    assert s.kl_model_data == pytest.approx(kl, rel=1e-6)
    assert s.kl_data_model == pytest.approx(0.75 * math.log(1.5), abs=1e-6)
    assert s.js == pytest.approx(0.099228, abs=1e-5)
    assert [t["id"] for t in s.top_model[:3]] == [100, 101, 102]
    assert s.top_data[0] == dict(id=100, token=peaked.tokenizer.decode([100]),
                                 model_p=pytest.approx(0.5), data_freq=0.75)
    curve = np.array(s.rank_curves["data_first"])
    assert curve[:, 0].tolist() == [1, 2] and curve[:, 1].tolist() == [0.75, 0.25]


def test_kl_matches_scipy_on_the_random_model(tiny_model):
    docs = [[i % 50 + 100, 3] for i in range(200)]
    s = dataset_stats(tiny_model, docs, epsilon=0.5)
    special = set(faithful.special_token_ids(tiny_model))
    keep = [i for i in range(tiny_model.cfg.d_vocab) if i not in special]
    p = faithful.data.stats.start_distribution(tiny_model)[keep]
    counts = np.zeros(tiny_model.cfg.d_vocab)
    counts[100:150] = 4
    q_eps = (counts[keep] + 0.5) / (200 + 0.5 * len(keep))
    assert s.kl_model_data == pytest.approx(entropy(p / p.sum(), q_eps), rel=1e-9)


def test_text_corpora_are_tokenised_without_the_start_token(tiny_model):
    import datasets

    texts = ["Hello world, this is a test.", "", "The cat sat on the mat."]
    ids = [tiny_model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    s = dataset_stats(tiny_model, texts)
    assert s.sequences == 2 and s.total_tokens == sum(map(len, ids))
    assert {t["id"] for t in s.top_data if t["data_freq"] > 0} == {ids[0][0], ids[2][0]}
    assert faithful.start_token_id(tiny_model) not in {ids[0][0], ids[2][0]}
    ds = dataset_stats(tiny_model, datasets.Dataset.from_dict({"text": texts}), max_docs=1)
    assert ds.sequences == 1 and ds.total_tokens == len(ids[0])


def test_faithful_folder_save_load_and_table(tiny_model, home):
    path = faithful.generate_faithful_dataset(tiny_model, 30, out_dir=home / "f", max_length=6,
                                              batch_size=4, progress=False, dtype=torch.float32)
    s = dataset_stats(tiny_model, path)
    meta = faithful.data.generate.read_meta(path)
    assert s.name == "f" and s.total_tokens == meta["tokens"] and s.sequences == meta["samples"]
    out = s.save(home / "stats")
    assert out == home / "stats" / "f.json" and out.with_suffix(".png").stat().st_size > 1000
    assert DatasetStats.load(out) == s
    other = dataset_stats(tiny_model, ["A web page about cats."], name="web")
    table = stats_table([s, other])
    lines = table.splitlines()
    assert len(lines) == 4 and "first-tok cov %" in lines[0] and lines[3].startswith("| web |")
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert head.index("ε") == head.index("KL(model‖data)") + 1 and cells[head.index("ε")] == "0.001"
    rows = stats_table([s, other], markdown=False)
    assert [r["name"] for r in rows] == ["f", "web"] and rows[1]["total_tokens"] == other.total_tokens
    assert rows[0]["epsilon"] == faithful.data.stats.EPSILON


def test_bad_inputs(tiny_model, home):
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        dataset_stats(tiny_model, [[1, tiny_model.cfg.d_vocab + 5]])
    with pytest.raises(ValueError, match="no non-empty document"):
        dataset_stats(tiny_model, [[], []])
    with pytest.raises(ValueError, match="epsilon"):
        dataset_stats(tiny_model, [[5]], epsilon=0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
            dataset_stats(tiny_model, [[5]], max_tokens=bad)
    with pytest.raises(ValueError, match="max_docs must be a positive integer"):
        dataset_stats(tiny_model, [[5]], max_docs=0)
    with pytest.raises(TypeError, match="cannot read"):
        dataset_stats(tiny_model, {"text": "x"})
    with pytest.raises(ValueError, match="unknown corpus .*nothing-here.*no such path"):
        dataset_stats(tiny_model, home / "nothing-here")


def test_any_corpus_load_corpus_takes(tiny_model, home):
    """A .jsonl file (like a corpus name or saved dataset) is read through load_corpus."""
    texts = ["the cat sat on the mat", "a dog ran in the park", "the end"]
    path = home / "mini.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    by_path, by_list = dataset_stats(tiny_model, path), dataset_stats(tiny_model, texts)
    assert by_path.name == "mini" and by_path.total_tokens == by_list.total_tokens > 0
    assert by_path.all_token_coverage == by_list.all_token_coverage > 0
    import datasets

    ids = [[5, 6, 7], [8, 5]]
    datasets.Dataset.from_dict({"token_ids": ids}).save_to_disk(str(home / "ids"))  # no text column
    assert dataset_stats(tiny_model, home / "ids").total_tokens == dataset_stats(tiny_model, ids).total_tokens == 5


def test_max_tokens_cuts_the_last_document_by_hand(peaked):
    docs = [[100, 60, 70], [], [101, 80], [102, 60, 60, 60], [100, 90]]
    s = dataset_stats(peaked, docs, max_tokens=7, epsilon=1e-3)
    # kept: [100, 60, 70], [101, 80], then [102, 60] cut from [102, 60, 60, 60]; [100, 90] never read
    assert (s.total_tokens, s.sequences, s.length_min, s.length_max) == (7, 3, 2, 3)
    assert s.unique_tokens == 6 and s.unique_first_tokens == 3  # 100 60 70 101 80 102; firsts 100 101 102
    assert s == dataset_stats(peaked, [[100, 60, 70], [101, 80], [102, 60]], epsilon=1e-3)
    # Q = (⅓, ⅓, ⅓) on 100, 101, 102 and P = (½, ¼, ¼): KL(Q ‖ P) = ⅓ ln(2/3) + ⅔ ln(4/3)
    assert s.kl_data_model == pytest.approx(math.log(2 / 3) / 3 + 2 * math.log(4 / 3) / 3, abs=1e-6)
    # a cut exactly at a document's end keeps it whole and reads no further
    assert dataset_stats(peaked, docs, max_tokens=5).sequences == 2
    # a budget above the corpus uses it whole: total_tokens says how many were used
    assert dataset_stats(peaked, docs, max_tokens=1_000).total_tokens == 11
    # with max_docs too, the first limit reached stops
    assert dataset_stats(peaked, docs, max_docs=2, max_tokens=7).total_tokens == 3


def test_max_tokens_compares_corpora_of_different_lengths_at_one_count(tiny_model):
    import datasets

    short = [[5 + i % 7, 9] for i in range(100)]                    # 2 tokens per document
    long = datasets.Dataset.from_dict({"token_ids": [list(range(10, 47)) for _ in range(20)]})  # 37
    a, b = (dataset_stats(tiny_model, d, max_tokens=150) for d in (short, long))
    assert a.total_tokens == b.total_tokens == 150
    assert (a.sequences, b.sequences) == (75, 5) and b.length_min == 150 - 4 * 37
    texts = ["the cat sat on the mat and then it slept all day long"] * 600  # texts: tokenised as needed
    n = len(tiny_model.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    c = dataset_stats(tiny_model, texts, max_tokens=150)
    assert c.total_tokens == 150 and c.sequences == -(-150 // n) and c.length_min == 150 - (c.sequences - 1) * n


def test_bootstrap_intervals_over_documents(tiny_model):
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 200, size=int(n)).tolist() for n in rng.integers(3, 30, size=300)]
    st = dataset_stats(tiny_model, docs)
    kl, gap = (Estimate(**st.intervals[k]) for k in ("kl_model_data", "coverage_gap"))
    assert kl.low <= kl.high and kl.n == 200 and kl.method == "bootstrap spread over documents (200 resamples)"
    assert kl.mean == st.kl_model_data
    # the gap is first-token minus all-token coverage: negative here, and its interval too
    assert gap.mean == pytest.approx(st.first_token_coverage - st.all_token_coverage) and gap.high < 0
    assert dataset_stats(tiny_model, docs[:1]).intervals == {}
