"""`vistune eval vqa`: the official answer normalisation and VQA accuracy, pinned to the figures LLaVA's
m4c_evaluator.py gave on the same answers (compared once), the three formats' files and the submission files."""

from __future__ import annotations

import json

import pytest

from vistune.cli import main
from vistune.eval.vqa import normalize, vqa_accuracy

OTHER = ["cat", "tree", "car", "sky", "blue", "red", "white", "house", "man", "bus"]


def humans(*pairs) -> list[str]:
    """Ten human answers: each (answer, k) k times, then distinct fillers."""
    out = [a for a, k in pairs for _ in range(k)]
    return out + OTHER[: 10 - len(out)]


# (prediction, humans, VQA accuracy): every figure is what m4c_evaluator.py's TextVQAAccuracyEvaluator gave for the
# same pair. With n = 10 humans of whom m agree with the prediction, accuracy = (m min(1, (m-1)/3) + (10-m)
# min(1, m/3)) / 10: m = 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.
CASES = [
    ("Two", humans(("2", 3), ("two", 1)), 1.0),  # number words become digits on both sides: 4 agree
    ("2", humans(("two", 2)), 0.6),
    ("The dog.", humans(("dog", 2), ("a dog", 1)), 0.9),  # articles and the final period go
    ("dont know", humans(("don't know", 3)), 0.9),  # contractions get their apostrophe back
    ("3.5", humans(("3.5", 1), ("35", 3)), 0.3),  # a period before a digit stays
    ("red, white", humans(("red white", 2), ("red and white", 5)), 0.6),  # commas are deleted
    ("Yes!", humans(("yes", 10)), 1.0),
    ("black-and-white", humans(("black and white", 4)), 1.0),  # a hyphen between words becomes a space
    ("left / right", humans(("left right", 2), ("left/right", 2)), 1.0),  # " / " is deleted, "/" alone -> space
    ("It's a cat", humans(("it's cat", 1), ("it 's cat", 1)), 0.6),  # "'s" is split off: "it 's cat"
    ("Unanswerable", ["unanswerable"] * 6 + ["no"] * 4, 1.0),  # VizWiz: an answer like any other
    ("none", humans(("0", 2), ("zero", 2)), 1.0),  # "none" is a number word (0)
    ("10:30 p.m.", humans(("10:30 pm", 3)), 0.9),  # ":" is not punctuation to the evaluator
    ("$5", humans(("$5", 2), ("5", 4)), 0.6),  # nor is "$"
    ("(yes)", humans(("yes", 1)), 0.3),
    ("  Multiple   spaces\tand\nnewlines ", humans(("multiple spaces and newlines", 3)), 0.9),
    ("youll see", humans(("you'll see", 4)), 1.0),
    ("1,000", humans(("1000", 3)), 0.9),
    ("an apple", humans(("apple", 1)), 0.3),
    ("the", humans(("the", 2)), 0.6),  # nothing is left on either side: "" equals ""
    ("e.g. dog", humans(("eg dog", 1)), 0.3),
    ("what's that", humans(("whats that", 2)), 0.0),  # "what 's that" against "what's that"
    ("ten", humans(("10", 9)), 1.0),
    ("a-b", humans(("a b", 1), ("a-b", 1)), 0.6),  # "a b" -> the article goes: "b"
    ("x - y", humans(("x y", 3)), 0.9),
    ("3...", humans(("3", 3)), 0.9),
    ("Somebody'd", humans(("somebodyd", 3)), 0.9),  # the official table maps "somebody'd" to "somebodyd"
    ("", humans(("", 2)), 0.6),
]


@pytest.mark.parametrize("prediction, gold, expected", CASES, ids=[repr(c[0]) for c in CASES])
def test_vqa_accuracy_agrees_with_the_official_evaluator(prediction, gold, expected):
    assert vqa_accuracy(prediction, gold) == pytest.approx(expected)


def test_the_mean_over_the_cases_is_the_official_figure():
    # m4c_evaluator.py's eval_pred_list over the same 28 pairs
    assert 100 * sum(vqa_accuracy(p, g) for p, g, _ in CASES) / len(CASES) == pytest.approx(100 * 0.7357142857142858)


@pytest.mark.parametrize("raw, norm", [
    ("It's 3.5 p.m.", "it 's 3.5 pm"), ("hello,world", "helloworld"), ("a / b", "b"), ("red-white", "red white"),
    ("None", "0"), ("x" + "." * 40, "x" + "." * 8),  # at most 32 periods are removed, as in the original
])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


def _textvqa(tmp_path):
    data = {"data": [
        {"question_id": 1, "image_id": "a1", "question": "what brand is it?", "ocr_tokens": ["Nikon", "D50"],
         "answers": ["nikon"] * 7 + ["canon"] * 3},
        {"question_id": 2, "image_id": "b2", "question": "what number is shown?", "ocr_tokens": [],
         "answers": ["two"] * 2 + ["2"] * 2 + ["3"] * 6}]}
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps(data))
    return path


