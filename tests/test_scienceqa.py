"""ScienceQA: the original's extraction rule, the paper's table by hand, results.json, the ensemble with a
loopback judge, the converter's prompt formats, bad input, and `--model` with a tiny checkpoint."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher_server import FakeTeacher  # noqa: E402

from vistune.cli import main  # noqa: E402
from vistune.data.scienceqa import PromptFormat, ScienceQAError, build_input, build_output, to_record  # noqa: E402
from vistune.eval.scienceqa import choice_index, extract_letter  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "scienceqa"
PROBLEMS = json.loads((FIX / "problems.json").read_text())


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("E", "E"), ("B. Maine", "B"), ("The answer is C.", "C"),
    ("Because it is hard. The answer is A. Done.", "A"),
    ("The answer is C. The answer is C.", None),  # more than one match
    ("The answer is B", None),  # the pattern needs a character after the letter
    ("a", None), ("(A)", None), ("A.", None), ("F", None), ("B.Maine", None), ("", None),
    ("The answer is F.", "F"),  # a letter, but beyond every question's choices
])
def test_extract_letter_is_the_original_rule(text, letter):
    assert extract_letter(text) == letter


def test_choice_index():
    assert choice_index("B", 3) == 1
    assert choice_index("E", 2) == -1  # beyond the choices
    assert choice_index("The answer is F.", 5) == -1
    assert choice_index("nothing", 4) == -1 and choice_index(None, 4) == -1


def sqa_argv(out: Path, *extra: str) -> list[str]:
    return ["eval", "scienceqa", "--problems", str(FIX / "problems.json"), "--pid-splits", str(FIX / "pid_splits.json"),
            "--answers", str(FIX / "answers.jsonl"), "--out", str(out), "--no-progress", *extra]


def test_table_results_json_and_report_by_hand(tmp_path):
    assert main(sqa_argv(tmp_path)) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    # 101 "B" ok; 102 "E" beyond 2 choices -> -1; 103 "A. hard" ok; 104 two matches -> -1; 105, 106 ok
    assert res["results"] == {"101": 1, "102": -1, "103": 0, "104": -1, "105": 0, "106": 0}
    assert (res["correct"], res["count"]) == (4, 6) and res["acc"] == pytest.approx(400 / 6)
    assert res["outputs"]["102"] == "E" and set(res) == {"acc", "correct", "count", "results", "outputs"}
    rep = json.loads((tmp_path / "report.json").read_text())["methods"]["model"]
    # NAT 103 ok 104 x 106 ok; SOC 101 ok; LAN 102 x 105 ok; TXT 102 x 103 ok 106 ok; IMG 101 103 106 ok;
    # NO 104 x 105 ok; G1-6 101 103 105 ok 104 x; G7-12 102 x 106 ok
    assert rep["by_column"] == pytest.approx({"NAT": 200 / 3, "SOC": 100.0, "LAN": 50.0, "TXT": 200 / 3,
                                              "IMG": 100.0, "NO": 50.0, "G1-6": 75.0, "G7-12": 50.0})
    assert rep["failed"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "| method | NAT | SOC | LAN | TXT | IMG | NO | G1-6 | G7-12 | avg | 95 % CI | failed | n |" in md
    assert "| model | 66.7 | 100.0 | 50.0 | 66.7 | 100.0 | 50.0 | 75.0 | 50.0 | 66.7 |" in md
    # chance = mean of 100/choices: (1/3 + 1/2 + 1/4 + 1/3 + 1/2 + 1/5) / 6 = 35.3
    assert "| chance |" in md and "| 35.3 |" in md
    assert "2 of 6 answers give no valid option letter" in md
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_complement_ensemble_from_a_second_answer_file(tmp_path):
    assert main(sqa_argv(tmp_path, "--ensemble-answers", str(FIX / "ensemble_answers.jsonl"))) == 0
    methods = json.loads((tmp_path / "report.json").read_text())["methods"]
    # second: 101 ok, 102 ok, 103 x, 104 ok, 105 ok, 106 unreadable -> 4/6
    assert methods["second"]["avg"] == pytest.approx(400 / 6)
    # complement: the second where readable, else the first (106 -> the first's correct A): 5/6
    assert methods["complement"]["avg"] == pytest.approx(500 / 6)
    assert json.loads((tmp_path / "results_complement.json").read_text())["results"]["106"] == 0
    assert "judge_ensemble" not in methods


def judge_server() -> FakeTeacher:
    pid_of = {p["question"]: pid for pid, p in PROBLEMS.items()}

    def key_of(messages):
        content = messages[-1]["content"]
        kind = "arbitrate" if "Two students" in content else "answer"
        return f"{pid_of[re.search(r'Question: (.*)', content).group(1)]}:{kind}"

    replies = {"102": "The answer is B.", "103": "The objects are hard. The answer is A.", "104": "I cannot tell.",
               "106": "The answer is A."}

    def respond(messages):
        pid, kind = key_of(messages).split(":")
        if kind == "answer":  # the judge answering alone: always option A
            return "The answer is A."
        return replies.get(pid, "The answer is A.")

    return FakeTeacher({}, responder=respond, key_of=key_of)


def test_judge_ensemble_arbitrates_only_disagreements(tmp_path):
    server = judge_server()
    url = server.start()
    try:
        code = main(sqa_argv(tmp_path, "--ensemble-answers", str(FIX / "ensemble_answers.jsonl"),
                             "--ensemble-judge-base-url", url, "--ensemble-judge-model", "judge-test",
                             "--retry-base-delay", "0.01"))
        keys = [a.key for a in server.attempts]
        again = main(sqa_argv(tmp_path, "--ensemble-answers", str(FIX / "ensemble_answers.jsonl"),
                              "--ensemble-judge-base-url", url, "--ensemble-judge-model", "judge-test"))
    finally:
        server.stop()
    assert code == 0 and again == 0
    # disagreements: 102 (-1 vs B), 103 (A vs B), 104 (-1 vs C), 106 (A vs -1); 104's reply is unreadable: asked
    # 1 + 2 retries, then the first model's -1 stands
    assert sorted(keys) == ["102:arbitrate", "103:arbitrate"] + ["104:arbitrate"] * 3 + ["106:arbitrate"]
    assert len(server.attempts) == len(keys)  # the re-run asked nothing
    methods = json.loads((tmp_path / "report.json").read_text())["methods"]
    # final: 101 ok, 102 B ok, 103 A ok, 104 -1 x, 105 ok, 106 A ok -> 5/6
    assert methods["judge_ensemble"]["avg"] == pytest.approx(500 / 6)
    assert methods["judge_ensemble"]["arbitrated"] == 4
    assert "questions arbitrated (the two answers disagree): 4" in (tmp_path / "report.md").read_text()


def test_judge_alone_answers_then_arbitrates(tmp_path):
    server = judge_server()
    url = server.start()
    try:
        assert main(sqa_argv(tmp_path, "--ensemble-judge-base-url", url, "--ensemble-judge-model", "j")) == 0
    finally:
        server.stop()
    kinds = [a.key.split(":")[1] for a in server.attempts]
    assert kinds.count("answer") == 6
    # the judge answers A everywhere: disagrees with the model on 101 (B), 102 (-1), 104 (-1)
    assert sorted(a.key for a in server.attempts if a.key.endswith("arbitrate")) == \
        ["101:arbitrate", "102:arbitrate"] + ["104:arbitrate"] * 3
    methods = json.loads((tmp_path / "report.json").read_text())["methods"]
    # second = all A: 103, 105, 106 right -> 3/6
    assert methods["second"]["avg"] == pytest.approx(50.0)


def test_bad_input_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "answers.jsonl"
    bad.write_text('{"question_id": "101", "text": "A"}\n{"question_id": "999", "text": "B"}\n')
    args = sqa_argv(tmp_path / "out")
    args[args.index("--answers") + 1] = str(bad)
    assert main(args) == 2
    assert f"{bad}:2: question_id 999 is not in problems.json" in capsys.readouterr().err
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"test": ["101", "777"]}))
    args = sqa_argv(tmp_path / "out")
    args[args.index("--pid-splits") + 1] = str(splits)
    assert main(args) == 2
    assert "lists pid 777 that is not in" in capsys.readouterr().err


def test_prompt_formats():
    p = PROBLEMS["101"]
    assert build_input(p, PromptFormat.parse("QCM-A")) == (
        "Question: Which of these states is farthest north?\nContext: N/A\nOptions: (A) Texas (B) Maine (C) Ohio")
    assert build_output(p, PromptFormat.parse("QCM-A")) == "The answer is B."
    assert build_output(p, PromptFormat.parse("QCM-LEA")) == \
        "Maps have four cardinal directions.\nMaine is farthest north.\nThe answer is B."
    assert build_output(p, PromptFormat.parse("QCM-ALE")) == \
        "The answer is B.\nMaps have four cardinal directions.\nMaine is farthest north."
    assert build_input(PROBLEMS["102"], PromptFormat.parse("CQM-A")).startswith(
        "Context: The room was as silent as a tomb.\nQuestion:")
    for fmt in ("QCM-LEA", "QCM-ALE"):  # the evaluation reads back the answer it trains on
        assert extract_letter(build_output(p, PromptFormat.parse(fmt))) == "B"
    for bad in ("QCM", "QCMX-A", "QCM-LE", "QQ-A"):
        with pytest.raises(ScienceQAError):
            PromptFormat.parse(bad)
    rec = to_record("101", p, PromptFormat.parse("QCM-A"))
    assert rec["image"] == "101/image.png" and rec["conversations"][0]["value"].startswith("<image>\nQuestion:")
    assert "image" not in to_record("102", PROBLEMS["102"], PromptFormat.parse("QCM-A"))


def test_data_scienceqa_command(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["data", "scienceqa", "--problems", str(FIX / "problems.json"), "--split", "train",
                 "--prompt-format", "QCM-LEA", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == ["201", "202"]
    assert records[0]["image"] == "201/image.png" and "image" not in records[1]
    assert records[1]["conversations"][1]["value"].endswith("The answer is A.")
    assert "2 records (1 with an image, 1 text-only)" in capsys.readouterr().out
    assert main(["data", "scienceqa", "--problems", str(FIX / "problems.json"), "--split", "train",
                 "--prompt-format", "QCM-XYZ", "--out", str(out)]) == 2


def test_model_answers_every_question_resumably(tmp_path):
    from PIL import Image

    from vistune.train.tiny import save_tiny_checkpoint

    ck = save_tiny_checkpoint(tmp_path / "ck")
    images = tmp_path / "images"
    for pid, p in PROBLEMS.items():
        if p["image"]:
            (images / pid).mkdir(parents=True)
            Image.new("RGB", (32, 32), (200, 40, 40)).save(images / pid / "image.png")
    args = ["eval", "scienceqa", "--problems", str(FIX / "problems.json"), "--pid-splits", str(FIX / "pid_splits.json"),
            "--model", str(ck), "--images", str(images), "--out", str(tmp_path / "out"), "--max-new-tokens", "4",
            "--device", "cpu", "--no-progress", "--limit", "4"]
    assert main(args) == 0
    lines = (tmp_path / "out" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(x)["question_id"] for x in lines] == ["101", "102", "103", "104"]
    assert json.loads(lines[0])["prompt"].startswith("Question: Which of these states")
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["count"] == 4 and set(res["results"]) == {"101", "102", "103", "104"}
    assert main(args) == 0  # a re-run answers nothing again
    assert (tmp_path / "out" / "answers.jsonl").read_text().splitlines() == lines
