"""The GPU benchmark's step at toy size on CPU: it trains, counts FLOPs as documented and reports MFU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_mfu_toy_runs_on_cpu(tmp_path, capsys):
    gpu_mfu = _module("gpu_mfu")
    result = gpu_mfu.run(["--toy", "--steps", "1", "--rows", "2", "--json", str(tmp_path / "mfu.json")])
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    assert result["samples_per_step"] >= result["rows_per_step"] >= 1
    assert "MFU" in capsys.readouterr().out
    assert (tmp_path / "mfu.json").is_file()


def test_gpu_mfu_flop_count_matches_the_formula():
    gpu_mfu = _module("gpu_mfu")
    model = gpu_mfu.build(toy=True, dtype=__import__("torch").float32, attn="sdpa")
    c = model.llm.config
    d, L, V, F = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    proj = model.projector.linear_1.weight.numel() + model.projector.linear_2.weight.numel()
    n = model.num_image_tokens
    expected = 3 * (2 * (4 * d * d + 3 * d * F) * L * 100 + 2 * 100 * 100 * d * L + 2 * d * V * 30 + 2 * proj * n)
    assert gpu_mfu.step_flops(model, [100], [30]) == pytest.approx(expected)
