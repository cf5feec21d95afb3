"""Tiny random stand-ins of the real architectures (same transformers classes), for tests and smoke runs."""

from __future__ import annotations

import torch

from vistune.config import ModelConfig
from vistune.model.llm import load_tokenizer
from vistune.model.vision import EfficientNetTower, HFVisionTower, VisionTower
from vistune.model.vlm import VisionLanguageModel


def tiny_vision_tower(kind: str = "clip", layer: int = -2, select: str = "patch", image_size: int | None = None,
                      patch_size: int = 8, seed: int = 0) -> VisionTower:
    """A 2-layer CLIP or SigLIP vision transformer (width 32, 32 px), or an untrained EfficientNet-Lite0 (224 px)."""
    torch.manual_seed(seed)
    if kind == "efficientnet":
        return EfficientNetTower("efficientnet-lite0", layer, pretrained=False, image_size=image_size, select=select)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size or 32, patch_size=patch_size)
    if kind == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        model = CLIPVisionModel(CLIPVisionConfig(**common, projection_dim=32))
    elif kind == "siglip":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        model = SiglipVisionModel(SiglipVisionConfig(**common))
    else:
        raise ValueError(f"unknown tiny tower kind {kind!r}")
    return HFVisionTower(model, layer, select)


def tiny_llm(tokenizer, hidden_size: int = 64, layers: int = 2, seed: int = 0, tie: bool = True):
    """A 2-layer Llama over `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def tiny_vlm(tower: str = "clip", projector: str = "linear", template: str = "chat_template",
             tokenizer_name: str = "smollm2-135m-instruct", seed: int = 0, **tower_kwargs):
    """A complete tiny VisionLanguageModel with the default tokenizer."""
    tokenizer = load_tokenizer(tokenizer_name)
    vt = tiny_vision_tower(tower, seed=seed, **tower_kwargs)
    llm = tiny_llm(tokenizer, seed=seed)
    name = {"clip": "tiny-clip", "siglip": "tiny-siglip", "efficientnet": "efficientnet-lite0"}[tower]
    config = ModelConfig(vision_tower=name, vision_layer=vt.layer if hasattr(vt, "layer") else -2,
                         vision_select=getattr(vt, "select", "patch"), projector=projector, llm="tiny-llama",
                         template=template, image_size=tower_kwargs.get("image_size"))
    torch.manual_seed(seed)
    return VisionLanguageModel.from_parts(config, vt, llm, tokenizer)
