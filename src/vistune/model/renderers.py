"""Renderers for a model that may not be loaded: from an LLM name + tower, a checkpoint, or a run config.

Only the tokenizer and the tower's configuration are read (no weights), so data tools can render exactly as
training will without paying for a model load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vistune.config import ModelConfig, RunConfig, from_dict
from vistune.conversation import Renderer
from vistune.data.anyres import AnyresLayout
from vistune.model.checkpoint import read_config
from vistune.model.llm import load_tokenizer
from vistune.model.vision import EFFICIENTNET_WEIGHTS, EfficientNetTower


@dataclass
class RenderSetup:
    """A renderer and the longest sample the model trains on."""

    renderer: Renderer
    max_length: int | None
    """None where the source does not say (an LLM name, a checkpoint)."""
    source: str
    """What the settings came from, for messages."""
    anyres: AnyresLayout | None = None
    """How an image becomes tokens for an anyres model (its renderer then counts each image's own)."""
    max_image_tokens: int | None = None
    """The model's `max_image_tokens` bound, where the source has one."""


def num_image_tokens_for(vision_tower: str, layer: int = -2, select: str = "patch",
                         image_size: int | None = None) -> int:
    """Image positions per image for a tower, read from its config (no weights are loaded)."""
    return tower_geometry(vision_tower, layer, select, image_size)[0]


def tower_geometry(vision_tower: str, layer: int = -2, select: str = "patch",
                   image_size: int | None = None) -> tuple[int, int]:
    """(image positions per tower input, input side in pixels) of a tower, from its config (no weights)."""
    if vision_tower in EFFICIENTNET_WEIGHTS:
        tower = EfficientNetTower(vision_tower, layer, pretrained=False, image_size=image_size, select=select)
        return tower.num_tokens, tower.image_size
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(vision_tower)
    cfg = getattr(cfg, "vision_config", cfg)
    grid = (cfg.image_size // cfg.patch_size) ** 2
    return grid + (1 if select == "cls_patch" else 0), int(cfg.image_size)


def anyres_setup(model: ModelConfig, tokens_per_tile: int, tile: int) -> AnyresLayout | None:
    """The anyres layout of a model section (None unless anyres), for a tower of `tokens_per_tile` at `tile` px."""
    if not model.anyres:
        return None
    extra = 1 if model.vision_select == "cls_patch" else 0
    grid = math.isqrt(tokens_per_tile - extra)
    return AnyresLayout(tuple(model.grid_pinpoints(tile)), tile, grid, extra, model.patch_merge)


def _with_layout(setup: RenderSetup, model: ModelConfig, tokens_per_tile: int, tile: int) -> RenderSetup:
    setup.anyres = anyres_setup(model, tokens_per_tile, tile)
    setup.max_image_tokens = model.max_image_tokens
    if setup.anyres is not None:
        setup.renderer.image_tokens = setup.anyres.num_tokens
    return setup


def setup_for_llm(llm: str, template: str, vision_tower: str, num_image_tokens: int | None = None) -> RenderSetup:
    """An LLM by name (built-in, hub id or directory) with the image-token count of `vision_tower`."""
    n = num_image_tokens or num_image_tokens_for(vision_tower)
    return RenderSetup(Renderer(load_tokenizer(llm), template, n), None, f"--llm {llm}")


def setup_for_checkpoint(path: str | Path, template: str | None = None,
                         num_image_tokens: int | None = None) -> RenderSetup:
    """A vistune checkpoint's tokenizer, template, system prompt and image-token count."""
    from transformers import AutoTokenizer

    config = read_config(path)
    model = config["model"]
    tokenizer = AutoTokenizer.from_pretrained(Path(path) / "tokenizer")
    renderer = Renderer(tokenizer, template or model["template"], num_image_tokens or config["num_image_tokens"],
                        system=model.get("system_prompt"))
    setup = RenderSetup(renderer, None, f"checkpoint {path}")
    model_config = from_dict(ModelConfig, model, prefix="model.")
    return _with_layout(setup, model_config, config["num_image_tokens"], config["image_processor"]["crop_size"])


def setup_for_run(run: RunConfig, num_image_tokens: int | None = None) -> RenderSetup:
    """What `vistune train` with this config renders: its model (or its `init_from` checkpoint) and max_length."""
    if run.init_from is not None:
        setup = setup_for_checkpoint(run.init_from, run.model.template, num_image_tokens)
        setup.renderer.system = run.model.system_prompt or setup.renderer.system
        setup.max_image_tokens = run.model.max_image_tokens
    else:
        m = run.model
        per_tile, tile = tower_geometry(m.vision_tower, m.vision_layer, m.vision_select, m.image_size)
        n = num_image_tokens or per_tile
        setup = RenderSetup(Renderer(load_tokenizer(m.llm), m.template, n, system=m.system_prompt), None, "")
        _with_layout(setup, m, per_tile, tile)
    setup.max_length = run.data.max_length
    setup.source = "the run config"
    return setup
