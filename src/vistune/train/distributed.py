"""Processes: torchrun environment, process group, DDP / FSDP2 wrapping, reductions, full state dicts.

One process needs no process group. Under torchrun (`WORLD_SIZE` > 1) the group uses NCCL on GPUs and gloo
on CPUs; rank 0 alone logs and writes files. State dicts go through `torch.distributed.checkpoint.state_dict`
so the same code saves and restores replicated (DDP) and sharded (FSDP2) weights and optimizer states:
gathered in full on rank 0 to save, scattered back to the shards on load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str = "auto") -> World:
    """Read torchrun's environment; start the process group when there are several processes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return World(rank, local_rank, size, dev)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: a CUDA device with bf16, or a CPU with AMX or AVX512-BF16 (elsewhere
    CPU bf16 is emulated and several times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True for bf16 autocast."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_sum(world: World, values: list[float]) -> list[float]:
    """Sum numbers over processes (float64, so token counts stay exact)."""
    return all_sum_tensor(world, torch.tensor(values, dtype=torch.float64)).tolist()


def all_sum_tensor(world: World, t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over processes, on the CPU (`t` itself when there is one process)."""
    if not world.distributed:
        return t
    device = world.device if world.device.type == "cuda" else torch.device("cpu")
    moved = t.to(device)
    dist.all_reduce(moved)
    return moved.cpu()


class TrainStep(nn.Module):
    """The module that DDP/FSDP wrap: the model's loss, with the projector always in the graph (a zero-weighted
    pass when a batch has no image), so every process reduces the same gradients in every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values, labels, position_ids=None, image_features=None,
                image_sizes=None):
        extra = {} if image_sizes is None else {"image_sizes": image_sizes}  # anyres
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         labels=labels, position_ids=position_ids, image_features=image_features, **extra)
        loss_sum = out.loss_sum
        if pixel_values is None and image_features is None and any(p.requires_grad for p in self.model.projector.parameters()):
            w = self.model.projector.linear_1.weight
            probe = torch.zeros(1, 1, w.shape[1], dtype=w.dtype, device=input_ids.device)
            loss_sum = loss_sum + 0.0 * self.model.projector(probe).float().sum()
            if self.model.projector.image_newline is not None:
                loss_sum = loss_sum + 0.0 * self.model.projector.image_newline.float().sum()
        return loss_sum


def wrap(step: TrainStep, world: World, strategy: str, bf16: bool) -> nn.Module:
    """DDP or FSDP2 around the train step (one process: unchanged)."""
    if not world.distributed:
        return step
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(step, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    llm = step.model.llm
    layer_names = set(getattr(_base_llm(llm), "_no_split_modules", None) or [])
    for module in llm.modules():
        if type(module).__name__ in layer_names:
            fully_shard(module, **kwargs)
    fully_shard(step, **kwargs)
    return step


def _base_llm(llm: nn.Module) -> nn.Module:
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def set_grad_sync(wrapped: nn.Module, world: World, strategy: str, sync: bool):
    """Context for one micro-batch: gradients are reduced across processes only on the last one."""
    import contextlib

    if not world.distributed:
        return contextlib.nullcontext()
    if strategy == "ddp":
        return contextlib.nullcontext() if sync else wrapped.no_sync()
    wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, world: World,
               trainable_only: bool = True) -> tuple[dict, dict]:
    """(model state, optimizer state) in full on rank 0 (CPU tensors, keys are parameter names of the
    TrainStep's model; empty dicts on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    module = _unwrap(wrapped)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(module, options=opts)
    optim_sd = get_optimizer_state_dict(module, optimizer, options=opts)
    if trainable_only:
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        model_sd = {k: v for k, v in model_sd.items() if k in names}
    return model_sd, optim_sd


def load_full_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer, world: World,
                    optim_sd: dict) -> None:
    """Put a full optimizer state (read on rank 0; may be empty on others) back into the (sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=world.distributed)
    set_optimizer_state_dict(_unwrap(wrapped), optimizer, optim_state_dict=optim_sd, options=opts)


def full_model_state(wrapped: nn.Module) -> dict:
    """Every weight in full on rank 0 (for writing a plain checkpoint from sharded weights)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(_unwrap(wrapped), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _unwrap(wrapped: nn.Module) -> nn.Module:
    return wrapped.module if hasattr(wrapped, "no_sync") and hasattr(wrapped, "module") else wrapped


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose weights live on the meta device (no memory), taken before sharding; rank 0 fills
    it from the full state dict to write a plain checkpoint of FSDP-sharded weights."""
    import copy

    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def fill_skeleton(skeleton: nn.Module, state: dict) -> nn.Module:
    """Load a full state dict (keys of the wrapped TrainStep: `model.` prefix) into the skeleton."""
    prefix = "model."
    sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    skeleton.load_state_dict(sd, strict=False, assign=True)
    if hasattr(skeleton.llm, "tie_weights"):
        skeleton.llm.tie_weights()
    return skeleton
