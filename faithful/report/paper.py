"""The numbers the FaithfulSAE paper reports, as data to set ours beside.

Every value of Tables 1, 2, 3, 4, C.1 and C.2 of Cho et al. (2025), "FaithfulSAE: Towards
Capturing Faithful Features with Sparse Autoencoders without External Dataset Dependencies",
arXiv:2506.17673 (v1), read from the PDF-extracted text, one :class:`PaperValue` per cell:

* Table 1 — the Faithful datasets: all-token and first-token vocabulary coverage, and the KL
  divergence (model ‖ dataset) of the first token, for 8 models (Pythia 6.9B only here);
* Table 2 — SFR of Pythia 1.4B / 2.8B SAEs trained on the Faithful and instruction datasets;
* Table 3 — SFR across Pythia sizes: target model (``model``) × source of the synthetic data;
* Table 4 — SFR of SAEs trained on The Pile, Faithful and FineWeb, 5 models;
* Table C.1 — SAE probing: accuracy of logistic-regression probes on the SAE-reconstructed
  activations (mean-pooled, averaged over seed SAEs), 6 models × 3 tasks × 3 training datasets;
* Table C.2 — Fake Feature Ratio, 7 models, SAEs trained on Faithful and The Pile.

Names are made uniform across tables: models as §4.2 names them ("GPT-2 Small", "LLaMA 3.2 1B",
"LLaMA 3.2 3B", "LLaMA 3.1 8B", "Gemma 2B", "Pythia 1.4B" …) where a table writes "GPT2",
"GPT2-small", "LLaMA 1B", "LLaMA 3.2-1B" or "Pythia 2.8b"; training datasets "Faithful",
"The Pile" (tables: "Pile"), "FineWeb" (tables: "Fineweb"), "Alpaca-Instruction",
"Open-Instruct", "FLAN". The layers are Table 5's (3/4 depth but for Gemma 2 2B).

Readings of the mangled extraction:

* Table 1 has six header columns (Model, Total Tokens, Vocab Size, All Token Coverage (%), First
  Token Coverage (%), KL) but three numbers a row. They are the last three: >90 % in the first
  (§5.4: ">90% Unique Tokens Used in All Positions"), a narrow first-token coverage, and KL below
  2 but for Gemma 2B (2.2392). Total Tokens and Vocab Size are lost, so not recorded here.
* Table 2 has lost its caption; §5.1 makes it SFR, and its Faithful cells equal Table 3's
  same-source cells. §5.1 speaks of "layer 16" and "layer 8", which matches neither the table
  (columns are models) nor Table 5 (layers 18 and 24); no layer is recorded.
* Table 4: header order Pile | Faithful | FineWeb. §5.3 says Faithful is lower "for all models",
  but in the GPT-2 row Faithful (0.5258) is above FineWeb (0.5209); kept as printed.
* Table C.1: the two header rows are misaligned; the nine numbers a row are read as
  SST-2, CoLA, Yelp × (Faithful, FineWeb, Pile). This reading reproduces §5.6 exactly: Faithful
  best in 12 of 18 cases, and on CoLA for every model. AG News (§3.6, §4.4) has no column.
* Table C.2: only Faithful and Pile rows survive (the text ends there; a FineWeb row, if any,
  is lost). With them, Faithful is strictly lower in 5 of 7 models, the Pythia pair excepted,
  as the abstract and §5.7 say.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["PaperValue", "PAPER", "TABLES", "paper_values"]


@dataclass(frozen=True)
class PaperValue:
    """One number the paper reports."""

    table: str
    """The paper's table: "1", "2", "3", "4", "C.1" or "C.2"."""
    model: str
    """The language model, as §4.2 names it (Table 3: the target model)."""
    dataset: str
    """The training/source dataset ("Faithful", "The Pile", …; Table 3: "Faithful (<source>)")."""
    metric: str
    """kl, coverage_all_tokens, coverage_first_token, sfr, ffr or accuracy."""
    value: float
    """The value; a percentage in the paper (Table 1 coverage) is stored as a fraction in [0, 1]."""
    setting: str = ""
    """What else tells rows apart: the probing task (C.1), "source=<model>" (Table 3)."""


TABLES: dict[str, str] = {
    "1": "Faithful dataset statistics: token coverage and first-token KL(model || dataset)",
    "2": "SFR on the Faithful vs instruction datasets (Pythia)",
    "3": "SFR on cross-model synthetic datasets (Pythia)",
    "4": "SFR on the Faithful vs web datasets",
    "C.1": "SAE probing accuracy (reconstructed activations)",
    "C.2": "Fake Feature Ratio",
}

# ---- the tables, cell for cell as printed (model names normalised) ----

# Table 1: model, All Token Coverage (%), First Token Coverage (%), KL (Model || Dataset)
_T1 = (
    ("GPT-2 Small", 99.80, 21.49, 0.2631),
    ("Pythia 1.4B", 99.31, 5.43, 1.0498),
    ("Pythia 2.8B", 99.04, 3.14, 1.1198),
    ("Pythia 6.9B", 99.41, 13.38, 0.2893),
    ("Gemma 2B", 93.44, 0.40, 2.2392),
    ("LLaMA 3.2 1B", 95.78, 8.27, 0.1521),
    ("LLaMA 3.2 3B", 96.09, 9.18, 0.1909),
    ("LLaMA 3.1 8B", 98.04, 10.31, 0.1054),
)

