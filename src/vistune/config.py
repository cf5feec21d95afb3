"""Typed run configuration: dataclasses with a docstring per field, YAML in and out, dotted overrides.

A YAML file maps onto `RunConfig`; unknown keys and contradictions are rejected at load with a message
that names the key. Field docs are the string literal that follows each field (`vistune train --help-config`
prints them).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import os
import re
import textwrap
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vistune.checkpoint_format import CheckpointError, read_config
from vistune.conversation import TEMPLATE_NAMES
from vistune.errors import UserError

log = logging.getLogger(__name__)



class ConfigError(UserError, ValueError):
    """A configuration that cannot be used, with the offending key in the message."""


PROJECTORS = ("linear", "mlp2x_gelu")
"""Projector types: one matrix (the paper), or linear-GELU-linear (LLaVA-1.5)."""
#: `model.feature_norm`: normalisation of the tower's features before the projector.
FEATURE_NORMS = ("none", "token", "channel")
IMAGE_POSITIONS = ("none", "learned_2d")
#: `model.projector_norm`: normalisation of the projector's outputs.
PROJECTOR_NORMS = ("none", "rms")
#: `model.image_aspect_ratio`: how an image becomes the tower's input.
IMAGE_ASPECT_RATIOS = ("square", "pad", "anyres")
#: `model.patch_merge`: how an anyres image's tile features become its image tokens.
PATCH_MERGES = ("flat", "spatial_unpad")
#: LLaVA-NeXT's tile grids (rows, columns), in tower tiles: at 336 px its default `image_grid_pinpoints`
#: [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] (height, width).
DEFAULT_GRID_SHAPES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


@dataclass
class ModelConfig:
    vision_tower: str = "efficientnet-lite0"
    """Vision encoder: `efficientnet-lite0` (built-in, offline), or a transformers CLIP/SigLIP hub id or directory."""
    vision_layer: int = -2
    """Which encoder layer's features feed the projector (Python index into the layer outputs; -2 = second to last)."""
    vision_select: str = "patch"
    """`patch`: grid tokens only (CLS dropped); `cls_patch`: CLS token plus grid tokens (ViTs with a CLS token;
    for EfficientNet towers the feature map's global average stands first instead)."""
    projector: str = "linear"
    """Projector from vision features to LLM embeddings: `linear` (the paper) or `mlp2x_gelu` (LLaVA-1.5)."""
    llm: str = "smollm2-135m-instruct"
    """Causal LM: `smollm2-135m-instruct` (built-in, offline), or a transformers hub id or local directory."""
    template: str = "chat_template"
    """Conversation template: `plain`, `v0`, `vicuna_v1`, `llama_2`, or `chat_template` (the tokenizer's own)."""
    image_size: int | None = None
    """Input resolution; None takes the tower's own."""
    image_aspect_ratio: str = "square"
    """How an image becomes the tower's input: `square` (resize the shortest edge, centre-crop), `pad` (LLaVA-1.5:
    pad to a square with the processor's mean colour, then resize; old configs: `pad_to_square: true`), or
    `anyres` (LLaVA-NeXT: resize the image keeping its aspect ratio into the best-fitting resolution of
    `image_grid_pinpoints`, pad with black, cut it into tower-sized tiles, and add the whole image resized to one
    tile as the base tile; every tile goes through the tower, so an image takes a number of tokens that depends on
    its size)."""
    image_grid_pinpoints: list[list[int]] | None = None
    """anyres: the resolutions `[height, width]` in pixels an image may be tiled at, each a multiple of the tower's
    input size; None: LLaVA-NeXT's grids 1x2, 2x1, 2x2, 3x1, 1x3 tiles (at 336 px its default list
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])."""
    patch_merge: str = "flat"
    """anyres: how the tiles' tokens are laid out: `flat` (the base tile's tokens, then each tile's, row by row) or
    `spatial_unpad` (LLaVA-NeXT, and what transformers' llava-next computes: the base tile's tokens, then the tiles'
    feature grid joined into one grid, the rows and columns that only cover padding removed, and a learned
    `image_newline` vector after each row). Needs `vision_select: patch`."""
    max_image_tokens: int | None = None
    """The most image tokens one image may take (anyres: a large or elongated image takes more); a record with an
    image over it is reported by `vistune data check` and skipped in training (reason `too_many_image_tokens`).
    None: no bound besides `data.max_length`."""
    feature_norm: str = "none"
    """How the tower's features are normalised before the projector: `none`; `token`: each token standardised
    over its channels (a LayerNorm without learned scale; no llava-hf equivalent, so it cannot be exported);
    `channel`: each channel standardised with its mean and standard deviation over training image tokens
    (projector buffers measured by the ridge warm start, so a new projector needs `train.projector_init: ridge`;
    folded into the projector's first linear layer on export). Old configs: `true` = `token`, `false` = `none`,
    and `feature_standardise: true` = `channel`."""
    projector_norm: str = "none"
    """How the projector's outputs are normalised: `none`, or `rms`: every image token rescaled to the
    root-mean-square of the LLM's word embeddings (a fixed scale taken when the projector is built), which keeps
    image positions from becoming attention sinks of unbounded norm. `rms` depends on each token's own norm, which
    no linear layer expresses, so it cannot be exported to llava-hf. Old configs: `true` = `rms`, `false` = `none`.
    Valid combinations: any `feature_norm` with any `projector_norm`; exportable: `feature_norm` `none` or
    `channel` with `projector_norm: none`."""
    system_prompt: str | None = None
    """System message added to every conversation that has none (None: the template's own default)."""
    image_position: str = "none"
    """A position signal for image tokens that costs no tokens: `none`, or `learned_2d`: a learned row vector
    and a learned column vector (zero at the start, trained with the projector) added to each grid token by its
    cell, so the LLM can tell where a token lies in the image besides its place in the sequence. Needs a square
    grid of tokens (CLS, where kept, gets none). No llava-hf counterpart, so it cannot be exported."""

    @property
    def pad_to_square(self) -> bool:
        """LLaVA-1.5's padding (`image_aspect_ratio: pad`)."""
        return self.image_aspect_ratio == "pad"

    @property
    def anyres(self) -> bool:
        return self.image_aspect_ratio == "anyres"

    def grid_pinpoints(self, tile: int) -> list[tuple[int, int]]:
        """The anyres resolutions (height, width) for a tower of `tile` px: `image_grid_pinpoints`, else LLaVA-NeXT's
        grids; ConfigError when one is not a multiple of `tile`."""
        if self.image_grid_pinpoints is None:
            return [(rows * tile, cols * tile) for rows, cols in DEFAULT_GRID_SHAPES]
        odd = [p for p in self.image_grid_pinpoints if p[0] % tile or p[1] % tile]
        if odd:
            raise ConfigError(f"model.image_grid_pinpoints: {odd} {'is' if len(odd) == 1 else 'are'} not a multiple "
                              f"of the tower's input size {tile} px (every resolution must be whole tiles)")
        return [(int(h), int(w)) for h, w in self.image_grid_pinpoints]

    @staticmethod
    def upgrade(data: dict, prefix: str = "model.") -> dict:
        """Map the keys of older configs and checkpoints onto the current ones (with a deprecation warning):
        `feature_norm: true/false`, `feature_standardise: true/false`, `projector_norm: true/false` and
        `pad_to_square: true/false` (now `image_aspect_ratio`)."""
        data = dict(data)
        if "pad_to_square" in data:
            pad = data.pop("pad_to_square")
            if not isinstance(pad, bool):
                raise ConfigError(f"{prefix}pad_to_square: expected true/false, got {pad!r}")
            aspect = data.get("image_aspect_ratio")
            if aspect is not None and (aspect == "pad") != pad:
                raise ConfigError(f"{prefix}pad_to_square={str(pad).lower()} contradicts {prefix}image_aspect_ratio="
                                  f"{aspect!r}; write only image_aspect_ratio")
            if pad and aspect is None:
                data["image_aspect_ratio"] = "pad"
                warnings.warn(f"deprecated config key {prefix}pad_to_square=true read as {prefix}image_aspect_ratio="
                              "'pad'; write the new key", FutureWarning, stacklevel=3)
        old = {k: data[k] for k in ("feature_norm", "projector_norm") if isinstance(data.get(k), bool)}
        standardise = data.pop("feature_standardise", None)
        if not old and standardise is None:
            return data
        if standardise is not None and not isinstance(standardise, bool):
            raise ConfigError(f"{prefix}feature_standardise: expected true/false, got {standardise!r}")
        token = old.get("feature_norm", False)
        if token and standardise:
            raise ConfigError(f"{prefix}feature_norm=true with {prefix}feature_standardise=true (a per-token and a "
                              "per-channel standardisation, both) has no equivalent in the current options")
        if "feature_norm" in old or standardise is not None:
            data["feature_norm"] = "token" if token else ("channel" if standardise else "none")
        if "projector_norm" in old:
            data["projector_norm"] = "rms" if old["projector_norm"] else "none"
        if standardise is not None:
            old["feature_standardise"] = standardise
        new = {prefix + k: data[k] for k in ("feature_norm", "projector_norm") if k in data}
        warnings.warn(f"deprecated config values {({prefix + k: v for k, v in old.items()})} read as {new}; "
                      "write the new values", FutureWarning, stacklevel=3)
        return data

    def __post_init__(self) -> None:
        if self.feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"model.feature_norm={self.feature_norm!r}: expected one of {list(FEATURE_NORMS)}")
        if self.projector_norm not in PROJECTOR_NORMS:
            raise ConfigError(f"model.projector_norm={self.projector_norm!r}: expected one of {list(PROJECTOR_NORMS)}")

        if self.projector not in PROJECTORS:
            raise ConfigError(f"model.projector={self.projector!r}: expected one of {sorted(PROJECTORS)}")
        if self.image_position not in IMAGE_POSITIONS:
            raise ConfigError(f"model.image_position={self.image_position!r}: expected one of {list(IMAGE_POSITIONS)}")
        if self.template not in TEMPLATE_NAMES:
            raise ConfigError(f"model.template={self.template!r}: expected one of {list(TEMPLATE_NAMES)}")
        if self.vision_select not in ("patch", "cls_patch"):
            raise ConfigError(f"model.vision_select={self.vision_select!r}: expected 'patch' or 'cls_patch'")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"model.image_size must be positive, got {self.image_size}")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ConfigError(f"model.image_aspect_ratio={self.image_aspect_ratio!r}: expected one of "
                              f"{list(IMAGE_ASPECT_RATIOS)}")
        if self.patch_merge not in PATCH_MERGES:
            raise ConfigError(f"model.patch_merge={self.patch_merge!r}: expected one of {list(PATCH_MERGES)}")
        if self.max_image_tokens is not None and self.max_image_tokens <= 0:
            raise ConfigError(f"model.max_image_tokens must be positive or null, got {self.max_image_tokens}")
        self._check_pinpoints()
        if self.anyres:
            if self.patch_merge == "spatial_unpad" and self.vision_select != "patch":
                raise ConfigError("model.patch_merge=spatial_unpad lays the tiles' grid tokens out as one grid and "
                                  "needs model.vision_select=patch (no CLS token)")
            if self.image_position != "none":
                raise ConfigError("model.image_position=learned_2d adds a position to each token of one square grid; "
                                  "it does not combine with model.image_aspect_ratio=anyres")
            if self.image_size is not None:
                self.grid_pinpoints(self.image_size)
        elif self.image_grid_pinpoints is not None or self.patch_merge != "flat":
            raise ConfigError("model.image_grid_pinpoints and model.patch_merge are read only with "
                              "model.image_aspect_ratio=anyres")

    def _check_pinpoints(self) -> None:
        points = self.image_grid_pinpoints
        if points is None:
            return
        if not points:
            raise ConfigError("model.image_grid_pinpoints is empty: give at least one [height, width] resolution, or "
                              "null for LLaVA-NeXT's list")
        for k, p in enumerate(points):
            if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p):
                raise ConfigError(f"model.image_grid_pinpoints[{k}]={p!r}: expected a pair [height, width] of positive "
                                  "integers (pixels)")


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


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


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
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads `2e-3` (no dot) as a string
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
    upgrade = getattr(cls, "upgrade", None)
    if upgrade is not None:  # keys of older configs
        data = upgrade(data, prefix)
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


