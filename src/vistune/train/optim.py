"""What trains in each stage, AdamW parameter groups, and the learning-rate schedule.

Stage 1 trains only the projector; stage 2 trains the projector and the LLM (or the LLM's LoRA adapters).
The vision tower never trains. The schedule is a pure function of the step, so resuming needs only the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vistune.config import TrainConfig


def set_trainable(model: nn.Module, stage: int, lora: bool) -> None:
    """Freeze everything, then unfreeze what `stage` trains (LoRA: only the adapters of the LLM)."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if stage == 2:
        if lora:
            for name, p in model.llm.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            model.llm.requires_grad_(True)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: projector / LLM, each split into decayed matrices and undecayed vectors; the projector's
    image position vectors form a group of their own ("image_position": no decay, `train.image_position_lr`)."""
    groups = []
    for part, lr in (("projector", cfg.peak_projector_lr), ("llm", cfg.lr)):
        module = getattr(model, part)
        positions = [p for p in module.position_parameters() if p.requires_grad] if part == "projector" else []
        rest = [p for p in module.parameters() if p.requires_grad and all(p is not q for q in positions)]
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        for params, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lr, "peak_lr": lr, "weight_decay": wd, "name": part})
        if positions:
            plr = cfg.image_position_lr if cfg.image_position_lr is not None else lr
            groups.append({"params": positions, "lr": plr, "peak_lr": plr, "weight_decay": 0.0,
                           "name": "image_position"})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    fused = all(_fused_kernel(p) for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=fused or None)


def _fused_kernel(p: torch.Tensor) -> bool:
    """Whether AdamW's fused kernel takes this parameter: any CUDA tensor, or a plain CPU tensor (there the
    fused step is 8x faster than the default, benchmarks/bench_optim.py; sharded CPU tensors keep the default)."""
    from torch.distributed.tensor import DTensor

    return p.is_cuda or (p.device.type == "cpu" and not isinstance(p, DTensor))


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based): linear warmup from 0, then
    cosine / linear decay to 0 at `total_steps`, or constant."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor
