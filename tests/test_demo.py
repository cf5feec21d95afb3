"""The quick demo end to end on the real default parts (slow), that a re-run skips finished steps, and the
demo's report: steps reached against the plan, precision, target."""

import json
import re

import pytest
import yaml

from vistune.cli import main
from vistune.config import load_run_config
from vistune.demo import (
    DEMO_CONFIGS,
    FULL,
    STOPPED_EARLY,
    balanced_subset,
    demo_report,
    stage_outcome,
    summary_lines,
    target_check,
)
from vistune.eval.report import write_report
from vistune.eval.scoring import score

VARIANTS = {"stage1_only", "full", "full_in_distribution", "shuffled_images", "answer_prior"}


@pytest.mark.slow
def test_quick_demo_writes_every_variant_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == VARIANTS
    for name, r in report["variants"].items():
        assert r["n"] == 36, name
        assert 0.0 <= r["overall"] <= 100.0
        assert set(r["by_type"]) == {"colour", "shape", "count", "existence", "absolute_position",
                                     "relative_position"}
    assert (out / "report.md").exists() and (out / "report.png").stat().st_size > 0
    assert (out / "stage2" / "final" / "config.json").exists()
    # the warm start read every caption of the training world, stage 1 its one-per-image records
    stage1 = yaml.safe_load((out / "stage1" / "config.yaml").read_text())
    assert stage1["train"]["projector_init_captions"] == str(out / "world" / "train" / "captions.json")
    assert yaml.safe_load((out / "stage2" / "config.yaml").read_text())["train"]["projector_init_captions"] is None
    chats = (out / "chats.md").read_text()
    assert chats.count("ASSISTANT") == 2 * 3  # two chats of three questions
    assert re.search(r"Descriptions that name every object with its colour: [0-2] of 2; counts right: [0-2] of 2",
                     chats)
    capsys.readouterr()
    # a second run finds every step done and redoes none
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    log = capsys.readouterr().out
    assert log.count("[skip]") == 7 and "[run ]" not in log
    # the report says how far each stage got and in which precision, and whether the target is met
    assert report["stopped_early"] is False
    assert {k: (v["steps"], v["planned_steps"]) for k, v in report["training"].items()} == {
        "stage1": (3, 3), "stage2": (4, 4)}
    assert report["training"]["stage2"]["precision"] in ("bf16 autocast", "fp32")
    assert isinstance(report["target"]["met"], bool) and "target" in log and "CPU:" in log
    assert STOPPED_EARLY.upper() not in (out / "report.md").read_text()


def test_balanced_subset_takes_every_type_evenly():
    bench = [{"id": f"{t}{i}", "type": t} for t in "abc" for i in range(10)] + [{"id": "d0", "type": "d"}]
    picked = balanced_subset(bench, 13)
    counts = {t: sum(q["type"] == t for q in picked) for t in "abcd"}
    assert counts == {"a": 4, "b": 4, "c": 4, "d": 1}
    assert len({q["id"] for q in picked}) == 13


def test_single_turns_ask_every_question_with_the_image():
    from vistune.demo import single_turns

    record = {"id": "7-conversation-0", "image": "7.png", "metadata": {"type": "conversation"}, "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the star?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Is the star above or below the circle?<image>"}, {"from": "gpt", "value": "above"}]}
    turns = single_turns(record)
    assert [t["id"] for t in turns] == ["7-conversation-0-0", "7-conversation-0-1", "7-conversation-0-2"]
    assert [[m["value"] for m in t["conversations"]] for t in turns] == [
        ["<image>\nWhat color is the star?", "red"], ["<image>\nHow many circles are there?", "2"],
        ["<image>\nIs the star above or below the circle?", "above"]]
    assert all(t["image"] == "7.png" and t["metadata"] == record["metadata"] for t in turns)


BENCH = [{"id": f"{t}{i}", "type": t, "answer": a} for t, answers in
         (("colour", ["red", "blue"]), ("count", ["2", "3"])) for i, a in enumerate(answers)]


