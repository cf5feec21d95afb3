"""Checkpoint directories: everything needed to rebuild a model, no pickle.

    config.json               model_type "vistune", version, model config, tower config, image processing
    projector.safetensors
    vision_tower/             transformers save_pretrained, or model.safetensors for EfficientNet
    llm/                      transformers save_pretrained of the causal LM
    llm_adapter/              PEFT LoRA adapters (only for unmerged LoRA checkpoints)
    tokenizer/                the LLM's tokenizer files (with its chat template)

A directory is written under a temporary name and renamed into place, so a crash while saving never leaves
a checkpoint that loads half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vistune.checkpoint_format import CONFIG_NAME, MODEL_TYPE, CheckpointError, is_checkpoint, read_config
from vistune.config import ModelConfig, from_dict, to_dict
from vistune.data.image import ImageProcessor, ImageProcessorConfig
from vistune.model.llm import is_peft_model, save_tokenizer
from vistune.model.projector import Projector
from vistune.model.vision import EfficientNetTower, HFVisionTower
from vistune.model.vlm import VisionLanguageModel
from vistune.utils.io import atomic_dir
from vistune.version import __version__

__all__ = ["CONFIG_NAME", "MODEL_TYPE", "CheckpointError", "is_checkpoint", "read_config", "save_checkpoint",
           "load_checkpoint", "write_checkpoint_files"]


def write_checkpoint_files(model, directory: Path, extra: dict | None = None) -> None:
    """Write the checkpoint's files into an existing, empty `directory`."""
    llm = model.llm
    lora = is_peft_model(llm)
    if lora:
        llm.save_pretrained(directory / "llm_adapter")
        # the base weights without the injected adapter layers, under their original names
        base = llm.get_base_model()
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
        base.save_pretrained(directory / "llm", state_dict=state)
    else:
        llm.save_pretrained(directory / "llm")
    tower = model.vision_tower
    (directory / "vision_tower").mkdir()
    if tower.kind == "hf":
        tower.model.save_pretrained(directory / "vision_tower")
    else:
        save_file({k: v.contiguous() for k, v in tower.model.state_dict().items()},
                  str(directory / "vision_tower" / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in model.projector.state_dict().items()},
              str(directory / "projector.safetensors"))
    save_tokenizer(model.tokenizer, directory / "tokenizer")
    config = {
        "model_type": MODEL_TYPE,
        "vistune_version": __version__,
        "model": to_dict(model.config),
        "vision_tower": tower.config_dict(),
        "vision_hidden_size": tower.hidden_size,
        "num_image_tokens": tower.num_tokens,
        "llm_hidden_size": model.llm.get_input_embeddings().weight.shape[1],
        "image_processor": model.image_processor.config.to_dict(),
        "lora": lora,
        **(extra or {}),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(model, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save atomically: write a temporary sibling directory, then rename it to `path` (replacing it)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_checkpoint_files(model, tmp, extra)
    return path


def load_checkpoint(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device="cpu",
                    trainable_lora: bool = False, cls: type[VisionLanguageModel] = VisionLanguageModel
                    ) -> VisionLanguageModel:
    """Rebuild a VisionLanguageModel (or subclass `cls`) from a checkpoint directory alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    config = read_config(path)
    model_config = from_dict(ModelConfig, config["model"], prefix="model.")
    tower_cfg = config["vision_tower"]
    if tower_cfg["kind"] == "hf":
        from transformers import AutoConfig, AutoModel

        vcfg = AutoConfig.from_pretrained(path / "vision_tower")
        model_cls = AutoModel._model_mapping[type(vcfg)]
        tower = HFVisionTower(model_cls.from_pretrained(path / "vision_tower", dtype=dtype),
                              model_config.vision_layer, model_config.vision_select, tower_cfg.get("processor"))
    else:
        tower = EfficientNetTower(tower_cfg["name"], model_config.vision_layer, pretrained=False,
                                  image_size=tower_cfg.get("image_size"), select=model_config.vision_select)
        tower.model.load_state_dict(load_file(str(path / "vision_tower" / "model.safetensors")))
        tower = tower.to(dtype)
    llm = AutoModelForCausalLM.from_pretrained(path / "llm", dtype=dtype)
    if config.get("lora"):
        from peft import PeftModel

        llm = PeftModel.from_pretrained(llm, path / "llm_adapter", is_trainable=trainable_lora)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    projector = Projector(model_config.projector, config["vision_hidden_size"], config["llm_hidden_size"],
                          # the saved output_rms value loads next
                          output_rms=1.0 if model_config.projector_norm == "rms" else None,
                          standardise=model_config.feature_norm == "channel",
                          grid_tokens=tower.num_tokens if model_config.image_position == "learned_2d" else None,
                          image_newline=model_config.anyres and model_config.patch_merge == "spatial_unpad")
    projector.load_state_dict(load_file(str(path / "projector.safetensors")))
    model = cls(model_config, tower, projector.to(dtype), llm, tokenizer,
                                ImageProcessor(ImageProcessorConfig.from_dict(config["image_processor"])))
    if model.num_image_tokens != config["num_image_tokens"]:
        raise CheckpointError(f"rebuilt tower gives {model.num_image_tokens} image tokens, config says "
                              f"{config['num_image_tokens']}")
    return model.to(device).eval()
