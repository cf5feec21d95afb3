"""`vistune ablate`: refusals, the paired bootstrap, the report, and (slow) a quick study end to end that a
second run skips."""

import json

import numpy as np
import pytest

from vistune.ablate import (
    ABLATIONS,
    AblationError,
    ablation_report,
    check_request,
    paired_difference,
    run_ablations,
    sign_reproduced,
    summarise,
)
from vistune.cli import main
from vistune.cli.demo import ABLATION_NAMES
from vistune.eval.report import write_report


def test_unknown_names_and_seeds_below_one_are_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["ablate", "--out", str(out), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--seeds must be at least 1, got 0" in err
    assert main(["ablate", "--out", str(out), "--only", "last_layer", "no_such", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown ablation 'no_such'" in err
    assert "choose from no_instruction_tuning, no_pretraining, last_layer, conversation_only, answer_first" in err
    assert not out.exists()  # nothing started
    with pytest.raises(AblationError, match="at least 1"):
        run_ablations(out, seeds=-2)
    assert check_request(1, ["answer_first", "last_layer"]) == ["last_layer", "answer_first"]  # the study's order
    assert check_request(2, None) == list(ABLATIONS)
    assert ABLATION_NAMES == tuple(ABLATIONS)  # the help lists exactly the ablations


def test_paired_bootstrap_on_hand_made_scores():
    full = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    worse = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])  # loses two questions, gains none
    diff, (lo, hi) = paired_difference(full, worse)
    assert diff == pytest.approx(-20.0)
    assert -60 < lo < diff < hi <= 0  # no resample can gain: the interval never goes above zero
    assert sign_reproduced(diff, (lo, hi)) in ("yes", "same sign, not significant")
    # identical scores: exactly zero with a zero-width interval, and the paper's sign is not reproduced
    assert paired_difference(full, full) == (0.0, (0.0, 0.0)) and sign_reproduced(0.0, (0.0, 0.0)) == "no"
    # losing every answer of an all-right model: -100 points with no spread
    assert paired_difference(np.ones(10), np.zeros(10)) == (-100.0, (-100.0, -100.0))
    # losing six of ten: -60, the interval below zero (each question loses 100 or 0 points); reproduced
    diff, ci = paired_difference(full, np.zeros(10))
    assert diff == pytest.approx(-60.0) and -100 <= ci[0] < -60 < ci[1] < 0 and sign_reproduced(diff, ci) == "yes"
    # pairing: the same accuracy on different questions is no difference on average but a wide interval
    a, b = np.array([1, 0] * 50), np.array([0, 1] * 50)
    d, (lo, hi) = paired_difference(a, b)
    assert d == 0.0 and lo < -10 and hi > 10
    # seeds: each question's correctness is averaged over seeds before resampling
    d, _ = paired_difference(np.array([[1, 1], [1, 1]]), np.array([[1, 0], [0, 0]]))
    assert d == pytest.approx(-75.0)
    with pytest.raises(ValueError, match="same shape"):
        paired_difference(np.ones((2, 3)), np.ones((1, 3)))
    assert sign_reproduced(-3.0, (-8.0, 1.0)) == "same sign, not significant" and sign_reproduced(2.0, (1, 3)) == "no"


def _eval(correct: list[int], types: list[str]) -> dict:
    by_type = {t: 100.0 * np.mean([c for c, tt in zip(correct, types) if tt == t]) for t in dict.fromkeys(types)}
    return {"overall": 100.0 * np.mean(correct), "by_type": by_type, "n": len(correct), "correct": correct}


def test_the_report_states_mean_std_difference_interval_and_sign(tmp_path):
    types = ["colour"] * 4 + ["count"] * 4
    bench = [{"id": str(i)} for i in range(8)]
    evals = {"full": {0: _eval([1, 1, 1, 1, 1, 1, 0, 0], types), 1: _eval([1, 1, 1, 1, 1, 0, 0, 0], types)},
             "last_layer": {0: _eval([1, 1, 1, 1, 1, 1, 1, 0], types), 1: _eval([1, 1, 1, 1, 1, 1, 0, 0], types)}}
    summary = summarise(evals, bench, "quick")
    last = summary["variants"]["last_layer"]
    assert last["overall"] == {"mean": pytest.approx(81.25), "std": pytest.approx(8.8388, abs=1e-3)}
    assert last["difference_to_full"] == pytest.approx(12.5) and last["sign_reproduced"] == "no"
    assert last["paper"].startswith("ScienceQA 90.92 -> 89.96") and last["seeds"]["1"]["by_type"]["count"] == 50.0
    assert summary["variants"]["full"]["by_type"]["count"]["mean"] == pytest.approx(37.5)
    paths = write_report(ablation_report(summary), tmp_path, json_name="ablations.json", md_name="ablations.md",
                         png_name="ablations.png")
    assert json.loads(paths["json"].read_text())["variants"]["last_layer"]["ci95"][0] <= 12.5
    md = paths["md"].read_text()
    assert "last_layer: the paper's sign (lower than full) is not reproduced (no; +12.5 points)" in md
    assert "| last_layer | 81.2 ± 8.8 | 12.5 | [" in md and "| full | 68.8 ± 8.8 | – | – |" in md
    assert "| last_layer | 1 | 75.0 | 100.0 | 50.0 |" in md  # each run
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_quick_study_end_to_end_and_a_second_run_skips_every_step(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["ablate", "--out", str(out), "--quick", "--seeds", "1", "--only", "no_instruction_tuning"]) == 0
    data = json.loads((out / "ablations.json").read_text())
    assert set(data["variants"]) == {"full", "no_instruction_tuning"} and data["seeds"] == 1
    ablated = data["variants"]["no_instruction_tuning"]
    assert set(ablated["seeds"]["0"]["by_type"]) == {"colour", "shape", "count", "existence", "absolute_position",
                                                      "relative_position"}
    assert ablated["sign_reproduced"] in ("yes", "same sign, not significant", "no")
    lo, hi = ablated["ci95"]
    assert lo <= ablated["difference_to_full"] <= hi
    assert (out / "ablations.md").read_text().count("no_instruction_tuning") >= 2
    assert (out / "ablations.png").stat().st_size > 0
    assert (out / "stage2" / "final" / "config.json").exists()  # seed 0 of the full recipe is the demo in OUT
    assert not (out / "runs" / "seed0" / "last_layer").exists()  # only what was asked
    capsys.readouterr()
    assert main(["ablate", "--out", str(out), "--quick", "--seeds", "1", "--only", "no_instruction_tuning"]) == 0
    log = capsys.readouterr().out
    assert "[run ]" not in log and log.count("[skip]") == 8  # 3 world/data + stage-2 data + 2 trainings + 2 evals
    assert json.loads((out / "ablations.json").read_text()) == data