# --------------------------------------------------------------------------------------------------
# Training run configuration (`vistune train --config FILE key=value ...`)

# Model keys that say how conversations are written (and bounded), not what the weights are: a stage may change them.
CONVERSATION_KEYS = ("template", "system_prompt", "max_image_tokens")
# Every other model key fixes the architecture that an `init_from` checkpoint brings.
ARCHITECTURE_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in CONVERSATION_KEYS)


@dataclass
class DataConfig:
    path: str = "examples/data/llava_sample.json"
    """LLaVA-format JSON list or JSONL file of training records."""
    image_folder: str | None = "examples/data/images"
    """Folder that the records' relative image paths start from (None: paths are used as written)."""
    max_length: int = 2048
    """Longest rendered sample in tokens (image positions included); longer ones are cut or skipped."""
    placement: str = "random"
    """Where the image goes in the first turn: `random` (the paper: before or after the question), `front`, `back`."""
    group_by_length: bool = True
    """Draw batches length-grouped by modality (image / text-only) to cut padding; False: plain shuffling."""
    num_workers: int = 2
    """DataLoader worker processes that load and render samples (0: in the training process)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required")
        if self.max_length <= 0:
            raise ConfigError(f"data.max_length must be positive, got {self.max_length}")
        if self.placement not in ("random", "front", "back"):
            raise ConfigError(f"data.placement={self.placement!r}: expected 'random', 'front' or 'back'")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


PRECISIONS = ("auto", "bf16", "fp32")
"""The values of `train.precision`."""


@dataclass
class TrainConfig:
    stage: int = 1
    """1: feature alignment (only the projector trains); 2: instruction tuning (projector + LLM, or LoRA)."""
    epochs: float = 1.0
    """Passes over the data (ignored when `max_steps` is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides `epochs` (the data repeats as needed)."""
    max_minutes: float | None = None
    """Wall-clock budget: stop after the step that crosses it and save the final model (schedule unchanged)."""
    lr: float = 2e-5
    """Peak learning rate (of the LLM in stage 2; of the projector unless `projector_lr` is set)."""
    projector_lr: float | None = None
    """Peak learning rate of the projector; None: `lr`."""
    image_position_lr: float | None = None
    """Peak learning rate of the projector's image position vectors (`model.image_position: learned_2d`, which
    start at zero and may need a higher rate than the projector's matrices to move); None: the projector's."""
    projector_init: str = "random"
    """How a fresh projector starts: `random` (PyTorch's default), or `ridge`: a linear projector is first fitted in
    closed form to the training captions (ridge regression from each image's mean-pooled features to the
    idf-weighted mean word embedding of its captions), then trained. Only for a new projector (no `init_from`)."""
    projector_init_ridge: float = 100.0
    """Ridge strength of `projector_init: ridge` (on per-channel standardised features)."""
    projector_init_images: int = 20000
    """Images (a seeded random subset) that `projector_init: ridge` reads."""
    projector_init_captions: str | None = None
    """Captions for `projector_init: ridge` (COCO captions JSON, or JSON/JSONL of `{image, caption}` or
    `{image, captions}`, image names relative to `data.image_folder`): all of an image's captions instead of the
    training records' one. Images of the training data that it lacks fall back to their records' captions."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norms)."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up linearly from 0."""
    schedule: str = "cosine"
    """Learning-rate decay after warmup: `cosine` (to 0), `linear` (to 0) or `constant`."""
    global_batch_size: int = 128
    """Samples per optimizer step over all processes = micro_batch_size x accumulation x processes."""
    micro_batch_size: int = 16
    """Samples per forward/backward pass in one process."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping; the norm is still logged)."""
    precision: str = "auto"
    """`bf16`: bfloat16 autocast over fp32 weights (CPU and GPU); `fp32`: full precision; `auto`: bf16 on GPUs
    that support it and on CPUs with native bf16 (AMX / AVX512-BF16), else fp32."""
    gradient_checkpointing: bool = False
    """Recompute the LLM's activations in the backward pass to save memory."""
    packing: bool = True
    """Pack each micro-batch's samples into rows of up to `data.max_length` tokens (positions restart per sample
    and attention stays within each sample, so losses and gradients are those of the unpacked batch) instead of
    padding every sample to the longest."""
    feature_cache: bool = True
    """Store the frozen tower's features once per image (keyed by image content and tower settings) and reuse
    them in later steps, epochs and stages instead of running the tower again (not with `strategy: fsdp` on
    several processes, where the tower is sharded)."""
    feature_cache_dir: str | None = None
    """Where the feature cache lives; None: `output_dir/feature_cache`. Point both stages at one directory to
    share it."""
    compile: bool = False
    """Compile each of the LLM's decoder layers with `torch.compile` (in place: parameter names and checkpoints
    are unchanged). The first step pays the compilation (on CPU it needs a C++ compiler); on 2 CPU cores it gave
    stage 1 about 1.1x and stage 2 nothing beyond the noise (`benchmarks/bench_peer.py --with compile`)."""
    sync_timing: bool = False
    """Wait for the GPU at every phase boundary so that `step_time_s` in metrics.jsonl (data, forward, backward,
    optimizer, bookkeeping) is the device's time, not the host's; costs some overlap. No effect on CPUs, where the
    split is always exact."""
    malloc_tuning: bool = True
    """On glibc, keep freed memory in the process (no mmap for large blocks, no trimming) so that every step does
    not fault the same pages in again; costs some resident memory."""
    seed: int = 42
    """Seed of the data order, image placement, LoRA initialisation and dropout."""
    lora: bool = False
    """Stage 2 only: train LoRA adapters on the LLM's linear layers (peft) instead of the whole LLM."""
    lora_r: int = 128
    """LoRA rank."""
    lora_alpha: int = 256
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    lora_target: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: `all-linear` (every linear layer but the LM head) or module-name suffixes."""
    save_every: int | None = 500
    """Write a resumable checkpoint every this many steps (None: only at the end)."""
    keep_last: int = 2
    """Resumable checkpoints kept in output_dir/checkpoints (older ones are deleted)."""
    log_every: int = 1
    """Write a metrics.jsonl record and refresh the progress bar every this many steps."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to output_dir/tensorboard (needs the `tensorboard` package)."""
    strategy: str = "ddp"
    """Several processes (torchrun): `ddp` (replicated weights) or `fsdp` (FSDP2 `fully_shard`)."""
    device: str = "auto"
    """`auto` (this process's CUDA device when there is one, else CPU), `cpu`, or `cuda`."""

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"train.stage must be 1 or 2, got {self.stage}")
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"train.max_steps must be positive, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be positive, got {self.max_minutes}")
        for key in ("lr", "adam_eps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        for key in ("projector_lr", "image_position_lr"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.projector_init not in ("random", "ridge"):
            raise ConfigError(f"train.projector_init={self.projector_init!r}: expected 'random' or 'ridge'")
        if self.projector_init_captions is not None and self.projector_init != "ridge":
            raise ConfigError("train.projector_init_captions is read only by train.projector_init=ridge")
        if self.projector_init_ridge < 0 or self.projector_init_images < 2:
            raise ConfigError("train.projector_init_ridge must be >= 0 and train.projector_init_images >= 2")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"train.schedule={self.schedule!r}: expected 'cosine', 'linear' or 'constant'")
        if self.micro_batch_size <= 0 or self.global_batch_size <= 0:
            raise ConfigError("train.global_batch_size and train.micro_batch_size must be positive")
        self.check_batch(1)
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be positive or null, got {self.max_grad_norm}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision={self.precision!r}: expected 'auto', 'bf16' or 'fp32'")
        if self.lora and self.stage != 2:
            raise ConfigError("train.lora=true needs train.stage=2 (stage 1 trains only the projector)")
        if self.lora_r <= 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("train.lora_r and train.lora_alpha must be positive and train.lora_dropout in [0, 1)")
        if not self.lora_target:
            raise ConfigError("train.lora_target must name at least one module (or `all-linear`)")
        if self.save_every is not None and self.save_every <= 0:
            raise ConfigError(f"train.save_every must be positive or null, got {self.save_every}")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"train.strategy={self.strategy!r}: expected 'ddp' or 'fsdp'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device={self.device!r}: expected 'auto', 'cpu' or 'cuda'")

    def check_batch(self, world_size: int) -> int:
        """Gradient-accumulation steps for `world_size` processes; raise unless the global batch splits exactly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not divisible by train.micro_batch_size="
                f"{self.micro_batch_size} x {world_size} process(es) = {per_step}")
        return self.global_batch_size // per_step

    @property
    def peak_projector_lr(self) -> float:
        return self.lr if self.projector_lr is None else self.projector_lr


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model's parts. With `init_from`, `load_run_config` takes them from that checkpoint (see
    `model_from_checkpoint`); only the template and system prompt may differ from it."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, checkpoints, logging, processes."""
    init_from: str | None = None
    """Checkpoint directory to start from (stage 2: stage 1's `output_dir/final`); None: build from `model`."""
    output_dir: str = "runs/train"
    """Run directory: config.yaml, metrics.jsonl, loss.png, checkpoints/step-N/, final/."""

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir is required")
        if self.init_from is not None and Path(self.init_from).resolve() == Path(self.output_dir).resolve():
            raise ConfigError("init_from and output_dir are the same directory; the run would overwrite its start")
        if self.model.feature_norm == "channel" and self.train.projector_init != "ridge" and self.init_from is None:
            raise ConfigError("model.feature_norm=channel needs train.projector_init=ridge (which measures the "
                              "per-channel feature statistics) for a new projector")
        if self.train.projector_init == "ridge":
            if self.model.anyres:
                raise ConfigError("train.projector_init=ridge fits the projector on one square image each; it does "
                                  "not take model.image_aspect_ratio=anyres (use random)")
            if self.init_from is not None:
                raise ConfigError("train.projector_init=ridge fits a new projector, but init_from brings one")
            if self.model.projector != "linear":
                raise ConfigError(f"train.projector_init=ridge needs model.projector=linear, not "
                                  f"{self.model.projector!r}")


