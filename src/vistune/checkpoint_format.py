"""What a vistune checkpoint directory is, read as plain JSON (no torch): its `config.json` names the model type,
and its `model` section is the `ModelConfig` the checkpoint was built from.

Configuration code reads checkpoints through this module so that it never imports the model stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vistune.errors import UserError

CONFIG_NAME = "config.json"
MODEL_TYPE = "vistune"


class CheckpointError(UserError, ValueError):
    """A directory that is not a loadable vistune checkpoint."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    cfg = Path(path) / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, json.JSONDecodeError):
        return False


def read_config(path: str | os.PathLike) -> dict:
    """The checkpoint's `config.json`; CheckpointError (with the likely fix) when `path` is not a checkpoint."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        hint = ""
        if is_checkpoint(path / "final"):
            hint = f"; did you mean {path / 'final'}?"
        elif not path.exists():
            hint = " (the directory does not exist)"
        raise CheckpointError(f"{path} is not a vistune checkpoint: {CONFIG_NAME} is missing{hint}")
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}/{CONFIG_NAME} has model_type {found!r}, not {MODEL_TYPE!r}")
    return config
