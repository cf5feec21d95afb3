"""Resumable checkpoints: a model checkpoint directory plus the trainer's state, committed by one rename.

    checkpoints/step-000120/
        config.json, projector.safetensors, llm/, ... (a complete model checkpoint; `vistune.load` opens it)
        trainer_state.json        step, epoch, data position, counters, the run config, optimizer scalars
        optimizer.safetensors     AdamW moments and step counts, keyed by parameter name
        rng-rank{R}.json / .safetensors   Python, NumPy and torch (CPU and CUDA) RNG states of each process

Everything is written into `.step-000120.tmp` and renamed when complete, so a kill at any moment leaves
either the previous checkpoints or the new one, never a half-written one. No pickle anywhere.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vistune.utils.io import atomic_write_json

STATE_NAME = "trainer_state.json"
OPTIM_NAME = "optimizer.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete resumable checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def remove_partial(directory: Path) -> None:
    """Delete temporary directories a killed save left behind."""
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".step-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def temp_dir(directory: Path, step: int) -> Path:
    return directory / f".{step_dir_name(step)}.tmp"


def prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# optimizer state (from torch.distributed.checkpoint.state_dict's full optimizer state: keys are names)


def save_optimizer(optim_sd: dict, directory: Path) -> dict:
    """Tensors into optimizer.safetensors; returns the JSON part (param groups, non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for name, st in optim_sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    save_file(tensors, str(directory / OPTIM_NAME))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_sd["param_groups"]]
    return {"param_groups": groups, "scalars": scalars}


def load_optimizer(directory: Path, meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, value in load_file(str(directory / OPTIM_NAME)).items():
        name, field = key.rsplit("::", 1)
        state.setdefault(name, {})[field] = value
    for name, values in meta.get("scalars", {}).items():
        state.setdefault(name, {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------------
# RNG states


def save_rng(directory: Path, rank: int) -> None:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    atomic_write_json(directory / f"rng-rank{rank}.json", {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }, indent=None)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(directory / f"rng-rank{rank}.safetensors"))


def load_rng(directory: Path, rank: int) -> bool:
    """Restore this process's RNG states; False when the checkpoint has none for this rank."""
    js, st = directory / f"rng-rank{rank}.json", directory / f"rng-rank{rank}.safetensors"
    if not js.is_file() or not st.is_file():
        return False
    data = json.loads(js.read_text())
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    tensors = load_file(str(st))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    return True
