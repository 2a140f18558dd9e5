"""`python -m faithful all` end to end on the tiny model at a shrunken smoke profile, the report it
writes (Markdown and a self-contained HTML file), and the report's errors when results are missing."""
import base64
import re
from html.parser import HTMLParser

import pytest

from faithful import config
from faithful.__main__ import main
from faithful.report import claims

TINY = config.PROFILES["smoke"].replace(model="tiny-random", faithful_tokens=1_400, train_tokens=1_024,
                                        train_batch_size=128, d_sae=64, k=4, context_size=32, eval_tokens=128,
                                        fake_tokens=256, stats_tokens=512, probe_n_train=32, probe_n_test=24,
                                        eval_sets=("faithful", "wikipedia_en_sample"))


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


@pytest.fixture
def tiny_profile(monkeypatch, home):
    monkeypatch.setitem(config.PROFILES, "tiny", TINY.replace(name="tiny"))
    return "tiny"


def test_report_before_results_names_the_missing_step(tiny_profile):
    with pytest.raises(FileNotFoundError, match=r"no stats results for tiny-random .* run `python -m faithful "
                                                 r"stats --profile tiny` \(or notebook 02\)"):
        main(["report", "--profile", tiny_profile])


def test_all_runs_every_step_and_writes_the_report(tiny_profile, home, capsys):
    main(["all", "--profile", tiny_profile])
    out = capsys.readouterr().out
    rows = claims.claims("tiny-random", "tiny")
    assert {c.verdict for c in rows} <= {"agrees", "disagrees", "not resolved", "not measured"}
    assert all(c.verdict in out for c in rows) and "Table C.2" in out and "report.html" in out
    assert all(claims.design_checks("tiny-random", "tiny").values())  # held-out evaluation, one pass, 3 seeds
    folder = home / "results" / "tiny-random"
    md = (folder / "report.md").read_text()
    assert "## Verdicts" in md and "| Table 4 |" in md and re.search(r"!\[.*\]\(sfr/.*\.png\)", md)
    # the verdicts at every budget of the runs' snapshots, and where each stops changing
    assert "## Is the budget enough?" in md
    assert re.search(r"\| wikipedia_en_sample \| FFR \| lower \|( [a-z ]+ \|){4} (still changing|[0-9,]+ tokens) \|", md)
    page = _Page()
    page.feed((folder / "report.html").read_text())
    assert page.tags.count("table") >= 8 and len(page.images) >= 4  # checks, verdicts, 6 paper tables
    for src in page.images:  # every figure inside the file: it opens offline
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in (folder / "report.html").read_text()
    # steps one by one reuse what is on disk: the report again, from the saved results
    main(["report", "--profile", tiny_profile])
    assert (folder / "report.md").read_text() == md


def test_fewer_than_three_seeds_is_a_clear_error_for_sfr_intervals(tiny_profile, monkeypatch):
    with pytest.raises(ValueError, match="needs at least 3 seeds for SFR"):
        claims._est({"dataset": "faithful", "sfr_interval": None}, "sfr")
