"""``results/<model>/report.md`` and a self-contained ``report.html``: the verdict table, the checks
that make it fair, each paper table beside ours, and the figures (embedded, no network).

Both files come from one list of blocks (:func:`report_blocks`), so they say the same thing;
notebook 09 shows the same blocks.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt

from .. import storage
from ..models import EMBEDDED
from ..metrics.curve import CLAIMS
from .claims import Claim, claims, design_checks, load_result
from .paper import TABLES, paper_values
from .pipeline import result_path

DISCLOSURE = {EMBEDDED: "The embedded model is SmolLM2-135M-Instruct, de-quantised from a 4-bit Q4_1 GGUF: "
                        "instruction-tuned (the paper uses base models and calls instruction data out of "
                        "distribution) and quantised, so its instruction data is nearer in-distribution and "
                        "its weights are perturbed. The paper's smallest model, GPT-2 Small, is the nearest "
                        "reference."}
FIGURES = {"sfr": "SFR per training corpus: every seed pair", "curve": "SFR and FFR against training tokens", "ffr": "FFR against τ per training corpus",
           "fidelity": "Reconstruction faithfulness (each row's first seed)", "probe": "Probe accuracy with "
           "bootstrap intervals over the test texts"}


def verdict_rows(rows: list[Claim], caveats: bool = False) -> tuple[list[str], list[list[str]]]:
    """The verdict table as (header, rows) of strings; ``caveats`` adds what the embedded model changes."""
    header = ["paper", "claim", "ours (difference, 95 % interval)", "paper's numbers", "verdict"]
    body = [[c.source, c.claim, f"{c.comparison}: {c.ours}" if c.ours else c.comparison, c.paper,
             f"**{c.verdict}**"] for c in rows]
    if caveats:
        header.append("what an instruction-tuned, quantised model changes")
        body = [b + [c.caveat] for b, c in zip(body, rows)]
    return header, body


def verdict_figure(rows: list[Claim]):
    """Each measured claim's difference with its interval, coloured by verdict, zero marked."""
    shown = [c for c in rows if c.ours is not None]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(shown) + 1.2))
    colours = {"agrees": "tab:green", "disagrees": "tab:red", "not resolved": "tab:grey"}
    for i, c in enumerate(shown):
        ax.errorbar([c.ours.mean], [i], xerr=[[max(0.0, c.ours.mean - c.ours.low)], [max(0.0, c.ours.high - c.ours.mean)]], fmt="o",
                    color=colours[c.verdict], capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)), [f"{c.source}: {c.comparison}" for c in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("ours: difference with its 95 % interval (green agrees, red disagrees, grey not resolved)")
    fig.tight_layout()
    return fig


def paper_table(table: str) -> tuple[list[str], list[list[str]]]:
    """One paper table in its layout: models as rows, (setting,) dataset as columns."""
    values = paper_values(table)
    cols = list(dict.fromkeys((v.setting, v.dataset, v.metric) for v in values))
    models = list(dict.fromkeys(v.model for v in values))
    cell = {(v.model, v.setting, v.dataset, v.metric): v.value for v in values}
    header = ["model"] + [" ".join(x for x in (s, d, m) if x) for s, d, m in cols]
    return header, [[m] + [f"{cell[(m, *c)]:.4g}" if (m, *c) in cell else "" for c in cols] for m in models]


def ours_table(model: str, table: str) -> tuple[list[str], list[list[str]]] | None:
    """Our numbers for one paper table (None for Table 3, which needs a second model)."""
    if table == "1":
        st = load_result(model, "stats")["faithful"]
        kl = st.intervals.get("kl_model_data")
        return (["model", "tokens", "coverage_all_tokens", "coverage_first_token", "kl (95 % interval)"],
                [[model, f"{st.total_tokens:,}", f"{st.all_token_coverage / 100:.4g}",
                  f"{st.first_token_coverage / 100:.4g}",
                  f"{st.kl_model_data:.4g}" + (f" [{kl['low']:.4g}, {kl['high']:.4g}]" if kl else "")]])
    step, metric = {"2": ("sfr", "sfr"), "4": ("sfr", "sfr"), "C.2": ("ffr", "ffr")}.get(table, (None, None))
    if step:
        rows = load_result(model, step)["rows"]
        return ([f"{model}: training dataset", metric, "95 % interval", "per seed (pair)"],
                [[r["dataset"], f"{r[metric]:.4g}", (f"[{r[metric + '_interval']['low']:.4g}, "
                                                     f"{r[metric + '_interval']['high']:.4g}]")
                  if r.get(f"{metric}_interval") else "—",
                  ", ".join(f"{v:.4g}" for v in r[f"{metric}_pairs" if metric == "sfr" else "ffr_seeds"])]
                 for r in rows])
    if table == "C.1":
        probes = load_result(model, "probe")
        tab = probes.table("reconstruction")
        cols = list(dict.fromkeys(c for row in tab.values() for c in row))
        return ([f"{model}: task"] + cols,
                [[task] + [f"{row[c]:.4g} {_ci(probes.interval(task, c))}" for c in cols] for task, row in tab.items()])
    return None


def _ci(e) -> str:
    return f"[{e.low:.3g}, {e.high:.3g}]"


def report_blocks(model: str, profile: str = "") -> list[tuple]:
    """The report as blocks: ("h", text), ("p", text), ("table", header, rows), ("img", path, caption)."""
    rows = claims(model, profile)
    blocks: list[tuple] = [("h", f"FaithfulSAE: the paper beside {model}" + (f" ({profile} profile)" if profile else ""))]
    if model in DISCLOSURE:
        blocks.append(("p", DISCLOSURE[model]))
    checks = design_checks(model, profile)
    blocks.append(("table", ["design check", "holds"], [[k, "yes" if v else "**no**"] for k, v in checks.items()]))
    blocks += [("h", "Verdicts"), ("p", "Each verdict is read from the interval of our difference: agrees when it "
                                        "excludes zero on the paper's side, disagrees when on the other side, not "
                                        "resolved when it straddles zero."),
               ("table", *verdict_rows(rows, caveats=True))]
    folder = storage.results_dir() / storage.slug(model)
    fig = verdict_figure(rows)
    blocks.append(("img", storage.save_figure(fig, folder / "verdicts.png"), "Our differences and their intervals"))
    plt.close(fig)
    counts = {v: sum(c.verdict == v for c in rows) for v in dict.fromkeys(c.verdict for c in rows)}
    blocks.append(("p", "Tally: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."))
    blocks += [("h", "Is the budget enough?"),
               ("p", "The same SAEs read at 1/8, 1/4 and 1/2 of their training and at its end: the verdict of "
                     "each seed comparison at every budget. A verdict that still changes at the last budget "
                     "belongs to SAEs that have not settled (`python -m faithful curve --profile cpu-long` "
                     "trains five times longer)."),
               ("table", *budget_rows(model, profile))]
    blocks.append(("h", "The paper's tables"))
    for table, caption in TABLES.items():
        blocks += [("p", f"Table {table}: {caption}. The paper, then ours."), ("table", *paper_table(table))]
        ours = ours_table(model, table)
        blocks.append(("table", *ours) if ours else ("p", "Ours: not measured (one model offline)."))
    blocks.append(("h", "Our figures"))
    for step, caption in FIGURES.items():
        png = result_path(model, step).with_suffix(".png")
        if png.is_file():
            blocks.append(("img", png, caption))
    return blocks


def budget_rows(model: str, profile: str = "") -> tuple[list[str], list[list[str]]]:
    """The verdict of each curve comparison (Faithful − other, SFR and FFR) at every budget, and
    the budget from which it stops changing (:meth:`faithful.metrics.curve.TrainingCurve.stable_from`)."""
    curve = load_result(model, "curve", profile)
    budgets = list(dict.fromkeys(d["tokens"] for d in curve.differences))
    header = ["Faithful vs", "metric", "paper: Faithful", *[f"{t:,} tokens" for t in budgets], "stable from"]
    body = []
    for other, metric in dict.fromkeys((d["other"], d["metric"]) for d in curve.differences):
        by_tokens = {d["tokens"]: d["verdict"] for d in curve.differences if (d["other"], d["metric"]) == (other, metric)}
        stable = curve.stable_from(other, metric)
        body.append([other, metric.upper(), CLAIMS[metric], *[by_tokens.get(t, "—") for t in budgets],
                     f"{stable:,} tokens" if stable is not None else "still changing"])
    return header, body


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