def _model_values(model: dict, prefix: str = "model.") -> dict:
    """A model section (mapping) with every key present, values checked and coerced like a config file's."""
    return to_dict(from_dict(ModelConfig, model, prefix=prefix))


def _listing(items: dict, reference: dict) -> str:
    return ", ".join(f"model.{k}={v!r} (checkpoint: {reference.get(k)!r})" for k, v in items.items())


def architecture_conflicts(model: dict, checkpoint_model: dict) -> dict:
    """The architecture keys of `model` (a possibly partial model section) whose values differ from the
    checkpoint's model section: {key: value in `model`}."""
    hints = typing.get_type_hints(ModelConfig)
    model = ModelConfig.upgrade(model)
    return {k: v for k, v in model.items()
            if k in ARCHITECTURE_KEYS and _coerce(v, hints[k], f"model.{k}") != checkpoint_model.get(k)}


def check_matches_checkpoint(model: ModelConfig, checkpoint: str | Path) -> None:
    """Raise ConfigError listing every architecture key of `model` that differs from the checkpoint's."""
    ckpt = checkpoint_model(checkpoint)
    conflicts = architecture_conflicts(to_dict(model), ckpt)
    if conflicts:
        raise ConfigError(f"the model section differs from the init_from checkpoint {checkpoint} in "
                          f"{_listing(conflicts, ckpt)}; the model section must describe the checkpoint it starts "
                          f"from (load_run_config takes it from the checkpoint)")


