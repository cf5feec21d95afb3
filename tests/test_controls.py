"""Image-reliance controls: the derangement (the demo's, unchanged), the blank image, the paired comparison and its
sentence; end to end with a tiny random checkpoint on POPE (every control, resume after an interruption), shapes,
ScienceQA, LLaVA-Bench, MMBench and the other benchmark commands."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher_server import FakeTeacher  # noqa: E402

from vistune.cli import main  # noqa: E402
from vistune.eval.controls import (  # noqa: E402
    ControlsError,
    compare,
    controlled_questions,
    derangement,
    mean_statistic,
    parse_controls,
    reliance_sentence,
    resample,
)


def test_seed_0_is_the_demos_derangement_each_image_to_the_next_in_sorted_order():
    # the demo's shuffled_images control has always asked about the next image in sorted order: unchanged
    assert derangement(["c.png", "a.png", "b.png", "a.png"]) == {"a.png": "b.png", "b.png": "c.png", "c.png": "a.png"}
    with pytest.raises(ControlsError, match="at least two images"):
        derangement(["a.png", "a.png"])


@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("seed", [1, 2, 9])
def test_every_seed_gives_a_fixed_derangement(n, seed):
    items = [f"{i}.jpg" for i in range(n)]
    d = derangement(items, seed)
    assert sorted(d) == sorted(d.values()) == items and all(k != v for k, v in d.items())
    assert derangement(list(reversed(items)), seed) == d  # the order questions come in does not matter
    if n == 7:
        assert derangement(items, seed) != derangement(items, seed + 1)


def test_parse_controls_orders_and_refuses_unknown_names():
    assert parse_controls("noimage, shuffled") == ("shuffled", "noimage") and parse_controls(None) == ()
    with pytest.raises(ControlsError, match="unknown control"):
        parse_controls("shuffled,grey")


def test_controlled_questions_leave_text_only_questions_out():
    qs = [{"question_id": 1, "image": "a.jpg", "text": "Q1"}, {"question_id": 2, "text": "Q2"},
          {"question_id": 3, "image": "b.jpg", "text": "Q3"}]
    assert controlled_questions(qs, "shuffled") == [{"question_id": 1, "image": "b.jpg", "text": "Q1"},
                                                    {"question_id": 3, "image": "a.jpg", "text": "Q3"}]
    assert controlled_questions(qs, "noimage") == [{"question_id": 1, "text": "Q1"}, {"question_id": 3, "text": "Q3"}]
    assert [q["image"] for q in controlled_questions(qs, "blank", blank="/x/blank.png")] == ["/x/blank.png"] * 2
    assert qs[0]["image"] == "a.jpg"  # copies


def test_compare_pairs_units_and_bootstraps_the_difference():
    real = np.array([[1], [1], [1], [0]], dtype=float)
    other = np.array([[1], [0], [0], [0]], dtype=float)
    c = compare(real, {"shuffled": other, "noimage": real.copy()}, mean_statistic())
    assert c["real"] == 75.0 and c["n"] == 4
    s = c["controls"]["shuffled"]
    assert s["score"] == 25.0 and s["difference"] == 50.0
    # per-unit differences are 0, 1, 1, 0: every resample's mean difference lies in [0, 100]
    assert 0.0 <= s["difference_ci95"][0] <= 50.0 <= s["difference_ci95"][1] <= 100.0
    assert c["controls"]["noimage"]["difference_ci95"] == [0.0, 0.0]  # identical answers: no spread at all
    sentence = reliance_sentence(c, "accuracy")
    assert sentence.startswith("The model's accuracy is 75.0 with the image and 25.0 with another image, 75.0 "
                               "with no image: none of it needs the right image (best control: noimage")
    one = reliance_sentence({"real": 75.0, "n": 4, "controls": {"shuffled": s}}, "accuracy")
    assert "50.0 points of it (67 %) need the right image" in one


def test_resampling_within_strata_keeps_each_strata_size():
    strata = np.array([0, 0, 0, 1, 1, 2])
    idx = resample(6, 50, np.random.default_rng(0), strata)
    assert idx.shape == (50, 6)
    assert (np.isin(idx[:, :3], [0, 1, 2]).all() and np.isin(idx[:, 3:5], [3, 4]).all()
            and (idx[:, 5] == 5).all())


# ----------------------------------------------------------------------------- end to end, tiny model

COLOURS = [(200, 40, 40), (40, 160, 60), (40, 40, 200)]


def seeing_checkpoint(path: Path) -> Path:
    """The tiny random model, made to answer differently for different images: its projector scaled up (image
    features dominate) and the newline token's embedding zeroed (random weights otherwise answer newlines only)."""
    import torch

    from vistune.model.checkpoint import save_checkpoint
    from vistune.model.tiny import tiny_vlm

    model = tiny_vlm(seed=0)
    with torch.no_grad():
        for weight in model.projector.parameters():
            weight.mul_(30)
        model.llm.get_input_embeddings().weight[model.tokenizer.convert_tokens_to_ids("Ċ")] = 0
    return save_checkpoint(model, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls")
    ck = seeing_checkpoint(root / "ck")
    images = root / "images"
    images.mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 30), colour).save(images / f"img{i}.png")
    return root, ck, images


