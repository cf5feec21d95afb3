"""A few stage-1 steps on the real default parts (EfficientNet-Lite0 + SmolLM2-135M): the loss goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vistune
from vistune.config import load_run_config
from vistune.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_stage1_on_default_parts_lowers_the_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default config's data paths are relative to the repository
    run = load_run_config(ROOT / "configs" / "default_stage1.yaml",
                          [f"output_dir={tmp_path / 'run'}", "train.max_steps=5", "train.save_every=null",
                           "data.num_workers=0", "train.warmup_ratio=0", "train.schedule=constant"])
    final = train(run, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5
    assert losses[-1] < 0.8 * losses[0], losses
    model = vistune.load(final)
    assert model.num_image_tokens == 49 and model.config.feature_norm == "token"
    before = vistune.model.vlm.VisionLanguageModel.build(run.model)
    assert torch.equal(before.llm.model.embed_tokens.weight, model.llm.model.embed_tokens.weight)
