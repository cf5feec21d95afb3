"""Renderers for a model that may not be loaded: from an LLM name + tower, a checkpoint, or a run config.

Only the tokenizer and the tower's configuration are read (no weights), so data tools can render exactly as
training will without paying for a model load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vistune.config import RunConfig
from vistune.conversation import Renderer
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


def num_image_tokens_for(vision_tower: str, layer: int = -2, select: str = "patch",
                         image_size: int | None = None) -> int:
    """Image positions per image for a tower, read from its config (no weights are loaded)."""
    if vision_tower in EFFICIENTNET_WEIGHTS:
        return EfficientNetTower(vision_tower, layer, pretrained=False, image_size=image_size).num_tokens
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(vision_tower)
    cfg = getattr(cfg, "vision_config", cfg)
    grid = (cfg.image_size // cfg.patch_size) ** 2
    return grid + (1 if select == "cls_patch" else 0)


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
    return RenderSetup(renderer, None, f"checkpoint {path}")


def setup_for_run(run: RunConfig, num_image_tokens: int | None = None) -> RenderSetup:
    """What `vistune train` with this config renders: its model (or its `init_from` checkpoint) and max_length."""
    if run.init_from is not None:
        setup = setup_for_checkpoint(run.init_from, run.model.template, num_image_tokens)
        setup.renderer.system = run.model.system_prompt or setup.renderer.system
    else:
        m = run.model
        n = num_image_tokens or num_image_tokens_for(m.vision_tower, m.vision_layer, m.vision_select, m.image_size)
        setup = RenderSetup(Renderer(load_tokenizer(m.llm), m.template, n, system=m.system_prompt), None, "")
    setup.max_length = run.data.max_length
    setup.source = "the run config"
    return setup
