"""The paper's numbers: hand-checked cells, the tables' shape, and the readings §5 confirms.

Line numbers refer to /work/shared/reference/faithfulsae-paper.txt (arXiv:2506.17673, extracted).
"""
from collections import Counter

import pytest

from faithful.report.paper import PAPER, TABLES, PaperValue, paper_values


def one(table, **where) -> float:
    (v,) = paper_values(table, **where)
    return v.value


def test_hand_checked_values():
    # l.53  "| GPT-2 Small | 99.80 | 21.49 | 0.2631 | ||"   (all-token %, first-token %, KL)
    assert one("1", model="GPT-2 Small", metric="coverage_first_token") == 0.2149
    # l.57  "| Gemma 2B | 93.44 | 0.40 | 2.2392 | ||"
    assert one("1", model="Gemma 2B", metric="coverage_all_tokens") == 0.9344
    assert one("1", model="Gemma 2B", metric="kl") == 2.2392
    # l.99  "| FLAN | 0.6113 | 0.1283 |"   (columns Pythia 1.4B | Pythia 2.8B)
    assert one("2", model="Pythia 2.8B", dataset="FLAN") == 0.1283
    # l.104 "| Pythia 2.8B | Pythia 1.4B | 0.2288 |"   (Target Model | Source Model | SFR)
    assert one("3", model="Pythia 2.8B", setting="source=Pythia 1.4B") == 0.2288
    assert one("3", model="Pythia 2.8B", dataset="Faithful (Pythia 1.4B)") == 0.2288
    # l.112 "| GPT-2 | 0.5405 | 0.5258 | 0.5209 |"   (Pile | Faithful | FineWeb)
    assert one("4", model="GPT-2 Small", dataset="FineWeb") == 0.5209
    # l.116 "| LLaMA 8B | 0.1066 | 0.0914 | 0.0936 |"
    assert one("4", model="LLaMA 3.1 8B", dataset="The Pile") == 0.1066
    # l.231 "| Pythia 2.8B | 0.8050 | 0.8256 | 0.8365 | 0.6985 | 0.6371 | 0.6783 | 0.9392 | ..."
    assert one("C.1", model="Pythia 2.8B", dataset="FineWeb", setting="CoLA") == 0.6371
    # l.233 "| LLaMA 3B | ... | 0.9547 | 0.9544 | 0.9525 |"   (Yelp: Faithful | Fineweb | Pile)
    assert one("C.1", model="LLaMA 3.2 3B", dataset="The Pile", setting="Yelp") == 0.9525
    # l.237 "| Faithful | 0.1139 | 0.3871 | 0.5425 | 0.4655 | 0.0314 | 0.1899 | 0.4150 |"
    assert one("C.2", model="LLaMA 3.1 8B", dataset="Faithful", metric="ffr") == 0.4150
    # l.238 "| Pile | 0.1180 | 0.3871 | 0.5669 | 0.4460 | 0.0446 | 0.2930 | 0.5341 |"
    assert one("C.2", model="Gemma 2B", dataset="The Pile") == 0.5669


def test_every_table_present_with_its_cell_count():
    counts = Counter(v.table for v in PAPER)
    assert counts == {"1": 24, "2": 8, "3": 4, "4": 15, "C.1": 54, "C.2": 14}
    assert set(TABLES) == set(counts)


def test_no_duplicate_keys():
    keys = Counter((v.table, v.model, v.dataset, v.metric, v.setting) for v in PAPER)
    assert [k for k, n in keys.items() if n > 1] == []


def test_ratios_are_fractions():
    ratios = [v for v in PAPER if v.metric in {"sfr", "ffr", "accuracy"} or v.metric.startswith("coverage")]
    assert len(ratios) == len(PAPER) - 8                                  # all but Table 1's KL
    assert all(isinstance(v.value, float) and 0 <= v.value <= 1 for v in ratios)
    assert {v.metric for v in PAPER} == {"kl", "coverage_all_tokens", "coverage_first_token",
                                         "sfr", "ffr", "accuracy"}


def test_readings_agree_with_the_prose():
    # §5.1/§5.2: Table 2's Faithful cells are Table 3's same-source cells
    for m in ("Pythia 1.4B", "Pythia 2.8B"):
        assert one("2", model=m, dataset="Faithful") == one("3", model=m, setting=f"source={m}")
    # §5.4: KL below 2 except Gemma 2B; all-token coverage > 90 %
    assert {v.model for v in paper_values("1", metric="kl") if v.value >= 2} == {"Gemma 2B"}
    assert all(v.value > 0.9 for v in paper_values("1", metric="coverage_all_tokens"))
    # §5.6: FaithfulSAE best in 12 of 18 cases, and on CoLA for every model
    wins = {}
    for v in paper_values("C.1", dataset="Faithful"):
        others = [w.value for w in paper_values("C.1", model=v.model, setting=v.setting)]
        wins[v.model, v.setting] = v.value == max(others)
    assert len(wins) == 18 and sum(wins.values()) == 12
    assert all(won for (_, task), won in wins.items() if task == "CoLA")
    # abstract/§5.7: lower FFR in 5 of 7 models, the Pythia family excepted
    higher_or_equal = {v.model for v in paper_values("C.2", dataset="Faithful")
                       if v.value >= one("C.2", model=v.model, dataset="The Pile")}
    assert higher_or_equal == {"Pythia 1.4B", "Pythia 2.8B"}


def test_filtering():
    assert len(paper_values()) == len(PAPER)
    faithful_2 = paper_values("2", dataset="Faithful")
    assert [(v.model, v.value) for v in faithful_2] == [("Pythia 1.4B", 0.7145), ("Pythia 2.8B", 0.2911)]
    assert len(paper_values(metric="sfr")) == 8 + 4 + 15
    assert paper_values("4", model="Pythia 6.9B") == []
    assert all(isinstance(v, PaperValue) for v in paper_values("C.1", setting="SST-2"))


def test_bad_input():
    with pytest.raises(ValueError, match=r"C\.1.*C\.2"):
        paper_values("5")
    with pytest.raises(ValueError, match="metric.*value.*setting"):
        paper_values("1", modle="GPT-2 Small")
    with pytest.raises(ValueError, match="modle"):
        paper_values(modle="GPT-2 Small")
    with pytest.raises(AttributeError):
        PAPER[0].value = 1.0
