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


def _tiny_bench_peer(tmp_path, samples: int):
    """bench_peer's module, a tiny vistune model, its benchmark data, dataset, the peer and its image token."""
    from vistune.data.dataset import LlavaDataset
    from vistune.model.tiny import tiny_vlm

    bench = _module("bench_peer")
    model = tiny_vlm("clip", "mlp2x_gelu")
    data = bench.make_data(tmp_path / "data", samples)
    dataset = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=512)
    image_token_id = bench.peer_image_token(model.tokenizer, dataset)
    return bench, model, data, dataset, bench.build_peer(model, image_token_id), image_token_id


def test_bench_peer_inference_runs_both_sides_on_the_same_tiny_model(tmp_path):
    """The peer is transformers' Llava holding vistune's weights: same loss, same greedy tokens, and every
    inference figure (first token, decode, fourth-turn follow-up) is measured."""
    import torch

    bench, model, _, dataset, peer, image_token_id = _tiny_bench_peer(tmp_path, 4)
    assert bench.check_same_model(model, peer, dataset, image_token_id) < 1e-4
    with torch.no_grad():
        result = bench.inference(model, peer, image_token_id, reps=1, new_tokens=4)
    assert result["same_tokens"] is True
    assert result["prompt_positions"] > model.num_image_tokens
    for key in ("v_ttft", "p_ttft", "v_follow", "p_follow", "v_reprocess"):
        assert 0 < result[key] < 60, key
    assert result["v_decode"] > 0 and result["p_decode"] > 0


def test_bench_prefix_answers_the_same_both_ways_on_a_tiny_model(capsys):
    """The kept prompt start covers the system turn and changes no answer (the script exits if answers differ)."""
    result = _module("bench_prefix").main(["--tiny", "--questions", "8", "--rounds", "1"])
    assert 8 <= result["shared_positions"] < result["prompt_positions"]
    assert set(result["rate"]) == {"whole prompt", "kept prompt start"} and all(v > 0 for v in result["rate"].values())
    assert "answers identical" in capsys.readouterr().out


def test_gpu_check_compares_every_setting_with_the_cpu(tmp_path, capsys):
    gpu_check = _module("gpu_check")
    summary = gpu_check.run(["--device", "cpu", "--steps", "2", "--settings", "cuda_fp32,cuda_fp32_plain,cuda_stage1",
                             "--json", str(tmp_path / "check.json")])
    assert set(summary["results"]) == {"cpu_fp32", "cuda_fp32", "cuda_fp32_plain", "cuda_stage1"}
    assert summary["failures"] == []
    assert summary["results"]["cuda_fp32_plain"]["max_rel_diff_to_cpu"] <= 1e-4
    assert all(len(r["losses"]) == 2 for r in summary["results"].values())
    assert "all CUDA settings agree" in capsys.readouterr().out


def test_gpu_check_fails_when_a_setting_differs_from_the_cpu(tmp_path, monkeypatch):
    gpu_check = _module("gpu_check")
    # a learning rate ten times the reference's changes the second step's loss: the check must report it
    monkeypatch.setitem(gpu_check.SETTINGS, "cuda_fp32", (2, ["train.device=cuda", "train.lr=0.01"]))
    with pytest.raises(SystemExit) as stop:
        gpu_check.run(["--device", "cpu", "--steps", "2", "--settings", "cuda_fp32"])
    assert stop.value.code == 1
    with pytest.raises(SystemExit, match="unknown setting"):
        gpu_check.run(["--device", "cpu", "--settings", "cuda_fp64"])


def test_bench_decode_compares_the_same_answers_on_a_tiny_model(capsys):
    """Both sides decode the same greedy tokens and answer the question file alike; every figure is measured."""
    result = _module("bench_decode").main(["--tiny", "--rounds", "1", "--questions", "6", "--batch", "2",
                                           "--new-tokens", "6", "--eval-tokens", "3"])
    assert result["same_tokens"] is True
    assert result["eval_same_answers"] == result["eval_questions"] == 6
    assert result["bound_tokens_per_s"] > 0 and result["fraction_of_bound"]["vistune"] > 0
    assert min(result["ttft_again_ms"].values()) > 0 and result["eval_ratio"] > 0
    assert "avx2:" in result["machine"] and "precision fp32" in result["machine"]
    assert "ratios vs generate" in capsys.readouterr().out


def test_bench_peer_training_rounds_split_each_step_into_phases(tmp_path):
    """One epoch each of vistune's loop and the naive peer on a tiny model: tokens/s, and a time split per real
    token whose phases add up to the timed steps (the peer's exactly, vistune's from metrics.jsonl)."""
    import dataclasses

    from vistune.model.checkpoint import save_checkpoint

    bench, model, data, dataset, peer, image_token_id = _tiny_bench_peer(tmp_path, 8)
    rate, _, split = bench.peer_round(peer, dataset, 2, 2, 1e-3, False, image_token_id, model.tokenizer.pad_token_id)
    assert list(split) == ["data", "forward", "backward", "optimizer", "bookkeeping"]
    assert rate > 0 and split["forward"] > 0 and split["backward"] > 0
    assert sum(split.values()) == pytest.approx(1 / rate, rel=1e-6)  # laps tile the timed steps

    init = save_checkpoint(model, tmp_path / "init")
    base = [f"model.{k}={v}" for k, v in dataclasses.asdict(model.config).items() if v is not None]
    base += [f"init_from={init}", f"data.path={data}", f"data.image_folder={data.parent / 'images'}",
             "train.epochs=1", "train.global_batch_size=2", "train.micro_batch_size=2", "train.save_every=null",
             "train.precision=fp32", f"train.feature_cache_dir={tmp_path / 'cache'}"]
    rate, _, first, split = bench.vistune_round(base, 2, tmp_path / "run", ["train.lr=1e-3"])
    assert rate > 0 and first > 0 and split["forward"] > 0 and split["backward"] > 0
    assert sum(split.values()) == pytest.approx(1 / rate, rel=0.25)  # per-step records vs the records' clock
    assert not (tmp_path / "run").exists()  # each round's run is removed (rounds x modes would fill the disk)
