"""Every shipped recipe in configs/ loads, matches the paper's / LLaVA-1.5's hyperparameters, and builds its model
from tiny stand-ins of the same architectures (no download); config errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vistune.config import ConfigError, RunConfig, describe, load_run_config
from vistune.conversation import IMAGE_TOKEN_ID, Message
from vistune.model.llm import load_tokenizer
from vistune.model.tiny import tiny_llm
from vistune.model.vision import EfficientNetTower, HFVisionTower
from vistune.model.vlm import VisionLanguageModel

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(ROOT.glob("*.yaml")) + sorted(ROOT.glob("demo/*.yaml"))
CLIP_SHAPES = {"openai/clip-vit-large-patch14": (224, 14), "openai/clip-vit-large-patch14-336": (336, 14)}


def _tiny_parts(run: RunConfig):
    """A tiny tower of the recipe's kind, resolution, patch, layer and selection, and a tiny Llama."""
    m = run.model
    if m.vision_tower in CLIP_SHAPES:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        size, patch = CLIP_SHAPES[m.vision_tower]
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                               image_size=size, patch_size=patch)
        tower = HFVisionTower(CLIPVisionModel(cfg), m.vision_layer, m.vision_select)
    else:
        tower = EfficientNetTower(m.vision_tower, m.vision_layer, pretrained=False, image_size=m.image_size,
                                  select=m.vision_select)
    tokenizer = load_tokenizer("smollm2-135m-instruct")  # stands in for the recipe's tokenizer
    return tower, tiny_llm(tokenizer), tokenizer


