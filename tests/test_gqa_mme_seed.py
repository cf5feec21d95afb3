"""`vistune eval gqa|mme|seed` on small files in each benchmark's own format, scored by hand."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vistune.cli import main
from vistune.eval.mme import read_yes_no


def _answers(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gqa_exact_match_per_type_balanced_only(tmp_path):
    questions = {
        "q1": {"imageId": "n1", "question": "What colour is the cup?", "answer": "white", "isBalanced": True,
               "types": {"structural": "query", "semantic": "attr"}},
        "q2": {"imageId": "n1", "question": "Is the cup on the table?", "answer": "yes", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "rel"}},
        "q3": {"imageId": "n2", "question": "Which side is the car on?", "answer": "left", "isBalanced": True,
               "types": {"structural": "query", "semantic": "rel"}},
        "q4": {"imageId": "n2", "question": "Is it sunny?", "answer": "no", "isBalanced": False,
               "types": {"structural": "verify", "semantic": "global"}}}
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    # "White." -> "white" (right); "Yes, it is" is not "yes" (GQA compares whole strings); "the left" != "left"
    answers = _answers(tmp_path / "a.jsonl", [{"question_id": "q1", "text": "White."},
                                              {"question_id": "q2", "text": "Yes, it is"},
                                              {"question_id": "q3", "text": "the left"},
                                              {"question_id": "q4", "text": "no"}])
    assert main(["eval", "gqa", "--questions", str(tmp_path / "testdev_balanced_questions.json"), "--answers", answers,
                 "--out", str(tmp_path / "out")]) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    assert figures["n"] == 3  # q4 is not balanced: GQA's evaluator leaves it out
    assert figures["accuracy"] == pytest.approx(100 / 3)
    assert figures["by_structural"] == pytest.approx({"query": 50.0, "verify": 0.0})
    assert figures["by_semantic"] == pytest.approx({"attr": 100.0, "rel": 0.0})
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())[0] == {"questionId": "q1",
                                                                                 "prediction": "white"}


@pytest.mark.parametrize("answer, reading", [
    ("Yes", "yes"), ("no", "no"), ("Yes, it is.", "yes"), ("No, it is not.", "no"), ("Not at all", "no"),
    ("There is no dog", "other"),  # only the first four characters are looked at
    ("nope", "no"), ("I think yes", "other"), ("yesterday", "yes"), ("", "other")])
def test_mme_reading(answer, reading):
    assert read_yes_no(answer) == reading


def _mme(root):
    """Two subtasks: `existence` (images and question files side by side) and `artwork` (images/ and
    questions_answers_YN/), two images each, two questions per image."""
    for sub, layout in (("existence", "flat"), ("artwork", "split"), ("code_reasoning", "flat")):
        img_dir = root / sub / ("images" if layout == "split" else "")
        qa_dir = root / sub / ("questions_answers_YN" if layout == "split" else "")
        img_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            Image.new("RGB", (8, 8), (k * 100, 0, 0)).save(img_dir / f"{sub}{k}.jpg")
            (qa_dir / f"{sub}{k}.txt").write_text(f"Is there a cat? Please answer yes or no.\tYes\n"
                                                  f"Is there a dog? Please answer yes or no.\tNo\n")


def test_mme_scores_per_subtask_with_pairs(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    _mme(root)
    rows = []
    # existence: image 0 both right, image 1 one right -> acc 75, acc+ 50, score 125
    # artwork: image 0 "Yes" / "Yes" (one right), image 1 unreadable "maybe" / right -> acc 50, acc+ 0, score 50
    # code_reasoning: all right -> 200 (cognition)
    texts = {("existence", 0): ("Yes", "No"), ("existence", 1): ("Yes", "Yes"), ("artwork", 0): ("Yes", "Yes"),
             ("artwork", 1): ("maybe", "No"), ("code_reasoning", 0): ("yes", "no"), ("code_reasoning", 1): ("yes", "no")}
    for (sub, k), (a, b) in texts.items():
        rows += [{"question_id": f"{sub}/{sub}{k}/0", "text": a}, {"question_id": f"{sub}/{sub}{k}/1", "text": b}]
    assert main(["eval", "mme", "--questions", str(root), "--answers", _answers(tmp_path / "a.jsonl", rows),
                 "--out", str(tmp_path / "out")]) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    assert figures["by_subtask"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "images": 2}
    assert figures["by_subtask"]["artwork"]["score"] == 50.0
    assert figures["perception"] == 175.0 and figures["cognition"] == 200.0
    # MME's calculation script reads these: image, question, gold, prediction
    lines = (tmp_path / "out" / "mme_results" / "artwork.txt").read_text().splitlines()
    assert lines[2] == "artwork1.jpg\tIs there a cat? Please answer yes or no.\tYes\tmaybe"


def test_seed_exact_letter_per_dimension_image_questions_only(tmp_path):
    data = {"question_type": {"Scene Understanding": 1, "Instance Counting": 5}, "questions": [
        {"question_id": "101", "question": "Where is it?", "choice_a": "park", "choice_b": "beach", "choice_c": "road",
         "choice_d": "room", "answer": "B", "data_type": "image", "data_id": "1.jpg", "question_type_id": 1},
        {"question_id": "102", "question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3",
         "choice_d": "4", "answer": "C", "data_type": "image", "data_id": "2.jpg", "question_type_id": 5},
        {"question_id": "103", "question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3",
         "choice_d": "4", "answer": "A", "data_type": "image", "data_id": "3.jpg", "question_type_id": 5},
        {"question_id": "v1", "question": "What happens?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_type": "video", "data_id": "v.mp4", "question_type_id": 10}]}
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(data))
    # LLaVA's scoring: the stripped text must be the letter itself ("C." is wrong)
    answers = _answers(tmp_path / "a.jsonl", [{"question_id": "101", "text": " B\n"}, {"question_id": "102",
                                                                                      "text": "C."},
                                              {"question_id": "103", "text": "A"}])
    assert main(["eval", "seed", "--questions", str(tmp_path / "SEED-Bench.json"), "--answers", answers,
                 "--out", str(tmp_path / "out")]) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    assert figures["n"] == 3 and figures["image_accuracy"] == pytest.approx(200 / 3)
    assert figures["by_dimension"] == {"Instance Counting": 50.0, "Scene Understanding": 100.0}
    from vistune.eval.benchmark import BenchmarkOptions
    from vistune.eval.seed import Seed

    q = Seed().load(BenchmarkOptions(questions=str(tmp_path / "SEED-Bench.json"), out=str(tmp_path)))[0]
    assert q["text"] == ("Where is it?\nA. park\nB. beach\nC. road\nD. room\n"
                         "Answer with the option's letter from the given choices directly.")
