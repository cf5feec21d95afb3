"""The training loop with tiny random models: freezing, exact global batch, supervised-only loss, progress files,
bad data, non-finite loss, in-process resume, LoRA and merge-lora, stage 2 from stage 1."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vistune
from vistune.config import ConfigError
from vistune.data.dataset import LlavaDataset, collate
from vistune.model.checkpoint import load_checkpoint, read_config
from vistune.train.loop import TrainHooks, TrainingError, train
from vistune.train.lora import merge_lora_checkpoint
from vistune.train.tiny import save_tiny_checkpoint, tiny_run_config, write_tiny_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    ckpt = save_tiny_checkpoint(root / "init")
    data = write_tiny_data(root / "data", n=16)
    return ckpt, data


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_trains_only_the_projector_and_writes_the_run_directory(tiny, tmp_path):
    ckpt, data = tiny
    run = tiny_run_config(ckpt, data, tmp_path / "run", stage=1, max_steps=3, save_every=2)
    final = train(run, progress=False)
    before, after = load_checkpoint(ckpt), vistune.load(final)
    for part in ("vision_tower", "llm"):
        b, a = _state(getattr(before, part)), _state(getattr(after, part))
        assert b.keys() == a.keys()
        assert all(torch.equal(b[k], a[k]) for k in b), f"{part} changed in stage 1"
    assert not torch.equal(before.projector.linear_1.weight, after.projector.linear_1.weight)
    out = tmp_path / "run"
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens", "skipped", "epoch"):
        assert key in records[0]
    assert all(r["samples"] == 4 for r in records)  # exactly one global batch per step
    for prev, rec in zip(records, records[1:]):  # the step's time split tiles the wall time between records
        split = rec["step_time_s"]
        assert list(split) == ["data", "forward", "backward", "optimizer", "bookkeeping"]
        assert split["forward"] > 0 and split["backward"] > 0 and split["optimizer"] > 0
        wall = rec["elapsed_s"] - prev["elapsed_s"]
        assert abs(sum(split.values()) - wall) < 0.25 * wall + 0.05, (split, wall)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stage: 1" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert read_config(final)["training"]["step"] == 3


def test_stage2_trains_llm_keeps_tower_and_starts_from_stage1(tiny, tmp_path):
    ckpt, data = tiny
    stage1 = train(tiny_run_config(ckpt, data, tmp_path / "s1", stage=1, max_steps=2), progress=False)
    run = tiny_run_config(stage1, data, tmp_path / "s2", stage=2, max_steps=2, lr=1e-3)
    final = train(run, progress=False)
    s1, s2 = vistune.load(stage1), vistune.load(final)
    t1, t2 = _state(s1.vision_tower), _state(s2.vision_tower)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    l1, l2 = _state(s1.llm), _state(s2.llm)
    assert any(not torch.equal(l1[k], l2[k]) for k in l1)
    assert not torch.equal(s1.projector.linear_1.weight, s2.projector.linear_1.weight)


def test_init_from_must_match_the_model_section(tiny, tmp_path):
    ckpt, data = tiny
    with pytest.raises(ConfigError, match="model.projector"):  # an override is checked when the config loads
        tiny_run_config(ckpt, data, tmp_path / "run", overrides=["model.projector=mlp2x_gelu"])
    run = tiny_run_config(ckpt, data, tmp_path / "run")
    run.model.projector, run.model.vision_layer = "mlp2x_gelu", 1  # a RunConfig built in Python is checked by train
    with pytest.raises(ConfigError, match=r"model.vision_layer=1 .*model.projector='mlp2x_gelu'|"
                                          r"model.projector='mlp2x_gelu' .*model.vision_layer=1"):
        train(run, progress=False)
    assert not (tmp_path / "run" / "final").exists()


def test_supervised_only_loss_equals_the_naive_full_logits_loss(tiny):
    ckpt, data = tiny
    model = load_checkpoint(ckpt)
    ds = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, seed=0)
    batch = collate([ds[i] for i in range(6)], model.tokenizer.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    fast = model(*args)
    naive = model(*args, return_logits=True)
    assert fast.num_tokens == naive.num_tokens == int((batch["labels"][:, 1:] != -100).sum()) > 0
    torch.testing.assert_close(fast.loss_sum, naive.loss_sum, rtol=1e-5, atol=1e-4)
    # and by hand: shift, mask, mean over supervised positions only
    logits = naive.logits[:, :-1].reshape(-1, naive.logits.shape[-1])
    labels = batch["labels"][:, 1:].reshape(-1)
    keep = labels != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(fast.loss, manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_the_update_does_not_depend_on_how_the_global_batch_is_split(tiny, tmp_path, stage):
    """global 8 = 2 x 4 accumulation gives the same weights as 8 x 1: the loss is normalised over the whole batch."""
    ckpt, data = tiny
    finals = []
    for micro in (8, 2):
        run = tiny_run_config(ckpt, data, tmp_path / f"m{micro}", stage=stage, global_batch_size=8,
                              micro_batch_size=micro, max_steps=2)
        finals.append(vistune.load(train(run, progress=False)))
    for part in ("projector", "llm"):
        a, b = _state(getattr(finals[0], part)), _state(getattr(finals[1], part))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    losses = [[r["loss"] for r in _metrics(tmp_path / f"m{m}")] for m in (8, 2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_global_batch_not_divisible_is_rejected_at_load(tiny, tmp_path):
    ckpt, data = tiny
    with pytest.raises(ConfigError, match="global_batch_size=6 is not divisible"):
        tiny_run_config(ckpt, data, tmp_path, global_batch_size=6, micro_batch_size=4)
    from vistune.config import load_run_config

    with pytest.raises(ConfigError, match=r"4 x 2 process\(es\) = 8"):
        load_run_config(None, ["train.global_batch_size=12", "train.micro_batch_size=4"], world_size=2)


def test_bad_samples_are_skipped_and_counted(tmp_path, tiny):
    ckpt, _ = tiny
    data = write_tiny_data(tmp_path / "data", n=12, bad={"unreadable_image": 3, "missing_image": 2,
                                                         "invalid_record": 2})
    run = tiny_run_config(ckpt, data, tmp_path / "run", global_batch_size=4, micro_batch_size=2,
                          overrides=["train.epochs=1", "train.max_steps=null"])
    train(run, progress=False)
    records = _metrics(tmp_path / "run")
    assert len(records) == 17 // 4  # 17 loadable records, 4 per step
    last = records[-1]
    assert last["invalid_records"] == {"first_not_human": 2}
    assert last["skipped"] == {"unreadable_image": 3, "missing_image": 2}  # every bad image was drawn once
    assert sum(r["samples"] for r in records) == 16 - 5
    # a step whose samples were all skipped makes no update and logs no loss; every other loss is finite
    assert all((r["loss"] == r["loss"]) == (r["samples"] > 0) for r in records)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny, tmp_path):
    ckpt, data = tiny
    run = tiny_run_config(ckpt, data, tmp_path / "run", max_steps=6, save_every=2)

    def poison(step, model):
        if step == 3:  # after the checkpoint of step 2 was written
            with torch.no_grad():
                model.projector.linear_1.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 4"):
        train(run, progress=False, hooks=TrainHooks(after_step=poison))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-000002"]
    w = load_file(str(tmp_path / "run" / "checkpoints" / "step-000002" / "projector.safetensors"))
    assert torch.isfinite(w["linear_1.weight"]).all()
    assert vistune.load(tmp_path / "run" / "checkpoints" / "step-000002") is not None
    assert not (tmp_path / "run" / "final").exists()


class _Crash(Exception):
    pass


@pytest.mark.parametrize("stage,lora", [(1, False), (2, False), (2, True)])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny, tmp_path, stage, lora):
    ckpt, data = tiny
    extra = dict(lora=lora, lora_r=4, lora_alpha=8, lora_dropout=0.1) if lora else {}
    common = dict(stage=stage, max_steps=5, save_every=2, **extra)
    full = vistune.load(train(tiny_run_config(ckpt, data, tmp_path / "full", **common), progress=False))

    def crash(step, model):
        if step == 3:
            raise _Crash()

    run = tiny_run_config(ckpt, data, tmp_path / "resumed", **common)
    with pytest.raises(_Crash):
        train(run, progress=False, hooks=TrainHooks(after_step=crash))
    with pytest.raises(ConfigError, match="train.lr"):
        train(tiny_run_config(ckpt, data, tmp_path / "resumed", lr=5e-4, **common), progress=False, resume=True)
    longer = {**common, "max_steps": 8}  # a longer run would stretch the learning-rate schedule
    with pytest.raises(ConfigError, match="train.max_steps"):
        train(tiny_run_config(ckpt, data, tmp_path / "resumed", **longer), progress=False, resume=True)
    resumed = vistune.load(train(run, progress=False, resume=True))
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in _metrics(tmp_path / "resumed")]
    assert steps == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in _metrics(tmp_path / "resumed")] == [r["loss"] for r in _metrics(tmp_path / "full")]


def test_resume_true_without_checkpoint_is_an_error(tiny, tmp_path):
    ckpt, data = tiny
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny_run_config(ckpt, data, tmp_path / "run"), progress=False, resume=True)


def test_lora_trains_adapters_only_and_merges_into_a_plain_checkpoint(tiny, tmp_path):
    ckpt, data = tiny
    run = tiny_run_config(ckpt, data, tmp_path / "run", stage=2, lora=True, lora_r=4, lora_alpha=8,
                          lora_dropout=0.0, max_steps=3, lr=1e-2, projector_lr=1e-3)
    final = train(run, progress=False)
    assert read_config(final)["lora"] is True
    before, lora_model = load_checkpoint(ckpt), vistune.load(final)
    base_before = _state(before.llm)
    base_after = {k.replace("base_model.model.", "").replace(".base_layer.", "."): v
                  for k, v in _state(lora_model.llm).items() if "lora_" not in k}
    assert base_before.keys() == base_after.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # base weights frozen
    lora_b = [v for k, v in _state(lora_model.llm).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # adapters trained (lora_B starts at zero)

    merged = tmp_path / "merged"
    assert merge_lora_checkpoint(final, merged) == merged
    assert read_config(merged)["lora"] is False and not (merged / "llm_adapter").exists()
    plain = vistune.load(merged)
    model = vistune.load(final)
    ds = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, seed=0)
    batch = collate([ds[i] for i in range(4)], model.tokenizer.pad_token_id)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    with torch.no_grad():
        torch.testing.assert_close(plain(*args).loss, model(*args).loss, rtol=1e-4, atol=1e-5)
    # merging a plain checkpoint is refused with a message
    from vistune.cli import main

    assert main(["merge-lora", "--model", str(merged), "--out", str(tmp_path / "again")]) == 2


def test_lora_in_stage1_is_a_contradiction(tiny, tmp_path):
    ckpt, data = tiny
    with pytest.raises(ConfigError, match="train.lora=true needs train.stage=2"):
        tiny_run_config(ckpt, data, tmp_path, stage=1, lora=True)


def test_gradient_checkpointing_gives_the_same_update(tiny, tmp_path):
    ckpt, data = tiny
    finals = [vistune.load(train(tiny_run_config(ckpt, data, tmp_path / str(gc), stage=2, max_steps=1,
                                                 gradient_checkpointing=gc), progress=False))
              for gc in (False, True)]
    a, b = _state(finals[0]), _state(finals[1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_trains_and_separate_projector_lr_is_used(tiny, tmp_path):
    ckpt, data = tiny
    run = tiny_run_config(ckpt, data, tmp_path / "run", stage=2, precision="bf16", max_steps=2, lr=1e-4,
                          projector_lr=1e-3, tensorboard=True)
    train(run, progress=False)
    records = _metrics(tmp_path / "run")
    assert records[0]["lr"] == pytest.approx(1e-4) and records[0]["projector_lr"] == pytest.approx(1e-3)
    assert all(r["loss"] == r["loss"] for r in records)
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_cli_reports_config_errors(tiny, tmp_path, capsys):
    from vistune.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  stage: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "train.stage must be 1 or 2" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--resume", "--no-resume"]) == 2


def test_help_config_lists_every_key(capsys):
    from vistune.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help-config"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for key in ("train.global_batch_size", "train.lora", "init_from", "output_dir", "data.image_folder"):
        assert f"{key} = " in text


def test_precision_auto_follows_native_bf16():
    from vistune.train.distributed import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) is True and resolve_precision("fp32", cpu) is False
    assert resolve_precision("auto", cpu) is native_bf16(cpu)
    flags = open("/proc/cpuinfo").read()
    assert native_bf16(cpu) == ("amx_bf16" in flags or "avx512_bf16" in flags)


def test_cpu_parameters_get_the_fused_adamw_step(tiny):
    """The default (foreach) AdamW step costs ~1.5 s per 135M CPU parameters; the fused kernel ~0.1 s."""
    from vistune.config import TrainConfig
    from vistune.train.optim import build_optimizer

    model = load_checkpoint(tiny[0])
    model.projector.requires_grad_(True)
    optimizer = build_optimizer(model, TrainConfig(stage=1))
    assert optimizer.defaults["fused"] is True
    before = model.projector.linear_1.weight.detach().clone()
    model.projector.linear_1.weight.grad = torch.ones_like(before)
    optimizer.step()
    assert not torch.equal(model.projector.linear_1.weight, before)


def test_resume_refuses_a_checkpoint_whose_schedule_differs(tiny, tmp_path):
    ckpt, data = tiny

    def crash(step, model):
        if step == 3:
            raise _Crash()

    run = tiny_run_config(ckpt, data, tmp_path / "run", max_steps=4, save_every=2)
    with pytest.raises(_Crash):
        train(run, progress=False, hooks=TrainHooks(after_step=crash))
    state_path = tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    assert state["scheduler"]["total_steps"] == 4
    state["scheduler"]["total_steps"] = 6  # as if the data had another length when the checkpoint was written
    state_path.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="learning-rate schedule"):
        train(run, progress=False, resume=True)


def test_a_lora_checkpoint_writes_the_llm_once(tiny, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    ckpt, data = tiny
    writes = []
    original = PreTrainedModel.save_pretrained
    monkeypatch.setattr(PreTrainedModel, "save_pretrained",  # a spy: counts, then saves as usual
                        lambda self, path, *a, **k: writes.append(path.name) or original(self, path, *a, **k))
    run = tiny_run_config(ckpt, data, tmp_path / "run", stage=2, max_steps=2, save_every=2, lora=True, lora_r=4,
                          lora_alpha=8)
    final = train(run, progress=False)
    assert writes.count("llm") == 2  # one write per checkpoint: step 2 and final
    assert (final / "llm_adapter").is_dir()
    assert not any(".lora_" in k or ".base_layer." in k for k in load_file(final / "llm" / "model.safetensors"))