def test_configs_are_shipped():
    names = {str(p.relative_to(ROOT)) for p in CONFIGS}
    assert {"paper_stage1.yaml", "paper_stage2.yaml", "llava15_stage1.yaml", "llava15_stage2.yaml",
            "llava15_stage2_lora.yaml", "default_stage1.yaml", "default_stage2.yaml", "demo/stage1.yaml",
            "demo/stage2.yaml", "demo/stage1_quick.yaml", "demo/stage2_quick.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads_and_builds_from_tiny_stand_ins(path):
    run = load_run_config(path, world_size=1, read_init_from=False)  # stage 2's checkpoint does not exist here
    if path.parent == ROOT and not path.name.startswith("default"):
        load_run_config(path, world_size=8, read_init_from=False)  # the recipes split exactly over 8 GPUs
    tower, llm, tokenizer = _tiny_parts(run)
    model = VisionLanguageModel.from_parts(run.model, tower, llm, tokenizer)
    expected_tokens = ({224: 256, 336: 576}[tower.image_size] if isinstance(tower, HFVisionTower)
                       else (tower.image_size // 32) ** 2)  # EfficientNet: a 7x7 grid at 224 px, 5x5 at 160
    assert model.num_image_tokens == expected_tokens
    assert model.projector.kind == run.model.projector
    assert model.image_processor.config.pad_to_square == run.model.pad_to_square
    rendered = model.renderer.render([Message("user", "<image>\nWhat is shown?"), Message("assistant", "A cat.")],
                                     num_images=1)
    assert rendered.input_ids.count(IMAGE_TOKEN_ID) == expected_tokens and rendered.num_supervised > 0
    pixels = torch.zeros(1, 3, tower.image_size, tower.image_size)
    ids = torch.tensor([rendered.input_ids])
    out = model(ids, torch.ones_like(ids), pixels, torch.tensor([rendered.labels]))
    assert torch.isfinite(out.loss)


def test_demo_runs_its_shipped_recipes(tmp_path):
    """The demo's training runs are the YAML files under configs/demo with the demo's paths, nothing else."""
    from vistune.config import to_dict
    from vistune.demo import DEMO_CONFIGS, FULL, LONG, QUICK, Demo

    assert (ROOT / "demo").resolve() == DEMO_CONFIGS  # one copy: configs/demo is the package's folder
    stage1_final = tmp_path / "stage1" / "final"
    for plan in (FULL, QUICK):
        demo = Demo(tmp_path, plan)
        demo._final = lambda stage: stage1_final
        for stage, name in ((1, plan.stage1), (2, plan.stage2)):
            paths = [f"data.path={tmp_path / 'data' / f'stage{stage}.json'}",
                     f"data.image_folder={tmp_path / 'world' / 'train' / 'images'}",
                     f"output_dir={tmp_path / f'stage{stage}'}", f"train.feature_cache_dir={tmp_path / 'feature-cache'}"]
            paths += ([f"train.projector_init_captions={tmp_path / 'world' / 'train' / 'captions.json'}"]
                      if stage == 1 else [f"init_from={stage1_final}"])
            expected = load_run_config(ROOT / "demo" / name, paths, read_init_from=False)
            assert to_dict(demo._run_config(stage)) == to_dict(expected)
    full2 = load_run_config(ROOT / "demo" / "stage2.yaml", read_init_from=False)
    assert (full2.train.max_steps, full2.train.lr, full2.train.global_batch_size) == (90, 5e-5, 16)
    # --long: the same recipe with four times the stage-2 steps (and its safety stop scaled alike), the same stage 1
    assert LONG.stage2 == FULL.stage2 and LONG.recipe(1) == FULL.recipe(1)
    long2, short2 = LONG.recipe(2), FULL.recipe(2)
    assert (long2["train"].pop("max_steps"), short2["train"].pop("max_steps")) == (360, 90)
    assert long2["train"].pop("max_minutes") == 4 * short2["train"].pop("max_minutes")
    assert long2 == short2
    runs = {}
    for plan in (FULL, LONG):
        demo = Demo(tmp_path, plan)
        demo._final = lambda stage: stage1_final
        runs[plan.name] = to_dict(demo._run_config(2))
    assert runs["long"]["train"]["max_steps"] == 360
    runs["long"]["train"].update(max_steps=90, max_minutes=runs["full"]["train"]["max_minutes"])
    assert runs["long"] == runs["full"]


def test_recipes_follow_the_papers():
    p1, p2 = (load_run_config(ROOT / f"paper_stage{i}.yaml", read_init_from=False) for i in (1, 2))
    assert (p1.train.stage, p1.train.lr, p1.train.global_batch_size, p1.train.epochs) == (1, 2e-3, 128, 1)
    assert (p2.train.stage, p2.train.lr, p2.train.global_batch_size, p2.train.epochs) == (2, 2e-5, 32, 3)
    for run in (p1, p2):
        assert run.model.vision_tower == "openai/clip-vit-large-patch14" and run.model.vision_layer == -2
        assert run.model.projector == "linear" and run.data.max_length == 2048
        assert run.train.schedule == "cosine" and run.train.warmup_ratio == 0.03 and run.train.weight_decay == 0
        assert run.train.precision == "bf16"
    assert p2.init_from == str(Path(p1.output_dir) / "final")
    l1, l2, lora = (load_run_config(ROOT / f"llava15_{n}.yaml", read_init_from=False)
                    for n in ("stage1", "stage2", "stage2_lora"))
    assert (l1.train.lr, l1.train.global_batch_size, l2.train.lr, l2.train.global_batch_size) == (1e-3, 256, 2e-5, 128)
    for run in (l1, l2, lora):
        assert run.model.projector == "mlp2x_gelu" and run.model.pad_to_square and run.train.epochs == 1
        assert run.model.vision_tower == "openai/clip-vit-large-patch14-336"
    assert lora.train.lora and (lora.train.lora_r, lora.train.lora_alpha) == (128, 256)
    assert (lora.train.lr, lora.train.peak_projector_lr) == (2e-4, 2e-5)
    d1, d2 = (load_run_config(ROOT / f"default_stage{i}.yaml", read_init_from=False) for i in (1, 2))
    assert d1.train.precision == d2.train.precision == "auto"
    assert d2.init_from == str(Path(d1.output_dir) / "final")


@pytest.mark.parametrize("overrides,message", [
    (["train.stage=3"], "train.stage must be 1 or 2"),
    (["train.lr=fast"], "train.lr: expected a number"),
    (["train.bogus=1"], "unknown config key(s) train.bogus"),
    (["model.projector=conv"], "model.projector='conv'"),
    (["train.lora=true"], "train.lora=true needs train.stage=2"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"], "not divisible"),
    (["train.precision=fp16"], "train.precision='fp16'"),
    (["data.placement=middle"], "data.placement='middle'"),
    (["init_from=runs/x", "output_dir=runs/x"], "the same directory"),
])
def test_contradictions_are_rejected_with_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, overrides)
    assert message in str(err.value)


def test_overrides_and_numbers_without_a_dot():
    run = load_run_config(None, ["train.lr=2e-3", "train.max_steps=7", "model.template=vicuna_v1"])
    assert run.train.lr == 2e-3 and run.train.max_steps == 7 and run.model.template == "vicuna_v1"


def test_every_field_is_documented():
    lines = describe(RunConfig)
    assert lines and all(line.split("\n", 1)[1].strip() for line in lines), [l for l in lines if not l.split("\n")[1].strip()]
    keys = {line.split(" = ")[0] for line in lines}
    for key in ("model.vision_tower", "model.vision_layer", "model.projector", "model.llm", "model.template",
                "data.path", "data.image_folder", "train.stage", "train.epochs", "train.max_steps", "train.lr",
                "train.global_batch_size", "train.micro_batch_size", "train.save_every", "train.seed", "train.lora",
                "init_from", "output_dir"):
        assert key in keys


@pytest.mark.parametrize("old, new", [
    ({"feature_norm": True}, ("token", "none")),
    ({"feature_norm": False, "projector_norm": True}, ("none", "rms")),
    ({"feature_standardise": True, "projector_norm": True}, ("channel", "rms")),
    ({"feature_standardise": False, "projector_norm": False}, ("none", "none")),
])
def test_old_normalisation_keys_still_load(tmp_path, old, new):
    from vistune.config import ModelConfig, from_dict

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"model": old, "train": {"projector_init": "ridge"}}))
    with pytest.warns(FutureWarning, match="deprecated config values"):
        run = load_run_config(path)
    assert (run.model.feature_norm, run.model.projector_norm) == new
    with pytest.warns(FutureWarning):  # an old checkpoint's config.json "model" section
        assert from_dict(ModelConfig, old, prefix="model.") == run.model


def test_normalisation_options_are_checked_and_described():
    with pytest.raises(ConfigError, match=r"feature_norm='layer': expected one of \['none', 'token', 'channel'\]"):
        load_run_config(None, ["model.feature_norm=layer"])
    with pytest.raises(ConfigError, match="model.projector_norm='l2'"):
        load_run_config(None, ["model.projector_norm=l2"])
    with pytest.raises(ConfigError, match="feature_standardise=true"):
        load_run_config(None, ["model.feature_norm=true", "model.feature_standardise=true"])
    text = "\n".join(describe(RunConfig))
    assert "Valid combinations" in text and "exportable: `feature_norm` `none` or" in text
