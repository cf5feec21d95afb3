"""The demo recipe's parts: model FLOPs counted by the training loop, learned image positions, grounded captions,
balanced stage-2 conversations, and the learning-curve harness."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from vistune.config import ConfigError, ModelConfig
from vistune.conversation import IGNORE_INDEX
from vistune.data.annotations import ImageContext, Instance
from vistune.data.world import QUESTION_TYPES, SHORT_ANSWER_INSTRUCTION
from vistune.datagen.pretrain import grounded_caption
from vistune.model.checkpoint import load_checkpoint, read_config, save_checkpoint
from vistune.model.export import export_blockers
from vistune.model.projector import Projector, grid_layout
from vistune.model.tiny import tiny_vlm
from vistune.train.flops import FlopCounter
from vistune.train.loop import TrainHooks, train
from vistune.train.tiny import tiny_run_config, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ FLOPs


def test_flop_counter_counts_each_part_by_hand():
    model = tiny_vlm()
    c = model.llm.config
    counter = FlopCounter.of(model)
    d, L, V, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    kv = d // c.num_attention_heads * c.num_key_value_heads
    assert counter.linear_per_token == 2 * L * (2 * d * d + 2 * d * kv + 3 * d * inter)
    assert counter.projector_params == model.projector.linear_1.weight.numel()
    lengths, sup, img = [10, 30], 7, 2 * model.num_image_tokens
    linear = counter.linear_per_token * 40
    attn = 2 * d * L * (10 * 10 + 30 * 30)
    head = 2 * sup * d * V
    proj = 2 * img * counter.projector_params
    assert counter.step(lengths, sup, img, stage=2) == 3 * (linear + attn + head + proj)
    assert counter.step(lengths, sup, img, stage=1) == 2 * linear + 3 * attn + 2 * head + 2 * proj
    # per-sample attention: one 40-token sample costs more than two of 10 and 30
    assert counter.step([40], sup, img, 2) > counter.step(lengths, sup, img, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    return save_checkpoint(tiny_vlm(), root / "init"), write_tiny_data(root / "data", n=8)


def test_the_loop_counts_every_sample_once_per_epoch_and_resumes_the_count(tiny, tmp_path):
    from vistune.data.dataset import LlavaDataset

    ckpt, data = tiny
    # one epoch of 2 global batches of 4 (micro-batches of 2, packed), stage 2
    run = tiny_run_config(ckpt, data, tmp_path / "run", stage=2, max_steps=2, save_every=1)
    seen = []
    final = train(run, progress=False, hooks=TrainHooks(at_compute=lambda step, flops, m: seen.append(flops)))
    model = load_checkpoint(final)
    counter = FlopCounter.of(model)
    ds = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=256)
    expected = 0.0
    for i in range(len(ds)):
        s = ds[i]
        expected += counter.step([len(s.input_ids)], int((s.labels[1:] != IGNORE_INDEX).sum()),
                                 len(s.images) * model.num_image_tokens, stage=2)
    assert len(seen) == 2 and 0 < seen[0] < seen[1]
    assert seen[1] == pytest.approx(expected, rel=1e-12)
    assert read_config(final)["training"]["flops"] == pytest.approx(expected, rel=1e-12)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_flops"] for m in metrics] == pytest.approx(seen)
    # a run killed after step 1 and resumed ends with the same count
    run2 = tiny_run_config(ckpt, data, tmp_path / "run2", stage=2, max_steps=2, save_every=1)

    def kill(step, model):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(run2, progress=False, hooks=TrainHooks(after_step=kill))
    resumed = train(run2, progress=False)
    assert read_config(resumed)["training"]["flops"] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ positions


def test_learned_image_positions_start_at_zero_shift_tokens_by_cell_and_survive_a_checkpoint(tmp_path):
    plain = tiny_vlm()
    cfg = ModelConfig(**{**plain.config.__dict__, "image_position": "learned_2d"})
    torch.manual_seed(0)
    model = type(plain).from_parts(cfg, plain.vision_tower, plain.llm, plain.tokenizer)
    model.projector.load_state_dict({**plain.projector.state_dict(), **{
        k: v for k, v in model.projector.state_dict().items() if k.endswith("_embed")}})
    features = torch.randn(2, model.num_image_tokens, model.vision_tower.hidden_size)
    assert torch.equal(model.projector(features), plain.projector(features))  # zero vectors change nothing
    side = model.projector.grid_side
    assert side * side == model.num_image_tokens
    with torch.no_grad():
        model.projector.row_embed.normal_()
        model.projector.col_embed.normal_()
    moved = model.projector(features) - plain.projector(features)  # (2, side², D)
    r, c = 1, side - 1
    expected = model.projector.row_embed[r] + model.projector.col_embed[c]
    assert torch.allclose(moved[:, r * side + c], expected.expand(2, -1), atol=1e-6)
    # the vectors train with the projector (stage 1) and load back
    assert model.projector.row_embed.requires_grad
    path = save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.projector.row_embed, model.projector.row_embed)
    assert torch.allclose(loaded.projector(features), model.projector(features))
    assert any("model.image_position=learned_2d" in b for b in export_blockers(read_config(path)))


def test_image_positions_get_their_own_learning_rate_group():
    from vistune.config import TrainConfig
    from vistune.train.optim import param_groups, set_trainable

    plain = tiny_vlm()
    cfg = ModelConfig(**{**plain.config.__dict__, "image_position": "learned_2d"})
    model = type(plain).from_parts(cfg, plain.vision_tower, plain.llm, plain.tokenizer)
    set_trainable(model, 1, lora=False)
    groups = param_groups(model, TrainConfig(stage=1, lr=1e-4, projector_lr=2e-4, image_position_lr=5e-3,
                                             weight_decay=0.1))
    by_name = {g["name"]: g for g in groups if g["name"] == "image_position"}
    positions = by_name["image_position"]
    assert {id(p) for p in positions["params"]} == {id(model.projector.row_embed), id(model.projector.col_embed)}
    assert (positions["peak_lr"], positions["weight_decay"]) == (5e-3, 0.0)
    rest = [p for g in groups if g["name"] == "projector" for p in g["params"]]
    assert rest and all(g["peak_lr"] == 2e-4 for g in groups if g["name"] == "projector")
    assert len(rest) + 2 == len(list(model.projector.parameters()))  # every parameter in exactly one group
    unset = param_groups(model, TrainConfig(stage=1, lr=1e-4, projector_lr=2e-4))
    assert [g["peak_lr"] for g in unset if g["name"] == "image_position"] == [2e-4]
    with pytest.raises(ConfigError, match="image_position_lr"):
        TrainConfig(image_position_lr=0.0)


def test_image_positions_need_a_square_grid_and_a_known_name():
    assert grid_layout(25) == (0, 5) and grid_layout(577) == (1, 24)
    with pytest.raises(ValueError, match="square grid"):
        Projector("linear", 8, 16, grid_tokens=30)
    with pytest.raises(ConfigError, match="image_position"):
        ModelConfig(image_position="sinusoidal")


# ------------------------------------------------------------------------------------------------ data


def test_grounded_caption_counts_then_lists_regions_in_reading_order():
    ctx = ImageContext("a.png", instances=[
        Instance("blue square", (0.40, 0.40, 0.55, 0.55)),   # center
        Instance("red circle", (0.05, 0.05, 0.20, 0.20)),    # top left
        Instance("blue square", (0.45, 0.45, 0.60, 0.60)),   # center again
        Instance("green star", (0.80, 0.75, 0.95, 0.95))])   # bottom right
    assert grounded_caption(ctx) == ("Four shapes. Top left: a red circle; center: two blue squares; "
                                     "bottom right: a green star.")
    assert grounded_caption(ImageContext("b.png")) is None
    people = ImageContext("c.png", instances=[Instance("person", (0.7, 0.1, 0.9, 0.3))])
    assert grounded_caption(people) == "One object. Top right: a person."


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vistune.data.annotations import load_coco
    from vistune.data.synth import render_world

    out = tmp_path_factory.mktemp("world")
    render_world(out, 120, seed=3, min_objects=1, max_objects=3, image_size=96, progress=False)
    contexts, _ = load_coco(out / "captions.json", out / "instances.json")
    return contexts


def test_balanced_conversations_ask_each_type_once_with_balanced_answers(world):
    from vistune.datagen.symbolic import balanced_short_conversations

    records = balanced_short_conversations(world, seed=0)
    assert len(records) == len(world)
    answers: dict[str, Counter] = {t: Counter() for t in QUESTION_TYPES}
    for r in records:
        turns = r["conversations"]
        types = r["metadata"]["question_types"]
        assert len(types) == len(set(types)) == len(turns) // 2 and set(types) <= set(QUESTION_TYPES)
        assert turns[0]["value"].startswith("<image>\n") and turns[0]["value"].endswith(SHORT_ANSWER_INSTRUCTION)
        assert all("<image>" not in t["value"] and SHORT_ANSWER_INSTRUCTION not in t["value"] for t in turns[1:])
        for t, a in zip(types, turns[1::2]):
            answers[t][a["value"]] += 1
    assert set(answers["existence"]) == {"yes", "no"}
    assert set(answers["count"]) >= {"0", "1", "2"}
    for t in ("existence", "absolute_position", "relative_position"):
        counts = answers[t].values()
        assert max(counts) - min(counts) <= 2, (t, answers[t])


def test_the_demo_mix_opens_some_conversations_with_the_grounded_caption(world):
    from vistune.demo import balanced_with_descriptions

    records = balanced_with_descriptions(world, describe_fraction=0.5)
    described = [r for r in records if r["metadata"].get("described")]
    assert 0.3 * len(records) < len(described) < 0.7 * len(records)
    captions = {c.image: grounded_caption(c) for c in world}
    for r in described:
        first, answer, second = r["conversations"][:3]
        assert first["value"].startswith("<image>\n") and answer["value"] == captions[r["image"]]
        assert "<image>" not in second["value"]
    assert not any(r["metadata"].get("described") for r in balanced_with_descriptions(world, 0.0))


def test_balanced_questions_asked_one_at_a_time_each_carry_the_short_answer_instruction(world):
    from vistune.demo import balanced_with_descriptions, single_turns

    conversations = balanced_with_descriptions(world, describe_fraction=0.0)
    singles = [one for r in conversations for one in single_turns(r, short_instruction=True)]
    assert len(singles) == sum(len(r["metadata"]["question_types"]) for r in conversations)
    for r in singles:
        question, answer = r["conversations"]
        assert question["value"].startswith("<image>\n") and question["value"].count("<image>") == 1
        assert question["value"].endswith("\n" + SHORT_ANSWER_INSTRUCTION)
        assert question["value"].count(SHORT_ANSWER_INSTRUCTION) == 1 and " " not in answer["value"]
    plain = [one for r in conversations for one in single_turns(r)]
    assert sum(r["conversations"][0]["value"].endswith(SHORT_ANSWER_INSTRUCTION) for r in plain) == len(conversations)


# ------------------------------------------------------------------------------------------------ harness


@pytest.mark.slow
def test_learning_curve_scores_two_compute_points_of_the_quick_recipe(tmp_path):
    """The harness on the demo's quick plan (real default parts): a point inside stage 2 and the final model."""
    from dataclasses import replace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import learning_curve as lc

    from vistune.demo import QUICK, Demo

    demo = Demo(tmp_path / "curve", replace(QUICK, precision="fp32"), progress=False, log=lambda s: None)
    stage1_tflop = lc.train_stage1(demo) / 1e12
    points = lc.train_curve(demo, [stage1_tflop + 1e-6])
    assert len(points) == 2 and points[-1].get("final")
    assert points[0]["step"] == 1 and stage1_tflop < points[0]["tflop"] < points[1]["tflop"]
    rows = [lc.score_point(demo, p) for p in points]
    lc.write_curve(rows, demo.out, "quick")
    for row in rows:
        assert set(row["by_type"]) == set(QUESTION_TYPES)
        for t, v in row["by_type"].items():
            assert v["margin"] == pytest.approx(v["full"] - v["shuffled_images"])
    table = (demo.out / "curve.md").read_text()
    assert table.count(f"| {rows[0]['tflop']:.1f} |") == 1 and (demo.out / "curve.png").stat().st_size > 0
    assert json.loads((demo.out / "curve.json").read_text())["points"][1]["step"] == 4
