"""`vistune eval pope`: the yes/no reading and the figures, pinned to what LLaVA's eval_pope.py printed for the
same answers and labels (compared once), splits from a folder of POPE files or a `category` field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vistune.cli import main
from vistune.eval.pope import reads_no, split_metrics

# answer -> how eval_pope.py reads it. Only the text before the first "." counts, commas are deleted, and the
# words are split on single spaces: "NO" and "Nope" are not "no"; "No,there" becomes "Nothere" (yes); "Not." is
# cut to "Not" (capitalised: yes), while "There is not." has "not" (no).
READINGS = [("Yes, there is a cat.", "yes"), ("No.", "no"), ("There is no cat in the image.", "no"), ("NO", "yes"),
            ("Nope", "yes"), ("not sure", "no"), ("no, it's not", "no"), ("Yes. No.", "yes"), ("", "yes"),
            ("I do not see one", "no"), ("No,there", "yes"), ("Yes", "yes"), ("no", "no"), ("The answer is no", "no"),
            ("yes, not really", "no"), ("Not.", "yes"), ("There is not.", "no"), ("Maybe, no", "no"),
            ("Yes it's there. Not a dog though.", "yes"), ("nothing", "yes")]


@pytest.mark.parametrize("text, reading", READINGS)
def test_reading_is_eval_pope_s(text, reading):
    assert ("no" if reads_no(text) else "yes") == reading


def test_figures_agree_with_eval_pope():
    labels = ["yes" if i % 3 else "no" for i in range(len(READINGS))]
    pred = np.array([not reads_no(t) for t, _ in READINGS])
    m = split_metrics(pred, np.array([lab == "yes" for lab in labels]))
    # eval_pope.py printed: TP 6 FP 4 TN 3 FN 7; accuracy 0.45, precision 0.6, recall 0.4615..., F1 0.5217...,
    # yes ratio 0.5
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (6, 4, 3, 7)
    assert m["accuracy"] == pytest.approx(45.0) and m["precision"] == pytest.approx(60.0)
    assert m["recall"] == pytest.approx(600 / 13) and m["f1"] == pytest.approx(100 * 0.5217391304347826)
    assert m["yes_ratio"] == pytest.approx(50.0)
    # where eval_pope.py divides by zero (no yes answer at all), the figures are 0
    none = split_metrics(np.zeros(4, bool), np.array([1, 0, 1, 0], bool))
    assert none["precision"] == none["f1"] == 0.0 and none["accuracy"] == 50.0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_folder_of_splits_and_the_mean_f1(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    # the same question ids in each split (POPE numbers each file from 1)
    _write(folder / "coco_pope_random.json", [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?",
                                               "label": "yes"},
                                              {"question_id": 2, "image": "a.jpg", "text": "Is there a bus?",
                                               "label": "no"}])
    _write(folder / "coco_pope_adversarial.json", [{"question_id": 1, "image": "b.jpg", "text": "Is there a fork?",
                                                    "label": "yes"},
                                                   {"question_id": 2, "image": "b.jpg", "text": "Is there a knife?",
                                                    "label": "no"}])
    _write(tmp_path / "answers.jsonl", [{"question_id": "random/1", "text": "Yes."},
                                        {"question_id": "random/2", "text": "No, there is not."},
                                        {"question_id": "adversarial/1", "text": "Yes"},
                                        {"question_id": "adversarial/2", "text": "Yes, there is."}])
    assert main(["eval", "pope", "--questions", str(folder), "--answers", str(tmp_path / "answers.jsonl"),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    by = summary["figures"]["by_split"]
    assert list(by) == ["random", "adversarial"]
    assert by["random"]["f1"] == 100.0 and by["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert by["adversarial"]["yes_ratio"] == 100.0
    assert summary["figures"]["f1_mean"] == pytest.approx((100 + 200 / 3) / 2)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| adversarial | 50.0 | 50.0 | 100.0 | 66.7 | 100.0 | 2 |" in md
    assert (tmp_path / "out" / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_category_field_and_unanswered_questions(tmp_path):
    _write(tmp_path / "llava_pope_test.jsonl", [
        {"question_id": 7, "image": "a.jpg", "text": "Is there a cat?", "label": "yes", "category": "popular"},
        {"question_id": 8, "image": "a.jpg", "text": "Is there a dog?", "label": "no", "category": "popular"}])
    _write(tmp_path / "answers.jsonl", [{"question_id": 7, "text": "Yes"}])
    assert main(["eval", "pope", "--questions", str(tmp_path / "llava_pope_test.jsonl"), "--answers",
                 str(tmp_path / "answers.jsonl"), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # question 8 has no answer: counted wrong (read as "yes" against "no")
    assert summary["missing"] == 1 and summary["figures"]["by_split"]["popular"]["accuracy"] == 50.0
    assert "1 of 2 questions have no answer" in (tmp_path / "out" / "summary.md").read_text()


def test_bad_label_names_the_line(tmp_path, capsys):
    _write(tmp_path / "q.json", [{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "maybe"}])
    assert main(["eval", "pope", "--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "q.json"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "q.json:1: label must be yes or no" in capsys.readouterr().err
