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
from typing import Mapping, Sequence

from vistune.data.world import COLOURS, NUMBER_WORDS, QUESTION_TYPES, SHAPE_PLURALS, SHAPES
from vistune.eval.report import Chart, Report, Table
from vistune.eval.report import write_report as write_any

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


_SHAPE_WORDS = {w: s for s in SHAPES for w in (s, SHAPE_PLURALS[s])}
_GAP = 3
"""Words allowed between a colour and its shape in a description ("red medium sized circle")."""


def names_every_object(description: str, objects: Sequence[tuple[str, str]]) -> bool:
    """Whether a description of a synthetic-world image names each (colour, shape) of `objects` as the colour
    followed by that shape (singular or plural, at most `_GAP` other words between, none of them a colour or
    a shape): "a red circle and two blue stars" names (red, circle) and (blue, star), "a circle that is red"
    does not. Objects of the same colour and shape are named once for all."""
    words = normalize_answer(description).split()
    named = set()
    for i, w in enumerate(words):
        if w not in COLOURS:
            continue
        for j in range(i + 1, min(len(words), i + 2 + _GAP)):
            if words[j] in _SHAPE_WORDS:
                named.add((w, _SHAPE_WORDS[words[j]]))
                break
            if words[j] in COLOURS:
                break
    return all(tuple(o) in named for o in objects)


def count_is_right(answer: str, n: int) -> bool:
    """Whether the first number in an answer (a digit or a number word) is `n`."""
    first = next((w for w in normalize_answer(answer).split() if w.isdigit()), None)
    return first is not None and int(first) == n


def _ordered_types(types) -> list[str]:
    types = set(types)
    return [t for t in TYPE_ORDER if t in types] + sorted(t for t in types if t not in TYPE_ORDER)


def score(predictions: Mapping[str, str], bench: Sequence[dict]) -> dict:
    """Accuracy in percent, overall and per question type, over every bench question.

    Returns {"overall", "by_type", "n", "n_by_type", "correct", "missing", "chance_by_type"}; chance is
    100 / the number of distinct normalised gold answers of the type (uniform guessing among them).
    """
    right: Counter = Counter()
    total: Counter = Counter()
    golds: dict[str, set] = {}
    missing = 0
    for q in bench:
        golds.setdefault(q["type"], set()).add(normalize_answer(q["answer"]))
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
        "chance_by_type": {t: 100.0 / len(golds[t]) for t in types},
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

VARIANTS = {
    "full": "the trained model; each question asked about its own image",
    "shuffled_images": "the same model; each question asked about a different held-out image "
                       "(what it gets right without seeing the right image)",
    "answer_prior": "no model: each question answered with its type's most frequent training answer",
    "stage1_only": "the stage-1 checkpoint (projector trained, LLM untouched), asked like the full model",
    "full_in_distribution": "the trained model on the same questions (same ids and answers) in the training "
                            "data's wording instead of the held-out wording",
}
"""What each variant of a shapes report means."""
CONTROLS = ("shuffled_images", "answer_prior")
"""Variants the full model must beat on every type."""

_RULE = ("accuracy = exact match after normalisation (lower case, no punctuation or articles, number words as "
         "digits; yes/no questions compare the first word); an unanswered question counts as wrong")
_CHANCE = ("chance = 100 / the number of distinct gold answers the type has in this bench "
           "(uniform guessing among them); overall chance weights the types by their question counts")


def _chance_overall(report: dict) -> float | None:
    chance, nbt = report.get("chance_by_type") or {}, report.get("n_by_type") or {}
    n = sum(nbt.get(t, 0) for t in chance)
    return sum(chance[t] * nbt.get(t, 0) for t in chance) / n if n else None


