"""The quick demo end to end on the real default parts, and that a re-run skips finished steps."""

import json

import pytest
import yaml

from vistune.cli import main
from vistune.demo import balanced_subset

pytestmark = pytest.mark.slow

VARIANTS = {"stage1_only", "full", "full_in_distribution", "shuffled_images", "answer_prior"}


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
    assert "ASSISTANT" in chats
    capsys.readouterr()
    # a second run finds every step done and redoes none
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    log = capsys.readouterr().out
    assert log.count("[skip]") == 7 and "[run ]" not in log


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
