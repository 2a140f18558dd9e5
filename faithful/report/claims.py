"""The paper's claims, one row each, read against our results with a verdict computed from intervals.

:func:`claims` loads what the pipeline saved for one model (:mod:`faithful.report.pipeline`) and
returns one :class:`Claim` per (claim, comparison): our difference with its interval, the paper's
numbers that bear on it, and the verdict (:func:`faithful.intervals.verdict`): ``agrees``,
``disagrees``, ``not resolved`` (the interval straddles zero) or ``not measured`` (the results
hold no such comparison, e.g. Table 3 with one model).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from .. import storage
from ..data.corpora import corpus_kind
from ..data.stats import DatasetStats
from ..intervals import Estimate, difference, verdict
from ..metrics.curve import TrainingCurve
from ..metrics.fidelity import FidelityMatrix
from ..metrics.probing import ProbeTable
from ..sae.runs import list_runs
from .paper import paper_values
from .pipeline import result_path

STEPS = {"stats": "notebook 02", "sfr": "notebook 04", "curve": "notebook 04", "ffr": "notebook 05",
         "fidelity": "notebook 06", "probe": "notebook 07"}
CAVEATS = {
    "Table 1": "The Faithful text is sampled from the same quantised, chat-tuned model it is compared with, so "
               "the KL measures sampling, not quantisation; a chat model's first tokens are narrower than a base "
               "model's.",
    "Table 2": "For an instruction-tuned model Alpaca is close to in-distribution, so the paper's argument "
               "(out-of-distribution text lowers SFR) predicts a smaller Faithful advantage than for base Pythia.",
    "Table 3": "Needs a second model's samples; with hub access, train_saes(model_a, faithful_dataset_for(model_b, "
               "profile)) and sfr_table keyed by (target, source) measure it.",
    "Table 4": "Web text is out of distribution for a chat model as for a base model, so the paper's direction "
               "should carry over if SFR separates corpora at all at this scale.",
    "App. B": "CE is the quantised model's own loss with and without the SAE, so the difference is consistent "
              "within this model; Alpaca is one of its near-native columns.",
    "Table C.1": "Probes read the quantised chat model's activations; the tasks are short single sentences, far "
                 "from both the chat format and the Faithful text.",
    "Table C.2": "Random tokens are out of distribution for any model; quantisation noise may add to how often "
                 "latents fire on them, for every corpus alike.",
}
"""One sentence per source on what the embedded model (SmolLM2-135M-Instruct, Q4_1) changes."""
PAPER_TASKS = {"sst2": "SST-2", "cola": "CoLA", "yelp_polarity": "Yelp"}
"""Our probing tasks that Table C.1 reports (it has no AG News column)."""


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, read against one comparison of ours."""

    source: str
    """Where the paper makes it: "Table 2", "App. B" …"""
    claim: str
    """What the paper says, in a line."""
    comparison: str
    """Our quantity, e.g. "SFR: faithful − alpaca"."""
    ours: Estimate | None
    """Our difference (or value) in the claimed form, with its interval; None when not measured."""
    paper: str
    """The paper's numbers that bear on it."""
    verdict: str
    """agrees, disagrees, not resolved or not measured."""

    @property
    def caveat(self) -> str:
        """What the embedded model's being instruction-tuned and quantised means for this claim."""
        return CAVEATS[self.source]


def claims(model: str, profile: str = "") -> list[Claim]:
    """Every claim row for ``model``'s saved results (``profile``: named in errors' commands)."""
    have = {step: load_result(model, step, profile) for step in STEPS}
    corpora = [r["dataset"] for r in have["sfr"]["rows"]]
    web = [c for c in corpora if corpus_kind(c) == "web"]
    instruction = [c for c in corpora if corpus_kind(c) == "instruction"]
    rows = _table1(have["stats"])
    sfr = {r["dataset"]: r for r in have["sfr"]["rows"]}
    for other in instruction:
        rows.append(_compare("Table 2", "Faithful SFR above instruction data", f"SFR: faithful − {other}",
                             _est(sfr["faithful"], "sfr"), _est(sfr[other], "sfr"), "higher",
                             _paper_pairs("2", "sfr", "Faithful", ("Alpaca-Instruction", "Open-Instruct", "FLAN"))))
    rows.append(Claim("Table 3", "SFR highest when the text's source model is the SAE's target model",
                      "SFR: own samples − another model's samples", None,
                      _paper_pairs("3", "sfr", None, None), "not measured"))
    for other in web:
        rows.append(_compare("Table 4", "Faithful SFR below web data", f"SFR: faithful − {other}",
                             _est(sfr["faithful"], "sfr"), _est(sfr[other], "sfr"), "lower",
                             _paper_pairs("4", "sfr", "Faithful", ("The Pile", "FineWeb"), want="lower")))
    matrix: FidelityMatrix = have["fidelity"]
    for other in web:
        for summary, claim in (("mean", "Faithful's CE difference lower across evaluation sets"),
                               ("std", "Faithful's CE difference more even across evaluation sets")):
            rows.append(_compare("App. B", claim, f"CE difference ({summary} over sets): faithful − {other}",
                                 matrix.row_estimate("faithful", "ce_diff", summary),
                                 matrix.row_estimate(other, "ce_diff", summary), "lower",
                                 "figures only (no table); FineWeb SAEs markedly worse"))
    probes: ProbeTable = have["probe"]
    for task, label in PAPER_TASKS.items():
        for other in web:
            diff = probes.difference(task, "faithful", other)
            rows.append(Claim("Table C.1", f"Faithful SAE probes at least as well ({label})",
                              f"{task} reconstruction-probe accuracy: faithful − {other}", diff,
                              _paper_pairs("C.1", "accuracy", "Faithful", ("FineWeb", "The Pile"), setting=label),
                              verdict(diff, "higher")))
    ffr = {r["dataset"]: r for r in have["ffr"]["rows"]}
    for other in web:
        rows.append(_compare("Table C.2", "Faithful FFR below web data", f"FFR: faithful − {other}",
                             _est(ffr["faithful"], "ffr"), _est(ffr[other], "ffr"), "lower",
                             _paper_pairs("C.2", "ffr", "Faithful", ("The Pile",), want="lower")))
    return rows


