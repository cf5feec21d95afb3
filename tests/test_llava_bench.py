"""`vistune eval llava-bench`: the original's parsing and summary formulas, a loopback judge with faults,
re-scoring review files, bad input, and a SIGKILL followed by a resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher_server import FakeTeacher, Fault  # noqa: E402

from vistune.cli import main  # noqa: E402
from vistune.eval.llava_bench import figures, parse_review, read_questions, summarize  # noqa: E402
from vistune.utils.jsonl import RecordError  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "llava_bench"
REPO = Path(__file__).resolve().parents[1]
# the judge's scores per question: (reference, candidate)
SCORES = {0: (9, 9), 1: (8, 4), 2: (9, 7), 3: (10, 3), 4: (8, 6), 5: (9, 8)}
QUESTION = re.compile(r"The user's question:\n(.*)\n")


def _questions(path: Path = FIX / "questions.jsonl") -> dict[str, int]:
    return {json.loads(line)["text"]: json.loads(line)["question_id"] for line in path.read_text().splitlines()}


def judge_server(path: Path = FIX / "questions.jsonl", **kwargs) -> FakeTeacher:
    ids = _questions(path)

    def key_of(messages):
        return str(ids[QUESTION.search(messages[-1]["content"]).group(1)])

    def respond(messages):
        ref, cand = SCORES.get(int(key_of(messages)) % 6)
        return f"{ref} {cand}\nAssistant 1 is complete; Assistant 2 is less so."

    return FakeTeacher({}, responder=respond, key_of=key_of, **kwargs)


def argv(url: str, out: Path, *extra: str, questions: Path = FIX / "questions.jsonl",
         answers: Path = FIX / "answers.jsonl") -> list[str]:
    return ["eval", "llava-bench", "--questions", str(questions), "--context", str(FIX / "context.jsonl"),
            "--references", str(FIX / "references.jsonl"), "--answers", str(answers), "--out", str(out),
            "--judge-base-url", url, "--judge-model", "judge-test", "--judge-api-key-env", "VISTUNE_TEST_KEY",
            "--timeout", "1", "--retry-base-delay", "0.01", "--retry-max-delay", "0.05", "--no-progress",
            *extra]


def reviews(out: Path) -> list[dict]:
    data = (out / "reviews.jsonl").read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("text, pair", [
    ("8 7\nbecause", [8.0, 7.0]),
    ("8,7", [8.0, 7.0]),
    ("7.5 10\n", [7.5, 10.0]),
    ("8, 7\nthe space after the comma leaves an empty piece", None),
    ("8 7 9", None),
    ("Scores: 8 7", None),
    ("8\n7", None),
    ("", None),
    ("eight seven", None),
])
def test_parse_review_is_the_original_rule(text, pair):
    assert parse_review(text) == pair


def test_summary_figures_match_a_hand_computation():
    rows = [("conv", [8, 6]), ("conv", [10, 9]), ("detail", [7, 7]), ("detail", [-1, -1]), ("complex", [9, 3])]
    s = summarize([{"question_id": i, "category": c, "score": [float(v) for v in p]} for i, (c, p) in enumerate(rows)])
    assert list(s) == ["all", "conv", "detail", "complex"]
    # conv: means 9.0 / 7.5 -> 100*7.5/9 = 83.33 -> 83.3; 10*means = 90.0 and 75.0
    assert {k: s["conv"][k] for k in ("relative", "reference", "candidate", "n", "judge_failures")} == \
        {"relative": 83.3, "reference": 90.0, "candidate": 75.0, "n": 2, "judge_failures": 0}
    # detail: the failure is averaged as (-1, -1): means (7-1)/2 = 3.0 each -> 100.0, 30.0, 30.0
    assert (s["detail"]["relative"], s["detail"]["reference"], s["detail"]["judge_failures"]) == (100.0, 30.0, 1)
    # all: means 33/5 = 6.6 and 24/5 = 4.8 -> 72.727 -> 72.7; 66.0; 48.0
    assert (s["all"]["relative"], s["all"]["reference"], s["all"]["candidate"], s["all"]["n"]) == (72.7, 66.0, 48.0, 5)
    assert s["complex"]["relative"] == 33.3
    # the means are rounded to 3 decimals before the ratio, as in the original summary: a candidate mean of
    # 0.1065 becomes 0.106 (float), so relative = 10.6 where the unrounded ratio would give 10.7
    assert figures(np.array([[1.0, 0.1065]]))["relative"] == 10.6 != round(0.1065 * 100, 1)
    assert figures(np.array([[20 / 3, 5.0]]))["reference"] == 66.7
    lo, hi = s["all"]["relative_ci95"]
    assert lo <= 72.7 <= hi


def test_judge_run_with_faults_writes_one_review_per_question(tmp_path, capsys):
    schedule = {"1": [Fault("429", retry_after="0")], "2": ["garbage"], "3": ["slow"], "4": ["500"],
                "5": ["garbage"] * 3}  # question 5: unparseable three times -> a failure
    server = judge_server(schedule={(k, "unknown"): v for k, v in schedule.items()}, slow_delay=1.6)
    url = server.start()
    try:
        code = main(argv(url, tmp_path, "--concurrency", "3", "--judge-retries", "2"))
    finally:
        server.stop()
    assert code == 0
    rows = reviews(tmp_path)
    assert sorted(r["question_id"] for r in rows) == [0, 1, 2, 3, 4, 5]
    by_q = {r["question_id"]: r for r in rows}
    assert by_q[5]["score"] == [-1, -1] and by_q[5]["text"] == "#@!% ~~ 42 ?? ###"
    for q in range(5):
        assert by_q[q]["score"] == list(map(float, SCORES[q]))
        assert by_q[q]["text"].startswith(f"{SCORES[q][0]} {SCORES[q][1]}\n")
    assert {r["category"] for r in rows} == {"conv", "detail", "complex"}
    counts = server.pair_counts()
    assert counts[("5", "unknown")] == 3 and counts[("2", "unknown")] == 2 and counts[("1", "unknown")] == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    # all: ref (9+8+9+10+8-1)/6 = 43/6 = 7.1667 -> 7.167; cand (9+4+7+3+6-1)/6 = 28/6 = 4.6667 -> 4.667
    # relative = 100 * 4.667 / 7.167 = 65.117 -> 65.1
    assert summary["all"] == {**summary["all"], "relative": 65.1, "reference": 71.7, "candidate": 46.7, "n": 6,
                              "judge_failures": 1}
    assert summary["complex"]["judge_failures"] == 1 and summary["conv"]["judge_failures"] == 0
    md = (tmp_path / "summary.md").read_text()
    assert "1 of 6 reviews could not be parsed" in md and "| all | 65.1 |" in md
    assert "relative = 100 × mean(candidate score) / mean(reference score)" in md
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr()
    assert "judge failures 1" in out.out and "tokens: " in out.err


def test_judge_sees_context_question_and_both_answers_in_order(tmp_path):
    server = judge_server()
    url = server.start()
    try:
        assert main(argv(url, tmp_path)) == 0
    finally:
        server.stop()
    msg = next(a.messages for a in server.attempts if a.key == "3")
    user = msg[-1]["content"]
    assert msg[0]["role"] == "system"
    assert "person: [0.120, 0.300, 0.310, 0.920]" in user and "Two people sit on a bench" in user
    assert user.index("Two people are sitting on the bench.") < user.index("Three people.")  # reference first
    assert "two numbers separated by one space" in user


def test_401_stops_at_once(tmp_path, capsys):
    server = judge_server(chooser=lambda key, type_, n: "401")
    url = server.start()
    try:
        code = main(argv(url, tmp_path, "--concurrency", "1"))
    finally:
        server.stop()
    assert code == 3
    assert len(server.attempts) == 1
    assert "refused the key" in capsys.readouterr().err and "Incorrect API key" not in ""


def test_rerun_asks_nothing_again_and_judge_samples_give_a_spread(tmp_path):
    server = judge_server()
    url = server.start()
    try:
        assert main(argv(url, tmp_path, "--judge-samples", "2")) == 0
        first = len(server.attempts)
        assert main(argv(url, tmp_path, "--judge-samples", "2")) == 0
        assert len(server.attempts) == first == 12
    finally:
        server.stop()
    assert len(reviews(tmp_path)) == 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["all"]["replicates"] == 2 and summary["all"]["relative_std"] == 0.0
    assert "mean ± std" in (tmp_path / "summary.md").read_text()


def test_rescore_an_original_review_file(tmp_path, capsys):
    code = main(["eval", "llava-bench", "--reviews", str(FIX / "reviews_original.jsonl"), "--out", str(tmp_path)])
    assert code == 0
    rows = reviews(tmp_path)
    assert [r["score"] for r in rows] == [[9, 9], [8, 4], [-1, -1], [10, 3], [8, 6], [9, 8]]
    assert [r["category"] for r in rows] == ["conv", "detail", "complex"] * 2
    s = json.loads((tmp_path / "summary.json").read_text())
    # all: ref (9+8-1+10+8+9)/6 = 43/6 -> 7.167, cand (9+4-1+3+6+8)/6 = 29/6 -> 4.833; 100*4.833/7.167 = 67.4
    assert (s["all"]["relative"], s["all"]["reference"], s["all"]["candidate"]) == (67.4, 71.7, 48.3)
    assert s["all"]["judge_failures"] == 1
    # complex: ref (-1+9)/2 = 4.0, cand (-1+8)/2 = 3.5 -> 87.5
    assert s["complex"]["relative"] == 87.5


def _copy(tmp_path: Path, name: str, edit) -> Path:
    lines = (FIX / name).read_text().splitlines()
    path = tmp_path / name
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize("name, edit, message", [
    ("questions.jsonl", lambda ls: ls[:2] + [ls[2].replace('"complex"', '"reasoning"')] + ls[3:],
     r"questions.jsonl:3: unknown category 'reasoning'"),
    ("questions.jsonl", lambda ls: ls[:4] + ["{not json"] + ls[4:], r"questions.jsonl:5: invalid JSON"),
    ("references.jsonl", lambda ls: ls[:3] + ls[4:], r"questions.jsonl:4: 3 has no reference answer in .*references"),
])
def test_bad_input_is_named_by_file_and_line(tmp_path, capsys, name, edit, message):
    path = _copy(tmp_path, name, edit)
    args = argv("http://127.0.0.1:9/v1", tmp_path / "out")
    args[args.index("--" + name.split(".")[0]) + 1] = str(path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "reviews.jsonl").exists()
    with pytest.raises(RecordError):
        read_questions(tmp_path / "missing.jsonl")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigkill_mid_judging_then_resume_without_duplicates(tmp_path):
    # 60 questions: the fixture's six, ten times over (ids 0..59)
    qs = [json.loads(line) for line in (FIX / "questions.jsonl").read_text().splitlines()]
    refs = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in (FIX / "references.jsonl").read_text().splitlines()}
    questions, references, answers = [], [], []
    for i in range(60):
        q = qs[i % 6]
        questions.append({**q, "question_id": i, "text": f"{q['text']} (#{i})"})
        references.append({"question_id": i, "text": refs[i % 6]})
        answers.append({"question_id": i, "text": "An answer."})
    for name, rows in (("questions", questions), ("references", references), ("answers", answers)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(FIX / "context.jsonl", tmp_path / "context.jsonl")
    server = judge_server(tmp_path / "questions.jsonl", delay=0.05)
    url = server.start()
    out = tmp_path / "out"
    args = [a if not a.startswith(str(FIX)) else str(tmp_path / Path(a).name)
            for a in argv(url, out, "--concurrency", "2", questions=tmp_path / "questions.jsonl",
                          answers=tmp_path / "answers.jsonl")]
    cmd = [sys.executable, "-m", "vistune", *args]
    try:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            path = out / "reviews.jsonl"
            while time.monotonic() < deadline:
                if path.exists() and path.read_bytes().count(b"\n") >= 10:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        before = path.read_bytes()
        written = before.count(b"\n")
        assert 10 <= written < 60, "killed too late to test anything"
        with open(path, "ab") as f:  # the worst a kill can leave: half a line
            f.write(b'{"id": "59", "question_id": 59, "tex')
        asked = len(server.attempts)
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "removed a torn last line" in done.stderr
    finally:
        server.stop()
    rows = reviews(out)
    assert sorted(r["question_id"] for r in rows) == list(range(60))  # each once
    assert path.read_bytes().startswith(before)  # the old reviews untouched
    assert len(server.attempts) - asked == 60 - written  # only the missing ones were asked
    assert json.loads((out / "summary.json").read_text())["all"]["n"] == 60


def test_model_with_seeds_answers_once_per_seed_and_judges_each(tmp_path):
    from PIL import Image

    from vistune.train.tiny import save_tiny_checkpoint

    ck = save_tiny_checkpoint(tmp_path / "ck")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("001.jpg", "002.jpg"):
        Image.new("RGB", (32, 32), (40, 90, 200)).save(images / name)
    out = tmp_path / "out"
    args = [a for a in argv("", out) if a not in ("--answers", str(FIX / "answers.jsonl"))]
    server = judge_server()
    url = server.start()
    try:
        args[args.index("--judge-base-url") + 1] = url
        code = main([*args, "--model", str(ck), "--images", str(images), "--seeds", "3,4", "--temperature", "1.0",
                     "--max-new-tokens", "6", "--device", "cpu"])
        refused = main([*args, "--model", str(ck), "--images", str(images), "--seeds", "3,4"])  # greedy: refused
    finally:
        server.stop()
    assert code == 0 and refused == 2
    n = len((FIX / "questions.jsonl").read_text().splitlines())
    answers = {s: [json.loads(x) for x in (out / f"answers-seed{s}.jsonl").read_text().splitlines()] for s in (3, 4)}
    assert all(len(a) == n for a in answers.values()) and not (out / "answers.jsonl").exists()
    assert answers[3] != answers[4]  # the seeds reached the sampler
    rows = reviews(out)
    assert sorted(r["question_id"] for r in rows) == sorted(list(range(n)) * 2)