def single_report(report: dict, variant: str | None, notes: Sequence[str]) -> Report:
    types = list(report.get("by_type", {}))
    chance, nbt = report.get("chance_by_type") or {}, report.get("n_by_type", {})
    rows = [[t, report["by_type"][t], chance.get(t), nbt.get(t, "")] for t in types]
    rows.append(["**overall**", report.get("overall"), _chance_overall(report), report.get("n", "")])
    warnings = [f"{t}: {report['by_type'][t]:.1f} % is not above chance ({chance[t]:.1f} %)"
                for t in types if t in chance and report["by_type"][t] <= chance[t]]
    if report.get("missing"):
        warnings.append(f"{report['missing']} of {report.get('n')} questions have no answer (scored wrong)")
    what = VARIANTS.get(variant or "", variant or "")
    extra = [f"variant `{variant}`: {what}"] if variant else []
    return Report(
        title="Shapes benchmark" + (f": {variant}" if variant else ""),
        data=report,
        tables=[Table(["type", "accuracy (%)", "chance (%)", "n"], rows)],
        notes=extra + [_RULE, _CHANCE, f"failures (questions without an answer): {report.get('missing', 0)}",
                       "a type at or below chance is listed under Attention; run again with --shuffle-images "
                       "for the image control"] + list(notes),
        warnings=warnings,
        chart=Chart(types + ["overall"], {"accuracy": [report["by_type"][t] for t in types] + [report.get("overall")]},
                    title=f"accuracy by question type (n={report.get('n', '?')})", ylabel="accuracy (%)",
                    chance=[chance.get(t) for t in types] + [_chance_overall(report)]),
    )


def write_report(report: dict, out_dir: str | os.PathLike, variant: str | None = None,
                 notes: Sequence[str] = ()) -> None:
    """report.json (the `score` dict unchanged), report.md (table by type with chance) and report.png."""
    write_any(single_report(report, variant, notes), out_dir)


def beaten_controls(variants: Mapping[str, dict], full: str = "full") -> dict[str, list[str]]:
    """Type -> the controls the full model does not beat (score <= the control's) on that type."""
    if full not in variants:
        return {}
    out: dict[str, list[str]] = {}
    for t, v in variants[full].get("by_type", {}).items():
        lost = [c for c in CONTROLS if c in variants and variants[c].get("by_type", {}).get(t) is not None
                and v <= variants[c]["by_type"][t]]
        if lost:
            out[t] = lost
    return out


def write_variants_report(variants: Mapping[str, dict], out_dir: str | os.PathLike, notes: Sequence[str] = ()) -> None:
    """Several variants side by side: report.json {"variants", "not_above_control"}, a table with one
    column per variant plus chance, and a grouped bar chart. A type where `full` does not beat a control
    is marked with * in the table and listed under Attention."""
    write_any(variants_report(variants, notes), out_dir)


def variants_report(variants: Mapping[str, dict], notes: Sequence[str] = ()) -> Report:
    """The `Report` that `write_variants_report` writes (a caller may add data, warnings or notes first)."""
    names = list(variants)
    types = _ordered_types({t for r in variants.values() for t in r.get("by_type", {})})
    chance: dict[str, float] = {}
    for r in variants.values():
        chance.update(r.get("chance_by_type") or {})
    lost = beaten_controls(variants)
    rows = []
    for t in types:
        label = f"{t} *" if t in lost else t
        rows.append([label] + [variants[v].get("by_type", {}).get(t) for v in names] + [chance.get(t)])
    first = next(iter(variants.values()), {})
    rows.append(["**overall**"] + [variants[v].get("overall") for v in names] + [_chance_overall(first)])
    rows.append(["n"] + [variants[v].get("n", "") for v in names] + [""])
    rows.append(["failures"] + [variants[v].get("missing", 0) for v in names] + [""])
    warnings = [f"{t}: full ({variants['full']['by_type'][t]:.1f} %) does not beat "
                + ", ".join(f"{c} ({variants[c]['by_type'][t]:.1f} %)" for c in cs) for t, cs in lost.items()]
    return Report(
        title="Shapes benchmark: variants",
        data={"variants": dict(variants), "not_above_control": lost},
        tables=[Table(["type"] + names + ["chance"], rows)],
        notes=[f"`{v}`: {VARIANTS.get(v, 'as named by the caller')}" for v in names]
        + [_RULE, _CHANCE, "* marks a type where `full` is not above a control (shuffled_images, answer_prior)",
           "failures = questions without an answer (unreadable image), scored wrong"] + list(notes),
        warnings=warnings,
        chart=Chart(types + ["overall"],
                    {v: [variants[v].get("by_type", {}).get(t) for t in types] + [variants[v].get("overall")]
                     for v in names},
                    title="accuracy by question type", ylabel="accuracy (%)",
                    chance=[chance.get(t) for t in types] + [_chance_overall(first)]),
    )


def load_report(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
