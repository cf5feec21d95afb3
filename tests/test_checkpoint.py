"""Checkpoints: config.json + safetensors + tokenizer rebuild the model alone; writes are atomic; no pickle."""

import json

import pytest
import torch

import vistune
from vistune.model import checkpoint as ckpt
from vistune.model.checkpoint import save_checkpoint
from vistune.model.tiny import tiny_vlm


@pytest.mark.parametrize("tower", ["clip", "siglip", "efficientnet"])
def test_round_trip_gives_identical_outputs(tmp_path, tower):
    model = tiny_vlm(tower, projector="mlp2x_gelu", template="vicuna_v1").eval()
    path = tmp_path / "ckpt"
    save_checkpoint(model, path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "vistune" and config["vistune_version"] == vistune.__version__
    assert config["model"]["template"] == "vicuna_v1" and config["num_image_tokens"] == model.num_image_tokens
    assert config["image_processor"]["crop_size"] == model.image_processor.config.crop_size
    files = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pth", ".pkl"}
    loaded = vistune.load(path)
    size = model.image_processor.config.crop_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 2, 3] + [vistune.conversation.IMAGE_TOKEN_ID] * model.num_image_tokens + [4, 5]])
    with torch.no_grad():
        a = model(ids, pixel_values=pixels).logits
        b = loaded(ids, pixel_values=pixels).logits
    assert torch.equal(a, b)
    for (na, pa), (nb, pb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    assert loaded.renderer.template.name == "vicuna_v1"


def test_save_is_atomic_and_keeps_the_old_checkpoint_on_failure(tmp_path, monkeypatch):
    model = tiny_vlm("clip")
    path = tmp_path / "ckpt"
    save_checkpoint(model, path)
    before = (path / "projector.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with torch.no_grad():
        model.projector.linear_1.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert (path / "projector.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind
    assert ckpt.is_checkpoint(path)


def test_loading_a_non_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="config.json is missing"):
        vistune.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ckpt.CheckpointError, match="model_type 'llama'"):
        vistune.load(tmp_path)


def test_unmerged_lora_checkpoint_round_trips(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_vlm("clip").eval()
    model.llm = get_peft_model(model.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # make the adapters matter
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    save_checkpoint(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["lora"] is True
    loaded = vistune.load(tmp_path / "ckpt")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
        # and the base weights were stored under their plain names, not as injected adapter layers
        from safetensors import safe_open

        with safe_open(str(tmp_path / "ckpt" / "llm" / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any(k.endswith("q_proj.weight") for k in keys) and not any("lora" in k or "base_layer" in k
                                                                           for k in keys)