# Table 2: dataset, SFR for Pythia 1.4B, SFR for Pythia 2.8B
_T2 = (
    ("Faithful", 0.7145, 0.2911),
    ("Alpaca-Instruction", 0.7138, 0.2231),
    ("Open-Instruct", 0.7134, 0.2210),
    ("FLAN", 0.6113, 0.1283),
)

# Table 3: target model, source model (of the synthetic dataset), SFR
_T3 = (
    ("Pythia 2.8B", "Pythia 2.8B", 0.2911),
    ("Pythia 2.8B", "Pythia 1.4B", 0.2288),
    ("Pythia 1.4B", "Pythia 1.4B", 0.7145),
    ("Pythia 1.4B", "Pythia 2.8B", 0.6887),
)

# Table 4: model, SFR with The Pile, Faithful, FineWeb
_T4_DATASETS = ("The Pile", "Faithful", "FineWeb")
_T4 = (
    ("GPT-2 Small", 0.5405, 0.5258, 0.5209),
    ("LLaMA 3.2 1B", 0.5778, 0.5517, 0.5789),
    ("Gemma 2B", 0.3889, 0.3881, 0.4229),
    ("LLaMA 3.2 3B", 0.2222, 0.1835, 0.2248),
    ("LLaMA 3.1 8B", 0.1066, 0.0914, 0.0936),
)

# Table C.1: model, accuracy for (SST-2, CoLA, Yelp) × (Faithful, FineWeb, Pile)
_C1_TASKS = ("SST-2", "CoLA", "Yelp")
_C1_DATASETS = ("Faithful", "FineWeb", "The Pile")
_C1 = (
    ("GPT-2 Small", 0.7746, 0.7723, 0.7500, 0.7076, 0.6989, 0.6912, 0.6532, 0.6502, 0.6444),
    ("Pythia 1.4B", 0.8451, 0.8354, 0.8314, 0.7281, 0.7253, 0.7262, 0.9341, 0.9399, 0.9289),
    ("Gemma 2B", 0.7729, 0.8394, 0.8085, 0.7478, 0.7291, 0.7430, 0.9536, 0.9495, 0.9440),
    ("Pythia 2.8B", 0.8050, 0.8256, 0.8365, 0.6985, 0.6371, 0.6783, 0.9392, 0.9428, 0.9442),
    ("LLaMA 3.2 1B", 0.8342, 0.8491, 0.8428, 0.7469, 0.7411, 0.7411, 0.9431, 0.9437, 0.9429),
    ("LLaMA 3.2 3B", 0.8532, 0.8423, 0.8497, 0.6889, 0.6826, 0.6888, 0.9547, 0.9544, 0.9525),
)

# Table C.2: dataset, FFR for each model in _C2_MODELS
_C2_MODELS = ("GPT-2 Small", "Pythia 1.4B", "Gemma 2B", "Pythia 2.8B",
              "LLaMA 3.2 1B", "LLaMA 3.2 3B", "LLaMA 3.1 8B")
_C2 = (
    ("Faithful", 0.1139, 0.3871, 0.5425, 0.4655, 0.0314, 0.1899, 0.4150),
    ("The Pile", 0.1180, 0.3871, 0.5669, 0.4460, 0.0446, 0.2930, 0.5341),
)


def _fraction(percent: float) -> float:
    """A printed percentage as the fraction it denotes (99.80 → 0.998, exactly as written)."""
    return round(percent / 100, 6)


def _build() -> tuple[PaperValue, ...]:
    out: list[PaperValue] = []
    for model, all_pct, first_pct, kl in _T1:
        out += [PaperValue("1", model, "Faithful", "coverage_all_tokens", _fraction(all_pct)),
                PaperValue("1", model, "Faithful", "coverage_first_token", _fraction(first_pct)),
                PaperValue("1", model, "Faithful", "kl", kl)]
    for dataset, sfr_14, sfr_28 in _T2:
        out += [PaperValue("2", "Pythia 1.4B", dataset, "sfr", sfr_14),
                PaperValue("2", "Pythia 2.8B", dataset, "sfr", sfr_28)]
    for target, source, sfr in _T3:
        out.append(PaperValue("3", target, f"Faithful ({source})", "sfr", sfr, f"source={source}"))
    for model, *cells in _T4:
        out += [PaperValue("4", model, d, "sfr", v) for d, v in zip(_T4_DATASETS, cells)]
    for model, *cells in _C1:
        keys = [(task, d) for task in _C1_TASKS for d in _C1_DATASETS]
        out += [PaperValue("C.1", model, d, "accuracy", v, task) for (task, d), v in zip(keys, cells)]
    for dataset, *cells in _C2:
        out += [PaperValue("C.2", m, dataset, "ffr", v) for m, v in zip(_C2_MODELS, cells)]
    return tuple(out)


PAPER: tuple[PaperValue, ...] = _build()
"""Every value of Tables 1, 2, 3, 4, C.1 and C.2, table by table, row by row as printed."""

_FIELDS = tuple(f.name for f in fields(PaperValue))


def paper_values(table: str | None = None, **where) -> list[PaperValue]:
    """The paper's values in ``table`` (all tables if None) whose fields equal ``where``.

    ``paper_values("2", dataset="Faithful")``; ``paper_values(metric="ffr", model="Gemma 2B")``.
    An unknown table or field name raises ValueError; no match gives an empty list.
    """
    if table is not None and str(table) not in TABLES:
        raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    unknown = sorted(set(where) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(_FIELDS)}")
    if table is not None:
        where = {**where, "table": str(table)}
    return [v for v in PAPER if all(getattr(v, k) == want for k, want in where.items())]