def _variants(full: dict, shuffled: dict, prior: dict) -> dict:
    return {"full": score(full, BENCH), "shuffled_images": score(shuffled, BENCH), "answer_prior": score(prior, BENCH)}


def _fake_final(path, step: int, flops: float | None = None):
    path.mkdir(parents=True)
    training = {"stage": 2, "step": step, **({} if flops is None else {"flops": flops})}
    (path / "config.json").write_text(json.dumps({"model_type": "vistune", "training": training}))
    return str(path)


def test_a_stage_stopped_by_its_time_budget_is_reported_loudly(tmp_path):
    run = load_run_config(DEMO_CONFIGS / FULL.stage2, read_init_from=False)
    planned = run.train.max_steps
    reached = planned - 12
    stopped = stage_outcome({"model": _fake_final(tmp_path / "s2", reached, 40.25e12), "precision": "fp32"}, run)
    assert (stopped["steps"], stopped["planned_steps"], stopped["stopped_early"]) == (reached, planned, True)
    whole = stage_outcome({"model": _fake_final(tmp_path / "s1", planned, 9.5e12), "precision": "fp32"}, run)
    assert whole["stopped_early"] is False
    variants = _variants({"colour0": "red", "colour1": "blue", "count0": "2", "count1": "3"},
                         {"colour0": "red", "colour1": "red", "count0": "2", "count1": "2"}, {})
    report = demo_report(variants, {"stage1": whole, "stage2": stopped}, "Test CPU (avx2; no native bf16)")
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["stopped_early"] is True and data["training"]["stage2"]["steps"] == reached
    assert data["training"]["stage2"]["planned_steps"] == planned and data["cpu"].startswith("Test CPU")
    md = paths["md"].read_text()
    attention = md.split("**Attention**")[1].split("|")[0]
    assert f"{STOPPED_EARLY.upper()}**: stage2 ran {reached} of {planned} planned steps" in attention
    assert STOPPED_EARLY.upper() in md.splitlines()[0] and STOPPED_EARLY.upper() in report.chart.title
    assert f"| stage2 | {reached} | {planned} | 40.2 | fp32 |" in md and "evaluation in fp32" in md
    # the training compute: both stages' model FLOPs, in report.json and report.md
    assert data["training_tflop"] == pytest.approx(49.75) and "Training compute: 49.8 TFLOP" in md
    assert "training compute: 49.8 TFLOP" in "\n".join(summary_lines(data))
    unknown = stage_outcome({"model": _fake_final(tmp_path / "old", planned), "precision": "fp32"}, run)
    assert demo_report(variants, {"stage1": whole, "stage2": unknown}, "cpu").data["training_tflop"] is None
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    banner = summary_lines(data)[0]
    assert banner.startswith("!!!") and f"stage2 stopped at step {reached}" in banner and STOPPED_EARLY.upper() in banner
    # the same figures from a whole run carry no warning
    clean = demo_report(variants, {"stage1": whole, "stage2": whole}, "cpu")
    assert clean.data["stopped_early"] is False and STOPPED_EARLY.upper() not in " ".join(clean.warnings)


def test_target_needs_25_points_over_both_controls_and_10_over_shuffled_on_every_type():
    # full 100/100; shuffled 50/50; prior 0/0: margins 50 overall, 50 per type: met
    variants = _variants({"colour0": "red", "colour1": "blue", "count0": "2", "count1": "3"},
                         {"colour0": "red", "count0": "2"}, {})
    t = target_check(variants)
    assert t["met"] and t["overall_margin"] == {"shuffled_images": 50.0, "answer_prior": 100.0}
    # shuffled gets count right too: count margin 0 < 10, overall margin 25 (still enough)
    variants = _variants({"colour0": "red", "colour1": "blue", "count0": "2", "count1": "3"},
                         {"colour0": "red", "count0": "2", "count1": "3"}, {})
    t = target_check(variants)
    assert not t["met"] and t["types_below_target"] == ["count"] and t["overall_margin"]["shuffled_images"] == 25.0
    report = demo_report(variants, {}, "cpu")
    assert report.warnings[0].startswith("target not met") and "count" in report.warnings[0]
    assert any(r[0] == "full - shuffled_images, count" and r[-1] == "NO" for r in report.tables[-2].rows)


