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
    # chance: 100 / distinct gold answers of the type (colour: red, blue; count: 2; existence: yes, no)
    assert r["chance_by_type"] == pytest.approx({"colour": 50.0, "count": 100.0, "existence": 50.0})
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
    assert "| colour | 50.0 | 50.0 | 2 |" in md and "| **overall** | 33.3 |" in md
    # overall chance = (50*2 + 100*1 + 50*3) / 6 = 58.3; colour 1/2 (= chance), count 1/1 (= chance, one
    # possible answer) and existence 0/3 are all not above chance
    assert "| **overall** | 33.3 | 58.3 | 6 |" in md
    attention = md.split("| type")[0]
    assert "colour: 50.0 % is not above chance (50.0 %)" in attention
    assert "count: 100.0 % is not above chance (100.0 %)" in attention and "existence: 0.0 %" in attention
    assert "failures (questions without an answer): 4" in md
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
    assert "| type | model | prior | chance |" in md
    assert "| count | 100.0 | 100.0 | 100.0 |" in md
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_variants_report_marks_types_where_full_does_not_beat_a_control(tmp_path):
    full = score({"a": "red", "b": "blue", "c": "3", "d": "yes", "e": "no", "f": "no"}, BENCH)
    shuffled = score({"a": "red", "b": "red", "c": "3", "d": "yes", "e": "yes", "f": "yes"}, BENCH)
    # full: colour 100, count 0, existence 100; shuffled: colour 50, count 0, existence 33.3
    write_variants_report({"full": full, "shuffled_images": shuffled}, tmp_path, notes=["stopped at step 78"])
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["not_above_control"] == {"count": ["shuffled_images"]}
    md = (tmp_path / "report.md").read_text()
    assert "| count * | 0.0 | 0.0 | 100.0 |" in md and "| colour | 100.0 | 50.0 | 50.0 |" in md
    assert "count: full (0.0 %) does not beat shuffled_images (0.0 %)" in md
    assert "`shuffled_images`: the same model" in md and "stopped at step 78" in md


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


def test_a_description_names_every_object_only_as_colour_then_shape():
    from vistune.eval.scoring import names_every_object

    objs = [("red", "circle"), ("blue", "star")]
    assert names_every_object("A red circle and a blue star.", objs)
    assert names_every_object("The image shows two large blue stars and one small red circle", objs)
    assert names_every_object("A red medium-sized circle, a blue star.", objs)  # size word between
    assert not names_every_object("A red circle.", objs)  # the star is missing
    assert not names_every_object("A blue circle and a red star.", objs)  # colours swapped
    assert not names_every_object("A circle that is red and a blue star.", objs)  # colour after the shape
    assert not names_every_object("A red and blue star.", objs)  # "red" is followed by a colour first
    assert not names_every_object("There are no shapes.", [("yellow", "cross")])
    assert names_every_object("Two white crosses.", [("white", "cross"), ("white", "cross")])


def test_a_count_is_right_when_its_first_number_is():
    from vistune.eval.scoring import count_is_right

    assert count_is_right("There are three shapes.", 3) and count_is_right("3", 3)
    assert count_is_right("Two.", 2) and not count_is_right("Two.", 3)
    assert not count_is_right("There are no shapes.", 1)  # no number at all
    assert not count_is_right("There are 2 shapes, not 3.", 3)  # the first number decides