def design_checks(model: str, profile: str = "") -> dict[str, bool]:
    """What makes the comparisons fair, read from the runs of the compared corpora and the results on disk."""
    corpora = {r["dataset"] for r in load_result(model, "sfr", "")["rows"]}
    runs = [r for r in list_runs(model, profile=profile or None) if r["settings"]["dataset"] in corpora]
    matrix = load_result(model, "fidelity", "")
    return {"every SAE saw each training token at most once": bool(runs) and all(r["epochs"] == 1 for r in runs),
            "SAEs trained on their corpus's training split only":
                bool(runs) and all(r["settings"].get("documents", "").startswith("train:") for r in runs),
            "evaluation read the held-out split only": matrix.settings.get("split", "").startswith("eval:"),
            "at least 3 seeds per corpus":
                bool(runs) and min(Counter(r["settings"]["dataset"] for r in runs).values()) >= 3}


def load_result(model: str, step: str, profile: str = ""):
    """The saved result of ``step`` (:data:`STEPS`) for ``model``; a clear error names the command that makes it."""
    path = result_path(model, step)
    command = f"python -m faithful {step}" + (f" --profile {profile}" if profile else "")
    missing = FileNotFoundError(f"no {step} results for {model} at {path}: run `{command}` (or {STEPS[step]}) "
                                "first, or `python -m faithful all` for every step")
    if step == "stats":
        if not path.is_dir() or not any(path.glob("*.json")):
            raise missing
        return {p.stem: DatasetStats.load(p) for p in sorted(path.glob("*.json"))}
    if not path.is_file():
        raise missing
    d = storage.read_json(path)
    return {"fidelity": FidelityMatrix.from_dict, "probe": ProbeTable.from_dict,
            "curve": lambda d: TrainingCurve(**d)}.get(step, dict)(d)


def _est(row: dict, metric: str) -> Estimate:
    ci = row.get(f"{metric}_interval")
    if ci is None:
        raise ValueError(f"{row['dataset']} has no {metric.upper()} interval: it needs at least 3 seeds for SFR "
                         "(2 for FFR); set the profile's seeds, e.g. seeds=(42, 49, 7), and train again")
    return Estimate(**ci)


def _compare(source, claim, comparison, a: Estimate, b: Estimate, claimed: str, paper: str) -> Claim:
    diff = difference(a, b)
    return Claim(source, claim, comparison, diff, paper, verdict(diff, claimed))


def _table1(stats: dict[str, DatasetStats]) -> list[Claim]:
    faithful = stats.get("faithful")
    if faithful is None or not faithful.intervals:
        return [Claim("Table 1", "first-token KL(model ‖ data) below 2", "KL − 2", None, "", "not measured")]
    kl = Estimate(**faithful.intervals["kl_model_data"])
    shifted = replace(kl, mean=kl.mean - 2, low=kl.low - 2, high=kl.high - 2)
    gap = Estimate(**faithful.intervals["coverage_gap"])
    kls = paper_values("1", metric="kl")
    firsts = {v.model: v.value for v in paper_values("1", metric="coverage_first_token")}
    alls = {v.model: v.value for v in paper_values("1", metric="coverage_all_tokens")}
    return [Claim("Table 1", "first-token KL(model ‖ data) below 2", "KL(model ‖ faithful first tokens) − 2",
                  shifted, f"below 2 in {sum(v.value < 2 for v in kls)} of {len(kls)} models "
                  f"(GPT-2 Small {kls[0].value})", verdict(shifted, "lower")),
            Claim("Table 1", "first-token coverage far below all-token coverage",
                  "coverage (% of vocabulary): first token − all tokens", gap,
                  f"below in {sum(firsts[m] < alls[m] for m in firsts)} of {len(firsts)} models "
                  f"(GPT-2 Small {100 * firsts['GPT-2 Small']:.2f} % vs {100 * alls['GPT-2 Small']:.2f} %)",
                  verdict(gap, "lower"))]


def _paper_pairs(table: str, metric: str, first: str | None, others, want: str = "higher",
                 setting: str | None = None) -> str:
    """How often the paper's ``first`` dataset beats (``want``) each of ``others``, per model."""
    values = paper_values(table, metric=metric, **({"setting": setting} if setting else {}))
    if first is None:  # Table 3: own source vs the other, per target model
        own = {v.model: v.value for v in values if v.setting == f"source={v.model}"}
        cross = {v.model: v.value for v in values if v.setting != f"source={v.model}"}
        return "; ".join(f"{m}: own {own[m]} vs other {cross[m]}" for m in own)
    by = {(v.model, v.dataset): v.value for v in values}
    models = list(dict.fromkeys(v.model for v in values))
    parts = []
    for other in others:
        pairs = [(by[(m, first)], by[(m, other)]) for m in models if (m, first) in by and (m, other) in by]
        if pairs:
            wins = sum((a > b) if want == "higher" else (a < b) for a, b in pairs)
            parts.append(f"{want} than {other} in {wins} of {len(pairs)} models")
    return "; ".join(parts)
