"""Exact-answer scoring: normalisation, arithmetic, prior baseline, report files."""

from __future__ import annotations

import json

import pytest

from vistune.eval.scoring import (
    answer_prior,
    is_correct,
    normalize_answer,
    prior_predictions,
    score,
    write_report,
    write_variants_report,
)


@pytest.mark.parametrize("raw, norm", [
    ("Red", "red"),
    ("red.", "red"),
    ("  The   star ", "star"),
    ("a circle", "circle"),
    ("An orange", "orange"),
    ("Three", "3"),
    ("three.", "3"),
    ("twenty", "20"),
    ("zero", "0"),
    ("12", "12"),
    ("Left!", "left"),
    ("yes, it is", "yes it is"),
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_yes_no_takes_first_word_only_for_yes_no_gold():
    assert is_correct("Yes, there is a star.", "yes")
    assert is_correct("No.", "no")
    assert not is_correct("Yes", "no")
    assert not is_correct("Noah", "no")
    assert not is_correct("red star", "red")  # other types: whole answer must match
    assert not is_correct("There are 3", "3")
    assert is_correct("3.", "three")
    assert not is_correct(None, "yes")


BENCH = [
    {"id": "a", "type": "colour", "answer": "red"},
    {"id": "b", "type": "colour", "answer": "blue"},
    {"id": "c", "type": "count", "answer": "2"},
    {"id": "d", "type": "existence", "answer": "yes"},
    {"id": "e", "type": "existence", "answer": "no"},
    {"id": "f", "type": "existence", "answer": "no"},
]


def test_score_arithmetic():
    preds = {"a": "Red.", "b": "green", "c": "two", "d": "Yes, it does", "e": "yes"}  # f missing
    r = score(preds, BENCH)
    assert r["n"] == 6 and r["correct"] == 3 and r["missing"] == 1
    assert r["overall"] == pytest.approx(50.0)
    assert r["by_type"] == pytest.approx({"colour": 50.0, "count": 100.0, "existence": 100 / 3})
    assert list(r["by_type"]) == ["colour", "count", "existence"]
    assert r["n_by_type"] == {"colour": 2, "count": 1, "existence": 3}
    assert score({}, [])["overall"] == 0.0


def test_answer_prior_and_prior_predictions():
    prior = answer_prior(BENCH)
    assert prior == {"colour": "blue", "count": "2", "existence": "no"}  # tie blue/red -> alphabetical
    preds = prior_predictions(prior, BENCH + [{"id": "z", "type": "shape", "answer": "star"}])
    assert preds["f"] == "no" and preds["z"] == ""
    r = score(preds, BENCH)
    assert r["by_type"]["existence"] == pytest.approx(200 / 3) and r["by_type"]["colour"] == 50.0


def test_write_report(tmp_path):
    r = score({"a": "red", "c": "2"}, BENCH)
    write_report(r, tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == r
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| colour | 50.0 | 2 |" in md and "**33.3**" in md
    png = (tmp_path / "rep" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "rep").glob(".*tmp"))


def test_write_variants_report(tmp_path):
    full = score({q["id"]: q["answer"] for q in BENCH}, BENCH)
    prior = score(prior_predictions(answer_prior(BENCH), BENCH), BENCH)
    write_variants_report({"model": full, "prior": prior}, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["variants"]) == {"model", "prior"} and data["variants"]["model"]["overall"] == 100.0
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[0] == "| type | model | prior |"
    assert "| count | 100.0 | 100.0 |" in md
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_both_wordings_of_a_bench_score_alike(tmp_path):
    from vistune.data.synth import render_world

    render_world(tmp_path, 12, seed=5, progress=False)
    heldout = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    teacher = [json.loads(line) for line in (tmp_path / "bench_in_distribution.jsonl").read_text().splitlines()]
    # a long-form answer to either wording: "Yes, ...", "Three.", "The left."
    spoken = {"yes": "Yes, it is there.", "no": "No.", "3": "Three.", "left": "The left."}
    preds = {q["id"]: spoken.get(q["answer"], q["answer"]) for q in heldout[::2]}
    a, b = score(preds, heldout), score(preds, teacher)
    assert a == b and 0 < a["correct"] == len(preds) < a["n"]
