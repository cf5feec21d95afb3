"""The quick demo end to end on the real default parts, and that a re-run skips finished steps."""

import json

import pytest

from vistune.cli import main
from vistune.demo import balanced_subset

pytestmark = pytest.mark.slow

VARIANTS = {"stage1_only", "full", "shuffled_images", "answer_prior"}


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