def checkpoint_model(checkpoint: str | Path) -> dict:
    """The model section of a checkpoint's config.json, every key present (plain JSON; no model code)."""
    try:
        return _model_values(read_config(checkpoint).get("model") or {}, prefix=f"{checkpoint}: model.")
    except CheckpointError as e:
        raise ConfigError(f"init_from: {e}") from e


def model_from_checkpoint(checkpoint: str | Path, file_model: dict, override_model: dict
                          ) -> tuple[dict, str | None]:
    """The model section of a run that starts from `checkpoint`, and a one-line note naming what the config
    file asked for that the checkpoint replaced (None when nothing).

    file_model: the config file's model section; override_model: the command line's `model.*` overrides.
    Precedence: the architecture (every key but the template and system prompt) comes from the checkpoint; a
    command-line override that differs from it is an error, all such keys in one message; config-file keys that
    differ are noted and not used. The template and system prompt come from the command line, else from the config
    file where it names them, else from the checkpoint (so its system prompt is kept).
    """
    ckpt = checkpoint_model(checkpoint)
    conflicts = architecture_conflicts(override_model, ckpt)
    if conflicts:
        raise ConfigError(f"init_from {checkpoint} fixes the architecture, and these overrides differ from it: "
                          f"{_listing(conflicts, ckpt)}; drop them to fine-tune the checkpoint (or leave out "
                          f"init_from to build a new model)")
    model = dict(ckpt)
    chosen = {k: v for source in (file_model, override_model) for k, v in source.items() if k in CONVERSATION_KEYS}
    model.update(chosen)
    model = _model_values(model)
    unused = architecture_conflicts(file_model, ckpt)
    changed = {k: model[k] for k in chosen if model[k] != ckpt[k]}
    notes = []
    if unused:
        notes.append(f"the config file's {_listing(unused, ckpt)} are not used")
    if changed:
        notes.append(f"{_listing(changed, ckpt)} replace the checkpoint's")
    note = f"model section from init_from {checkpoint}: " + "; ".join(notes) if notes else None
    return model, note


def load_run_config(path: str | Path | None = None, overrides: list[str] = (), world_size: int | None = None,
                    read_init_from: bool = True) -> RunConfig:
    """YAML file (optional) + dotted overrides -> RunConfig; checks the batch split for `world_size` processes
    (default: $WORLD_SIZE, else 1).

    With `init_from`, the model section comes from that checkpoint (`model_from_checkpoint` says how the config
    file and the overrides take part) and what the config file asked for differently is logged in one line.
    read_init_from=False takes the model section as written (to check a config before its checkpoint exists).
    """
    data = load_yaml(path) if path is not None else {}
    file_model = dict(data["model"]) if isinstance(data.get("model"), dict) else {}
    override_data = apply_overrides({}, list(overrides))
    apply_overrides(data, list(overrides))
    run = from_dict(RunConfig, data)  # every key and value checked as written
    if read_init_from and run.init_from is not None:
        data["model"], note = model_from_checkpoint(run.init_from, file_model, override_data.get("model") or {})
        run = from_dict(RunConfig, data)
        if note:
            log.info(note)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    run.train.check_batch(world_size)
    return run