def test_textvqa_official_file_with_the_ocr_prompt(tmp_path):
    from vistune.eval.benchmark import BenchmarkOptions
    from vistune.eval.vqa import Vqa

    o = BenchmarkOptions(questions=str(_textvqa(tmp_path)), out=str(tmp_path), format="textvqa", ocr=True)
    qs = Vqa().load(o)
    assert qs[0]["image"] == "a1.jpg" and qs[0]["text"] == (
        "what brand is it?\nReference OCR token: Nikon, D50\nAnswer the question using a single word or phrase.")
    assert qs[1]["text"] == "what number is shown?\nAnswer the question using a single word or phrase."
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 1, "text": "Nikon."}\n{"question_id": 2, "text": "Two"}\n')
    assert main(["eval", "vqa", "--format", "textvqa", "--questions", str(tmp_path / "TextVQA_0.5.1_val.json"),
                 "--answers", str(answers), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    # 1: 7 humans say nikon -> 1; 2: "two" and "2" both normalise to "2": 4 agree -> 1
    assert figures["accuracy"] == pytest.approx(100.0) and not (tmp_path / "out" / "submission.json").exists()


def test_vqav2_questions_annotations_and_submission_file(tmp_path):
    qs = {"data_subtype": "val2014", "questions": [
        {"question_id": 10, "image_id": 42, "question": "Is it raining?"},
        {"question_id": 11, "image_id": 7, "question": "How many dogs?"},
        {"question_id": 12, "image_id": 7, "question": "What colour?"}]}
    ann = {"annotations": [
        {"question_id": 10, "answer_type": "yes/no", "answers": [{"answer": "no"}] * 10},
        {"question_id": 11, "answer_type": "number", "answers": [{"answer": "2"}] * 2 + [{"answer": "3"}] * 8},
        {"question_id": 12, "answer_type": "other", "answers": [{"answer": "red"}] * 10}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(ann))
    (tmp_path / "answers.jsonl").write_text('{"question_id": 10, "text": "No."}\n{"question_id": 11, "text": "two"}\n')
    assert main(["eval", "vqa", "--format", "vqav2", "--questions", str(tmp_path / "q.json"), "--annotations",
                 str(tmp_path / "a.json"), "--answers", str(tmp_path / "answers.jsonl"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # 10 right (1), 11 two humans say 2 (0.6), 12 unanswered (0): 53.3
    assert summary["figures"]["accuracy"] == pytest.approx(160 / 3)
    assert summary["figures"]["by_answer_type"] == pytest.approx({"number": 60.0, "other": 0.0, "yes/no": 100.0})
    assert summary["missing"] == 1
    # the evaluation server's shape: every question, the processed answer, "" where none
    assert json.loads((tmp_path / "out" / "submission.json").read_text()) == [
        {"question_id": 10, "answer": "no"}, {"question_id": 11, "answer": "2"}, {"question_id": 12, "answer": ""}]
    from vistune.eval.benchmark import BenchmarkOptions
    from vistune.eval.vqa import Vqa

    assert Vqa().load(BenchmarkOptions(questions=str(tmp_path / "q.json"), out=str(tmp_path), format="vqav2")
                      )[0]["image"] == "COCO_val2014_000000000042.jpg"


def test_vizwiz_unanswerable_and_a_test_split_without_answers(tmp_path):
    val = [{"image": "VizWiz_val_1.jpg", "question": "What is this?",
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 7
            + [{"answer": "soup", "answer_confidence": "maybe"}] * 3, "answer_type": "unanswerable"},
           {"image": "VizWiz_val_2.jpg", "question": "What flavour?",
            "answers": [{"answer": "tomato soup"}] * 2 + [{"answer": "soup"}] * 8, "answer_type": "other"}]
    (tmp_path / "val.json").write_text(json.dumps(val))
    (tmp_path / "answers.jsonl").write_text('{"question_id": "VizWiz_val_1.jpg", "text": "Unanswerable"}\n'
                                            '{"question_id": "VizWiz_val_2.jpg", "text": "Tomato soup."}\n')
    argv = ["eval", "vqa", "--format", "vizwiz", "--questions", str(tmp_path / "val.json"), "--answers",
            str(tmp_path / "answers.jsonl"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    assert figures["accuracy"] == pytest.approx(80.0)  # 1 and 0.6
    assert json.loads((tmp_path / "out" / "submission.json").read_text()) == [
        {"image": "VizWiz_val_1.jpg", "answer": "unanswerable"}, {"image": "VizWiz_val_2.jpg", "answer": "tomato soup"}]
    test = [{"image": "VizWiz_test_1.jpg", "question": "What is it?"}]
    (tmp_path / "test.json").write_text(json.dumps(test))
    (tmp_path / "answers.jsonl").write_text('{"question_id": "VizWiz_test_1.jpg", "text": "A can"}\n')
    argv[argv.index(str(tmp_path / "val.json"))] = str(tmp_path / "test.json")
    assert main(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["figures"]["accuracy"] is None and summary["figures"]["unscored"] == 1
    assert "submission.json" in (tmp_path / "out" / "summary.md").read_text()
    assert json.loads((tmp_path / "out" / "submission.json").read_text()) == [
        {"image": "VizWiz_test_1.jpg", "answer": "can"}]


def test_bad_options_are_refused(tmp_path, capsys):
    path = _textvqa(tmp_path)
    assert main(["eval", "vqa", "--format", "vqav2", "--ocr", "--questions", str(path), "--answers", str(path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--ocr is TextVQA's" in capsys.readouterr().err
    assert main(["eval", "vqa", "--format", "textvqa", "--questions", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    (tmp_path / "ans.jsonl").write_text('{"question_id": 99, "text": "x"}\n')
    assert main(["eval", "vqa", "--format", "textvqa", "--questions", str(path), "--answers",
                 str(tmp_path / "ans.jsonl"), "--out", str(tmp_path / "o"), "--controls", "shuffled"]) == 2
    assert "--controls asks the model again" in capsys.readouterr().err
