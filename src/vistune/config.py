"""Typed run configuration: dataclasses with a docstring per field, YAML in and out, dotted overrides.

A YAML file maps onto `RunConfig`; unknown keys and contradictions are rejected at load with a message
that names the key. Field docs are the string literal that follows each field (`vistune train --help-config`
prints them).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key in the message."""


@dataclass
class ModelConfig:
    vision_tower: str = "efficientnet-lite0"
    """Vision encoder: `efficientnet-lite0` (built-in, offline), or a transformers CLIP/SigLIP hub id or directory."""
    vision_layer: int = -2
    """Which encoder layer's features feed the projector (Python index into the layer outputs; -2 = second to last)."""
    vision_select: str = "patch"
    """`patch`: grid tokens only (CLS dropped); `cls_patch`: CLS token plus grid tokens (ViTs with a CLS token)."""
    projector: str = "linear"
    """Projector from vision features to LLM embeddings: `linear` (the paper) or `mlp2x_gelu` (LLaVA-1.5)."""
    llm: str = "smollm2-135m-instruct"
    """Causal LM: `smollm2-135m-instruct` (built-in, offline), or a transformers hub id or local directory."""
    template: str = "chat_template"
    """Conversation template: `plain`, `v0`, `vicuna_v1`, `llama_2`, or `chat_template` (the tokenizer's own)."""
    image_size: int | None = None
    """Input resolution; None takes the tower's own."""
    pad_to_square: bool = False
    """Pad images to a square with the mean colour before resizing (LLaVA-1.5) instead of centre-cropping."""
    feature_norm: bool = False
    """Standardise vision features per token with a non-learned LayerNorm before the projector."""

    def __post_init__(self) -> None:
        from vistune.model.projector import PROJECTORS
        from vistune.conversation import TEMPLATE_NAMES

        if self.projector not in PROJECTORS:
            raise ConfigError(f"model.projector={self.projector!r}: expected one of {sorted(PROJECTORS)}")
        if self.template not in TEMPLATE_NAMES:
            raise ConfigError(f"model.template={self.template!r}: expected one of {list(TEMPLATE_NAMES)}")
        if self.vision_select not in ("patch", "cls_patch"):
            raise ConfigError(f"model.vision_select={self.vision_select!r}: expected 'patch' or 'cls_patch'")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"model.image_size must be positive, got {self.image_size}")


# --------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict machinery


def field_docs(cls: type) -> dict[str, str]:
    """The docstring literal that follows each field in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated type; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"known keys under {prefix or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted key=value overrides to a nested mapping (new keys are checked when the dataclass is built)."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def describe(cls: type, prefix: str = "") -> list[str]:
    """Lines `key (type, default): doc` for every field, recursively."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")  # type: ignore[misc]
        lines.append(f"{prefix}{f.name} = {default!r}\n    {docs.get(f.name, '')}")
    return lines
