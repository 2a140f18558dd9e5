"""``results/<model>/report.md`` and a self-contained ``report.html``: the verdict table, the checks
that make it fair, each paper table beside ours, and the figures (embedded, no network).

Both files come from one list of blocks (:func:`report_blocks`), so they say the same thing;
notebook 09 shows the same blocks.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from .. import storage
from ..models import EMBEDDED
from .claims import Claim, claims, design_checks
from .paper import TABLES, paper_values
from .pipeline import result_path

DISCLOSURE = {EMBEDDED: "The embedded model is SmolLM2-135M-Instruct, de-quantised from a 4-bit Q4_1 GGUF: "
                        "instruction-tuned (the paper uses base models and calls instruction data out of "
                        "distribution) and quantised, so its instruction data is nearer in-distribution and "
                        "its weights are perturbed. The paper's smallest model, GPT-2 Small, is the nearest "
                        "reference."}
FIGURES = {"sfr": "SFR per training corpus: every seed pair", "ffr": "FFR against τ per training corpus",
           "fidelity": "Reconstruction faithfulness (each row's first seed)", "probe": "Probe accuracy with "
           "bootstrap intervals over the test texts"}


def verdict_rows(rows: list[Claim]) -> tuple[list[str], list[list[str]]]:
    """The verdict table as (header, rows) of strings."""
    header = ["paper", "claim", "ours (difference, 95 % interval)", "paper's numbers", "verdict"]
    body = [[c.source, c.claim, f"{c.comparison}: {c.ours}" if c.ours else c.comparison, c.paper,
             f"**{c.verdict}**"] for c in rows]
    return header, body


def paper_table(table: str) -> tuple[list[str], list[list[str]]]:
    """One paper table in its layout: models as rows, (setting,) dataset as columns."""
    values = paper_values(table)
    cols = list(dict.fromkeys((v.setting, v.dataset, v.metric) for v in values))
    models = list(dict.fromkeys(v.model for v in values))
    cell = {(v.model, v.setting, v.dataset, v.metric): v.value for v in values}
    header = ["model"] + [" ".join(x for x in (s, d, m) if x) for s, d, m in cols]
    return header, [[m] + [f"{cell[(m, *c)]:.4g}" if (m, *c) in cell else "" for c in cols] for m in models]


def report_blocks(model: str, profile: str = "") -> list[tuple]:
    """The report as blocks: ("h", text), ("p", text), ("table", header, rows), ("img", path, caption)."""
    rows = claims(model, profile)
    blocks: list[tuple] = [("h", f"FaithfulSAE: the paper beside {model}" + (f" ({profile} profile)" if profile else ""))]
    if model in DISCLOSURE:
        blocks.append(("p", DISCLOSURE[model]))
    checks = design_checks(model)
    blocks.append(("table", ["design check", "holds"], [[k, "yes" if v else "**no**"] for k, v in checks.items()]))
    blocks += [("h", "Verdicts"), ("p", "Each verdict is read from the interval of our difference: agrees when it "
                                        "excludes zero on the paper's side, disagrees when on the other side, not "
                                        "resolved when it straddles zero."),
               ("table", *verdict_rows(rows))]
    counts = {v: sum(c.verdict == v for c in rows) for v in dict.fromkeys(c.verdict for c in rows)}
    blocks.append(("p", "Tally: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."))
    blocks.append(("h", "The paper's tables"))
    for table, caption in TABLES.items():
        blocks += [("p", f"Table {table}: {caption}."), ("table", *paper_table(table))]
    blocks.append(("h", "Our figures"))
    for step, caption in FIGURES.items():
        png = result_path(model, step).with_suffix(".png")
        if png.is_file():
            blocks.append(("img", png, caption))
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append(("# " if not out else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "table":
            header, rows = rest
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                                 ["| " + " | ".join(r) + " |" for r in rows]))
        else:
            out.append(f"![{rest[1]}]({rest[0].as_posix()})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple]) -> str:
    def text(s: str) -> str:  # **bold** is the only markup the blocks use
        parts = html.escape(s).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>FaithfulSAE report</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
           "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 6px;font-size:13px}img{max-width:100%}"
           "</style></head><body>"]
    for i, (kind, *rest) in enumerate(blocks):
        if kind == "h":
            out.append(f"<h{1 if i == 0 else 2}>{text(rest[0])}</h{1 if i == 0 else 2}>")
        elif kind == "p":
            out.append(f"<p>{text(rest[0])}</p>")
        elif kind == "table":
            header, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{text(h)}</th>" for h in header) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in r) + "</tr>" for r in rows) +
                       "</table>")
        else:
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(rest[1])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{text(rest[1])}</figcaption></figure>")
    return "\n".join(out + ["</body></html>"])


def write_report(model: str, profile: str = "") -> tuple[Path, Path]:
    """Write ``results/<model>/report.md`` (figures linked beside it) and ``report.html`` (figures
    inside it); return both paths."""
    blocks = report_blocks(model, profile)
    folder = storage.results_dir() / storage.slug(model)
    linked = [("img", Path(b[1]).resolve().relative_to(folder.resolve()), b[2]) if b[0] == "img" else b
              for b in blocks]
    md = storage.write_text(folder / "report.md", to_markdown(linked))
    return md, storage.write_text(folder / "report.html", to_html(blocks))