def _pope(path: Path) -> Path:
    # the same question about every image, so a control's answer can be checked against a real one
    rows = [{"question_id": i + 1, "image": f"img{i % 3}.png", "text": "Is there a circle in the image?",
             "label": "yes" if i % 2 else "no"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_pope_with_every_control(setup, tmp_path):
    root, ck, images = setup
    out = tmp_path / "out"
    assert main(["eval", "pope", "--model", str(ck), "--questions", str(_pope(tmp_path / "coco_pope_random.json")),
                 "--images", str(images), "--out", str(out), "--controls", "shuffled,blank,noimage",
                 "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]) == 0
    real = {r["question_id"]: r["text"] for r in _lines(out / "answers.jsonl")}
    ctrl = {c: {r["question_id"]: r["text"] for r in _lines(out / f"answers-{c}.jsonl")}
            for c in ("shuffled", "blank", "noimage")}
    assert set(real) == set(range(1, 7)) and all(set(a) == set(real) for a in ctrl.values())
    assert len(set(real.values())) == 3  # one answer per image: the checks below can tell images apart
    # shuffled: question i is asked about the next image (img0 -> img1 -> img2 -> img0): the real answer there
    image_of = {i + 1: i % 3 for i in range(6)}
    for q, im in image_of.items():
        twin = next(p for p, j in image_of.items() if j == (im + 1) % 3)
        assert ctrl["shuffled"][q] == real[twin]
    # the same text with the same blank image, or with none: one answer each
    assert len(set(ctrl["blank"].values())) == 1 and len(set(ctrl["noimage"].values())) == 1
    with Image.open(out / "blank.png") as blank:
        assert blank.size == (32, 32) and blank.getpixel((5, 5)) == (122, 116, 104)  # CLIP's mean colour, 32 px
    summary = json.loads((out / "summary.json").read_text())
    controls = summary["controls"]
    assert controls["real"] == pytest.approx(summary["figures"]["f1_mean"]) and controls["n"] == 6
    for c in ("shuffled", "blank", "noimage"):
        entry = controls["controls"][c]
        assert entry["difference"] == pytest.approx(controls["real"] - entry["score"])
        lo, hi = entry["difference_ci95"]
        assert lo <= entry["difference"] + 1e-9 and entry["difference"] <= hi + 1e-9
    md = (out / "summary.md").read_text()
    assert "Image-reliance controls (6 paired units)." in md and "| blank |" in md
    assert re.search(r"- The model's F1 \(mean over splits\) is [\d.]+ with the image and [\d.]+ with another image",
                     md)


def test_a_killed_run_goes_on_where_it_stopped(setup, tmp_path):
    root, ck, images = setup
    argv = ["eval", "pope", "--model", str(ck), "--questions", str(_pope(tmp_path / "coco_pope_random.json")),
            "--images", str(images), "--out", str(tmp_path / "out"), "--max-new-tokens", "3", "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    path = tmp_path / "out" / "answers.jsonl"
    whole = path.read_bytes()
    first_two = b"".join(whole.splitlines(keepends=True)[:2])
    path.write_bytes(first_two + b'{"question_id": 3, "te')  # killed while writing the third answer
    before = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert main(argv) == 0
    assert path.read_bytes().startswith(first_two)  # the answers written before are kept
    assert [r["question_id"] for r in _lines(path)] == [1, 2, 3, 4, 5, 6]  # each once, the torn one asked again
    assert path.read_bytes() == whole  # greedy: the same answers as the uninterrupted run
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == before


def test_shapes_with_controls(setup, tmp_path):
    from vistune.data.synth import render_world

    root, ck, _ = setup
    render_world(tmp_path / "world", 3, seed=3, progress=False)
    bench = _lines(tmp_path / "world" / "bench.jsonl")
    picked = [q for im in sorted({q["image"] for q in bench}) for q in [q for q in bench if q["image"] == im][:2]]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(q) + "\n" for q in picked))
    out = tmp_path / "out"
    assert main(["eval", "shapes", "--model", str(ck), "--bench", str(tmp_path / "bench.jsonl"), "--images",
                 str(tmp_path / "world" / "images"), "--out", str(out), "--controls",
                 "shuffled,noimage", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and set(report["controls"]["controls"]) == {"shuffled", "noimage"}
    for c, variant in (("shuffled", "shuffled_images"), ("noimage", "no_image")):
        own = json.loads((out / "controls" / c / "report.json").read_text())
        assert report["controls"]["controls"][c]["score"] == pytest.approx(own["overall"])
        assert f"variant `{variant}`" in (out / "controls" / c / "report.md").read_text()
    assert "Image-reliance controls" in (out / "report.md").read_text()


def test_scienceqa_controls_ask_only_the_image_questions_again(setup, tmp_path):
    root, ck, _ = setup
    fix = Path(__file__).parent / "fixtures" / "scienceqa"
    problems = json.loads((fix / "problems.json").read_text())
    images = tmp_path / "images"
    for k, (pid, p) in enumerate(problems.items()):
        if p["image"]:
            (images / pid).mkdir(parents=True)
            Image.new("RGB", (32, 32), COLOURS[k % 3]).save(images / pid / "image.png")
    out = tmp_path / "out"
    assert main(["eval", "scienceqa", "--problems", str(fix / "problems.json"), "--pid-splits",
                 str(fix / "pid_splits.json"), "--model", str(ck), "--images", str(images), "--out", str(out),
                 "--controls", "blank,noimage", "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]) == 0
    asked = {str(r["question_id"]) for r in _lines(out / "answers.jsonl")}
    with_image = {pid for pid in asked if problems[pid]["image"]}
    assert 0 < len(with_image) < len(asked)
    assert {str(r["question_id"]) for r in _lines(out / "answers-noimage.jsonl")} == with_image
    report = json.loads((out / "report.json").read_text())
    assert report["controls"]["real"] == pytest.approx(report["methods"]["model"]["avg"])
    assert set(report["controls"]["controls"]) == {"blank", "noimage"}


def test_llava_bench_controls_are_judged_too(setup, tmp_path):
    root, ck, _ = setup
    fix = Path(__file__).parent / "fixtures" / "llava_bench"
    questions = _lines(fix / "questions.jsonl")[:3]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    images = tmp_path / "images"
    images.mkdir()
    for k, name in enumerate(sorted({q["image"] for q in questions})):
        Image.new("RGB", (32, 32), COLOURS[k % 3]).save(images / name)
    server = FakeTeacher({}, responder=lambda messages: "8 6\nfine", key_of=lambda messages: "j")
    url = server.start()
    try:
        assert main(["eval", "llava-bench", "--questions", str(tmp_path / "q.jsonl"), "--context",
                     str(fix / "context.jsonl"), "--references", str(fix / "references.jsonl"), "--model", str(ck),
                     "--images", str(images), "--out", str(tmp_path / "out"), "--controls", "noimage",
                     "--judge-base-url", url, "--judge-model", "j", "--max-new-tokens", "3", "--device", "cpu",
                     "--no-progress", "--retry-base-delay", "0.01"]) == 0
    finally:
        server.stop()
    rows = _lines(tmp_path / "out" / "reviews.jsonl")
    assert sorted(r["id"] for r in rows) == sorted([str(q["question_id"]) for q in questions]
                                                   + [f"{q['question_id']}#control=noimage" for q in questions])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["all"]["n"] == 3  # the real answers' reviews only
    # every review scores 8 and 6: 75 with the image and without, a difference of 0
    assert summary["controls"]["real"] == pytest.approx(75.0)
    assert summary["controls"]["controls"]["noimage"]["difference"] == pytest.approx(0.0)


def test_mmbench_and_mme_answer_with_the_model(setup, tmp_path):
    from test_gqa_mme_seed import _mme
    from test_mmbench_eval import write_tsv

    root, ck, _ = setup
    tsv = write_tsv(tmp_path / "mmbench.tsv")
    out = tmp_path / "mmb"
    assert main(["eval", "mmbench", "--model", str(ck), "--questions", str(tsv), "--out", str(out), "--controls",
                 "shuffled", "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]) == 0
    assert len(_lines(out / "answers.jsonl")) == 9 and len(_lines(out / "answers-shuffled.jsonl")) == 9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures"]["passes"] == 9 and "shuffled" in summary["controls"]["controls"]
    mme = tmp_path / "MME"
    _mme(mme)
    assert main(["eval", "mme", "--model", str(ck), "--questions", str(mme), "--out", str(tmp_path / "mme"),
                 "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]) == 0
    figures = json.loads((tmp_path / "mme" / "summary.json").read_text())["figures"]
    assert set(figures["by_subtask"]) == {"existence", "artwork", "code_reasoning"}
    assert len(_lines(tmp_path / "mme" / "answers.jsonl")) == 12