def test_demo_precision_and_seed_replace_both_recipes_and_retrain(tmp_path):
    from dataclasses import replace

    from vistune.config import ConfigError
    from vistune.demo import run_demo

    # the recipes train in fp32 (on every CPU: the same figures up to the kernels' rounding) unless asked otherwise
    assert [FULL.recipe(k)["train"]["precision"] for k in (1, 2)] == ["fp32", "fp32"]
    auto = replace(FULL, precision="auto")
    assert [auto.recipe(k)["train"]["precision"] for k in (1, 2)] == ["auto", "auto"]
    seeded = replace(FULL, seed=2)
    assert [seeded.recipe(k)["train"]["seed"] for k in (1, 2)] == [FULL.recipe(k)["train"]["seed"] + 2
                                                                  for k in (1, 2)]
    # a stage's step params hold its recipe, so a run with another precision or seed does not skip training
    assert auto.recipe(2) != FULL.recipe(2) and seeded.recipe(1) != FULL.recipe(1)
    with pytest.raises(ConfigError, match="fp16"):
        run_demo(tmp_path / "demo", precision="fp16")
    with pytest.raises(ConfigError, match="--quick or --long"):
        run_demo(tmp_path / "demo", quick=True, long=True)
    with pytest.raises(ConfigError, match="seed=-1"):
        run_demo(tmp_path / "demo", seed=-1)
    assert not (tmp_path / "demo").exists()
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "demo"), "--precision", "fp16"])


def test_seeds_report_gives_mean_and_std_per_variant_type_and_margin(tmp_path):
    from vistune.demo import seed_dir, seeds_report

    def one(full: float, shuffled: float, prior: float) -> dict:
        def by(x: float) -> dict:
            return {"colour": x, "count": x - 10.0}

        return {"variants": {"full": {"overall": full, "by_type": by(full)},
                             "shuffled_images": {"overall": shuffled, "by_type": by(shuffled)},
                             "answer_prior": {"overall": prior, "by_type": by(prior)}},
                "cpu": "Test CPU", "stopped_early": False}

    report = seeds_report([one(60.0, 30.0, 25.0), one(64.0, 32.0, 25.0), one(68.0, 40.0, 25.0)])
    full = report.data["variants"]["full"]
    assert full["overall"]["mean"] == pytest.approx(64.0) and full["overall"]["std"] == pytest.approx(4.0)
    assert full["count"]["mean"] == pytest.approx(54.0)
    over_shuffled = report.data["margins"]["shuffled_images"]["overall"]
    assert over_shuffled["mean"] == pytest.approx(30.0)  # margins 30, 32, 28
    assert over_shuffled["std"] == pytest.approx(2.0)
    # the target is checked on the means: +30 over shuffled but +39 over the prior and +30 per type: met
    assert report.data["target"]["met"] is True
    assert report.data["per_seed"][2]["full"] == 68.0
    paths = write_report(report, tmp_path, json_name="seeds.json", md_name="seeds.md", png_name="seeds.png")
    md = paths["md"].read_text()
    assert "64.0 ± 4.0" in md and "30.0 ± 2.0" in md and paths["png"].read_bytes()[:4] == b"\x89PNG"
    low = seeds_report([one(50.0, 45.0, 25.0), one(52.0, 45.0, 25.0)])
    assert low.data["target"]["met"] is False
    assert seed_dir(tmp_path, 0) == tmp_path and seed_dir(tmp_path, 2) == tmp_path / "seeds" / "seed-2"


def test_demo_refuses_a_seed_together_with_seeds(tmp_path):
    from vistune.config import ConfigError
    from vistune.demo import run_demo

    with pytest.raises(ConfigError, match="not both"):
        run_demo(tmp_path / "demo", seed=1, seeds=3)
    with pytest.raises(ConfigError, match="at least 1 seed"):
        run_demo(tmp_path / "demo", seeds=0)
    assert not (tmp_path / "demo").exists()
