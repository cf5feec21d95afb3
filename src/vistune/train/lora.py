"""LoRA on the LLM (peft) and `vistune merge-lora`: fold the adapters into a plain checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from vistune.config import TrainConfig
from vistune.model.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from vistune.model.llm import is_peft_model


def add_lora(model, cfg: TrainConfig) -> None:
    """Wrap `model.llm` in a peft LoRA model over its linear layers (LM head excluded); in place."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("train.lora needs the `peft` package (pip install 'vistune[lora]')") from e
    if is_peft_model(model.llm):
        return  # started from an unmerged LoRA checkpoint: keep training its adapters
    target = "all-linear" if cfg.lora_target == ["all-linear"] else list(cfg.lora_target)
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=target, bias="none", task_type="CAUSAL_LM")
    model.llm = get_peft_model(model.llm, config)


def merge_lora(model) -> None:
    """Fold LoRA adapters into the LLM's weights; in place."""
    if not is_peft_model(model.llm):
        raise ValueError("the model has no LoRA adapters to merge")
    model.llm = model.llm.merge_and_unload()


def merge_lora_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a copy of a LoRA checkpoint with its adapters folded into the LLM (`vistune merge-lora`)."""
    src, out = Path(checkpoint), Path(out)
    config = read_config(src)
    if not config.get("lora"):
        raise CheckpointError(f"{src} has no LoRA adapters (config.json says lora: false); nothing to merge")
    if out.resolve() == src.resolve():
        raise CheckpointError("the output must differ from the LoRA checkpoint (--out vs --model)")
    model = load_checkpoint(src, dtype=torch.float32)
    merge_lora(model)
    return save_checkpoint(model, out, extra={"merged_from": str(src)})
