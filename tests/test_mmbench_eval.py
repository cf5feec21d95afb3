"""`vistune eval mmbench`: the TSV with 2-4 options and hints, circular evaluation (rotations made here or shipped
in the TSV), the letter rule, LLaVA's answer files and the optional judge on a loopback server."""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher_server import FakeTeacher  # noqa: E402

from vistune.cli import main  # noqa: E402
from vistune.eval.mmbench import parse_letter  # noqa: E402

OPTS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(C) bird", "C"), ("The answer is D.", "D"), ("A", "A"),
    ("A dog is shown in the picture", "B"),  # the article "A" is no option; the text names "dog"
    ("It is a cat or a dog", None),  # two options named
    ("E", None),  # beyond the options
    ("B or C", None), ("fish", "D"), ("Bird.", "C"), ("I am not sure", None)])
def test_letter_rule(answer, letter):
    assert parse_letter(answer, OPTS) == letter


def _png(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path) -> Path:
    rows = [
        # 4 options, no hint: rotated here, 4 passes
        {"index": 0, "question": "What animal is it?", "hint": "nan", "A": "cat", "B": "dog", "C": "bird", "D": "fish",
         "answer": "B", "category": "object", "l2-category": "perception", "image": _png((200, 0, 0))},
        # 2 options and a hint: 2 passes
        {"index": 1, "question": "Is it day?", "hint": "Look at the sky.", "A": "yes", "B": "no", "C": "nan",
         "D": "nan", "answer": "A", "category": "scene", "l2-category": "perception", "image": _png((0, 200, 0))},
        # 3 options shipped with their circular copies (index + k * 1,000,000)
        {"index": 2, "question": "Which colour?", "hint": "", "A": "red", "B": "green", "C": "blue", "D": "",
         "answer": "C", "category": "attribute", "l2-category": "reasoning", "image": _png((0, 0, 200))},
        {"index": 1000002, "question": "Which colour?", "hint": "", "A": "green", "B": "blue", "C": "red", "D": "",
         "answer": "B", "category": "attribute", "l2-category": "reasoning", "image": _png((0, 0, 200))},
        {"index": 2000002, "question": "Which colour?", "hint": "", "A": "blue", "B": "red", "C": "green", "D": "",
         "answer": "A", "category": "attribute", "l2-category": "reasoning", "image": _png((0, 0, 200))},
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def test_questions_rotations_and_prompt(tmp_path):
    from vistune.eval.benchmark import BenchmarkOptions
    from vistune.eval.mmbench import MMBench

    qs = MMBench().load(BenchmarkOptions(questions=str(write_tsv(tmp_path / "mmbench.tsv")), out=str(tmp_path)))
    assert [q["question_id"] for q in qs] == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1", "2-0", "2-1", "2-2"]
    # rotation 1 of question 0: dog, bird, fish, cat; the right option (dog) is now A
    assert qs[1]["options"] == ["dog", "bird", "fish", "cat"] and qs[1]["answer"] == "A"
    assert qs[3]["answer"] == "C"
    assert qs[4]["text"] == ("Look at the sky.\nIs it day?\nA. yes\nB. no\n"
                             "Answer with the option's letter from the given choices directly.")
    assert qs[5]["options"] == ["no", "yes"] and qs[5]["answer"] == "B"
    assert [q["answer"] for q in qs[6:]] == ["C", "B", "A"]  # the TSV's own passes
    assert Image.open(qs[0]["image"]).size == (8, 8)
    # --limit 2 takes the first two questions with all their passes
    assert [q["question_id"] for q in MMBench().take(qs, 2)] == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1"]


def test_circular_scores_from_llava_answer_files(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench.tsv")
    rows = [  # LLaVA's MMBench answers: question_id = index, round_id = the pass
        *({"question_id": 0, "round_id": r, "text": t} for r, t in enumerate(["B", "A", "D", "The answer is C."])),
        {"question_id": 1, "round_id": 0, "text": "A"}, {"question_id": 1, "round_id": 1, "text": "A"},  # 2nd wrong
        *({"question_id": 2, "round_id": r, "text": t} for r, t in enumerate(["C", "blue", "I cannot tell"]))]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "mmbench", "--questions", str(tsv), "--answers", str(answers), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    # question 0: every pass right; 1: the second pass wrong; 2: the third pass gives no letter -> wrong
    assert figures["circular"] == pytest.approx(100 / 3) and figures["single_pass"] == 100.0
    assert figures["no_letter"] == 1 and figures["questions"] == 3 and figures["passes"] == 9
    assert figures["by_category"] == {"attribute": 0.0, "object": 100.0, "scene": 0.0}
    assert figures["by_l2"] == {"perception": 50.0, "reasoning": 0.0}
    assert "1 of 9 answers name no option letter" in (tmp_path / "out" / "summary.md").read_text()


def test_the_judge_reads_letters_the_rule_cannot(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench.tsv")
    rows = [{"question_id": f"2-{r}", "text": t} for r, t in enumerate(["C", "B", "I think it's the sea colour"])]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = FakeTeacher({}, responder=lambda messages: "A", key_of=lambda messages: "judge")
    url = server.start()
    try:
        argv = ["eval", "mmbench", "--questions", str(tsv), "--answers", str(answers), "--out", str(tmp_path / "out"),
                "--judge-base-url", url, "--judge-model", "j", "--no-progress", "--retry-base-delay", "0.01"]
        assert main(argv) == 0
        asked = len(server.attempts)
        assert main(argv) == 0  # resumed: nothing asked again
    finally:
        server.stop()
    assert asked == 1 and len(server.attempts) == 1
    figures = json.loads((tmp_path / "out" / "summary.json").read_text())["figures"]
    # question 2: C, B and (the judge's) A are right in its three passes; questions 0 and 1 have no answers
    assert figures["no_letter"] == 0 and figures["circular"] == pytest.approx(100 / 3)
