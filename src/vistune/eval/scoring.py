"""Exact-answer scoring for the synthetic benchmark (pure functions; no model).

Matching rule: a prediction is correct when `normalize_answer(prediction) ==
normalize_answer(gold)`. Normalisation lower-cases, turns punctuation into spaces, drops the
articles a/an/the, writes the number words zero..twenty as digits and collapses spaces, so
"Three." == "3" and "The star" == "star".

One extra rule for yes/no questions: when the normalised gold answer is "yes" or "no", only the
first word of the normalised prediction is compared ("Yes, there is a star." counts as "yes").
A model that answers "yes" and then contradicts itself still gets the credit of its first word;
for every other type the whole normalised prediction must match, so "There are 3" is wrong
for gold "3". A question with no prediction counts as wrong. The rule depends only on the gold
answer, never on the question's wording, so the held-out and the in-distribution wording of a bench
(which share ids and answers) are scored alike.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from vistune.data.world import NUMBER_WORDS, QUESTION_TYPES
from vistune.utils.io import atomic_path, atomic_write_json, atomic_write_text

_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]|_")
TYPE_ORDER = QUESTION_TYPES


def normalize_answer(s: str) -> str:
    """Lower-case, punctuation to spaces, drop a/an/the, number words to digits, collapse spaces."""
    s = str(s).strip().lower()
    s = s.rstrip(".")
    words = _PUNCT.sub(" ", s).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def is_correct(prediction: str | None, gold: str) -> bool:
    if prediction is None:
        return False
    p, g = normalize_answer(prediction), normalize_answer(gold)
    if g in ("yes", "no"):
        return p.split(" ", 1)[0] == g
    return p == g


def _ordered_types(types) -> list[str]:
    types = set(types)
    return [t for t in TYPE_ORDER if t in types] + sorted(t for t in types if t not in TYPE_ORDER)


def score(predictions: Mapping[str, str], bench: Sequence[dict]) -> dict:
    """Accuracy in percent, overall and per question type, over every bench question.

    Returns {"overall", "by_type", "n", "n_by_type", "correct", "missing"}.
    """
    right: Counter = Counter()
    total: Counter = Counter()
    missing = 0
    for q in bench:
        pred = predictions.get(q["id"])
        missing += pred is None
        total[q["type"]] += 1
        right[q["type"]] += is_correct(pred, q["answer"])
    n = sum(total.values())
    types = _ordered_types(total)
    return {
        "overall": 100.0 * sum(right.values()) / n if n else 0.0,
        "by_type": {t: 100.0 * right[t] / total[t] for t in types},
        "n": n,
        "n_by_type": {t: total[t] for t in types},
        "correct": sum(right.values()),
        "missing": missing,
    }


def answer_prior(train_bench: Sequence[dict]) -> dict[str, str]:
    """The most frequent training answer per question type (ties: the alphabetically first)."""
    counts: dict[str, Counter] = {}
    for q in train_bench:
        counts.setdefault(q["type"], Counter())[normalize_answer(q["answer"])] += 1
    return {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in counts.items()}


def prior_predictions(prior: Mapping[str, str], bench: Sequence[dict]) -> dict[str, str]:
    """Answer every question with its type's prior answer ("" for a type the prior lacks)."""
    return {q["id"]: prior.get(q["type"], "") for q in bench}


# ----------------------------------------------------------------------------- reports


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_report(report: dict, out_dir: str | os.PathLike) -> None:
    """report.json, report.md (a table by type) and report.png (bars by type)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    types = list(report.get("by_type", {}))
    nbt = report.get("n_by_type", {})
    lines = ["| type | accuracy (%) | n |", "|---|---:|---:|"]
    lines += [f"| {t} | {_fmt(report['by_type'][t])} | {nbt.get(t, '')} |" for t in types]
    lines.append(f"| **overall** | **{_fmt(report.get('overall'))}** | {report.get('n', '')} |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = types + ["overall"]
    vals = [report["by_type"][t] for t in types] + [report.get("overall", 0.0)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names)), 3.6))
    bars = ax.bar(names, vals, color=["#4c72b0"] * len(types) + ["#dd8452"])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"accuracy by question type (n={report.get('n', '?')})")
    ax.tick_params(axis="x", labelrotation=30)
    _save_png(fig, out / "report.png")
    plt.close(fig)


def write_variants_report(variants: Mapping[str, dict], out_dir: str | os.PathLike) -> None:
    """Several reports side by side: report.json {"variants": {...}}, a table with one column per
    variant, and a grouped bar chart."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", {"variants": dict(variants)})
    names = list(variants)
    types = _ordered_types({t for r in variants.values() for t in r.get("by_type", {})})
    lines = ["| type | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in types:
        lines.append(f"| {t} | " + " | ".join(_fmt(variants[v].get("by_type", {}).get(t)) for v in names) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{_fmt(variants[v].get('overall'))}**" for v in names) + " |")
    lines.append("| n | " + " | ".join(str(variants[v].get("n", "")) for v in names) + " |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = types + ["overall"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 0.4 * len(names)), 3.8))
    for i, v in enumerate(names):
        r = variants[v]
        vals = [r.get("by_type", {}).get(t, 0.0) or 0.0 for t in types] + [r.get("overall", 0.0) or 0.0]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=v)
    ax.set_xticks(x, groups, rotation=30)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("accuracy by question type")
    _save_png(fig, out / "report.png")
    plt.close(fig)


def load_report(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
