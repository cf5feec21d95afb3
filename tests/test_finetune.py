"""Fine-tuning a checkpoint: with `init_from` the checkpoint supplies the model section (architecture, image
settings, template, system prompt); command-line overrides of the template and system prompt win, architecture
overrides that differ are reported all at once, config-file keys that differ are noted; and the documented
recipe (data check, train, chat) runs end to end on tiny models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from vistune.config import ConfigError, ModelConfig, load_run_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
STAGE2 = ROOT / "configs" / "default_stage2.yaml"
SYSTEM = "Answer in one short sentence."


def _fake_checkpoint(path: Path, **model) -> Path:
    """A directory with only a checkpoint's config.json (enough for configuration code)."""
    path.mkdir(parents=True)
    section = to_dict(ModelConfig(vision_tower="tiny-clip", vision_layer=-1, llm="tiny-llama", projector="linear",
                                  image_size=32, feature_norm="token", system_prompt=SYSTEM, **model))
    (path / "config.json").write_text(json.dumps({"model_type": "vistune", "model": section}))
    return path


def test_the_checkpoint_supplies_the_model_section_and_keeps_its_system_prompt(tmp_path, caplog):
    ckpt = _fake_checkpoint(tmp_path / "ck")
    with caplog.at_level(logging.INFO, logger="vistune.config"):
        run = load_run_config(STAGE2, [f"init_from={ckpt}"])
    m = run.model
    assert (m.vision_tower, m.vision_layer, m.llm, m.image_size, m.feature_norm) == (
        "tiny-clip", -1, "tiny-llama", 32, "token")
    assert m.system_prompt == SYSTEM and m.template == "chat_template"
    notes = [r.getMessage() for r in caplog.records if r.name == "vistune.config"]
    assert len(notes) == 1  # one line, naming every config-file key that was not used
    assert "model.vision_tower='efficientnet-lite0' (checkpoint: 'tiny-clip')" in notes[0]
    assert "model.llm='smollm2-135m-instruct' (checkpoint: 'tiny-llama')" in notes[0]
    assert "model.image_size" not in notes[0]  # the file does not name it


def test_conversation_keys_command_line_then_file_then_checkpoint(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ck", template="plain")
    stage2 = tmp_path / "stage2.yaml"
    stage2.write_text(f"model:\n  template: vicuna_v1\n  vision_layer: -2\ninit_from: {ckpt}\n")
    run = load_run_config(stage2)
    assert (run.model.template, run.model.system_prompt, run.model.vision_layer) == ("vicuna_v1", SYSTEM, -1)
    run = load_run_config(stage2, ["model.template=v0", "model.system_prompt=Be terse."])
    assert (run.model.template, run.model.system_prompt) == ("v0", "Be terse.")
    run = load_run_config(stage2, ["model.system_prompt=null"])
    assert run.model.system_prompt is None
    with pytest.raises(ConfigError, match="model.template='nope'"):
        load_run_config(stage2, ["model.template=nope"])


def test_architecture_overrides_that_differ_are_reported_together(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ck")
    overrides = [f"init_from={ckpt}", "model.vision_layer=-2", "model.image_size=64", "model.feature_norm=none",
                 "model.llm=tiny-llama"]  # the last one agrees with the checkpoint
    with pytest.raises(ConfigError) as err:
        load_run_config(STAGE2, overrides)
    message = str(err.value)
    assert "\n" not in message
    for part in ("model.vision_layer=-2 (checkpoint: -1)", "model.image_size=64 (checkpoint: 32)",
                 "model.feature_norm='none' (checkpoint: 'token')"):
        assert part in message
    assert "model.llm" not in message


def test_a_missing_init_from_is_one_config_error_with_the_likely_fix(tmp_path):
    _fake_checkpoint(tmp_path / "run" / "final")
    with pytest.raises(ConfigError, match=r"did you mean .*run/final\?"):
        load_run_config(STAGE2, [f"init_from={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(STAGE2, [f"init_from={tmp_path / 'nowhere'}"])
    # checking a config before its checkpoint exists
    assert load_run_config(STAGE2, read_init_from=False).model.vision_tower == "efficientnet-lite0"


def test_fine_tune_recipe_end_to_end(tmp_path, capsys, caplog):
    """Stage 1 on a tiny model, then the docs' three commands (data check, train with a stage-2 config whose
    model section names other parts, chat) through `vistune.cli.main`."""
    from vistune.checkpoint_format import read_config
    from vistune.cli import main
    from vistune.model.checkpoint import load_checkpoint, save_checkpoint
    from vistune.train.loop import train
    from vistune.train.tiny import save_tiny_checkpoint, tiny_run_config, write_tiny_data

    init = save_tiny_checkpoint(tmp_path / "init")
    model = load_checkpoint(init)
    model.set_conversation("chat_template", SYSTEM)
    save_checkpoint(model, init)
    data = write_tiny_data(tmp_path / "data", n=8)
    stage1 = train(tiny_run_config(init, data, tmp_path / "stage1", stage=1, max_steps=2), progress=False)
    assert read_config(stage1)["model"]["system_prompt"] == SYSTEM

    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    records = [r for r in json.loads(data.read_text()) if r.get("image") != "broken.png"]
    (mine / "data.json").write_text(json.dumps(records))
    for name in ("circles.png", "square.png"):
        (mine / "images" / name).write_bytes((data.parent / "images" / name).read_bytes())

    assert main(["data", "check", "--data", str(mine / "data.json"), "--images", str(mine / "images")]) == 0
    fast = ["train.max_steps=2", "train.global_batch_size=2", "train.micro_batch_size=2", "data.num_workers=0",
            "train.precision=fp32", "train.save_every=null"]  # keep the test short; not part of the recipe
    with caplog.at_level(logging.INFO, logger="vistune.config"):
        code = main(["train", "--config", str(STAGE2), f"init_from={stage1}", f"data.path={mine / 'data.json'}",
                     f"data.image_folder={mine / 'images'}", f"output_dir={tmp_path / 'runs' / 'mine'}", *fast])
    assert code == 0
    assert any("model.vision_tower='efficientnet-lite0' (checkpoint: 'tiny-clip')" in r.getMessage()
               for r in caplog.records)
    final = tmp_path / "runs" / "mine" / "final"
    model_section = read_config(final)["model"]
    assert model_section["system_prompt"] == SYSTEM and model_section["vision_tower"] == "tiny-clip"
    assert read_config(final)["training"]["step"] == 2
    capsys.readouterr()
    assert main(["chat", "--model", str(final), "--image", str(mine / "images" / "circles.png"),
                 "--prompt", "What is in the picture?", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert not capsys.readouterr().err.strip()
    from vistune.inference.engine import Engine, Request

    engine = Engine.from_checkpoint(final)  # what chat asks the fine-tuned model starts with its system prompt
    assert SYSTEM in engine.tokenizer.decode(engine.render(Request.of("What is in the picture?")))
