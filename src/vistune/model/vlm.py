"""The visual assistant: frozen vision tower -> projector -> causal LM, spliced at the image positions.

`input_ids` carry `IMAGE_TOKEN_ID` at every image position (the renderer expands each placeholder to
exactly `num_image_tokens` positions, or with anyres to that image's own count); `embed` replaces them with
projected features and raises when the count of positions differs from the images' feature count.

Anyres (`model.image_aspect_ratio: anyres`): each image arrives as its tiles (the base tile first), all tiles of a
batch stacked (sum of P, 3, H, W) with `image_sizes` (each image's (width, height)); every tile goes through the
tower and the projector, then `merge_tiles` lays one image's tiles out as its tokens (`flat`, or `spatial_unpad`
with the learned `projector.image_newline`). The loss applies the LM head only at
supervised positions, so no full-vocabulary logits are built for prompts, images or padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vistune.config import ModelConfig
import dataclasses
import math
from typing import Sequence

from vistune.config import ConfigError
from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID, Renderer
from vistune.data.anyres import AnyresLayout
from vistune.data.image import ImageProcessor
from vistune.model.llm import load_llm
from vistune.model.projector import Projector
from vistune.model.vision import VisionTower, build_vision_tower


class ImageTokenMismatch(ValueError):
    """The text's image positions and the images' feature count differ."""


@dataclass
class VLMOutput:
    loss: torch.Tensor | None = None
    """Mean cross-entropy over supervised tokens of this batch."""
    loss_sum: torch.Tensor | None = None
    """Summed cross-entropy (for exact normalisation across micro-batches and processes)."""
    num_tokens: int = 0
    """Number of supervised tokens."""
    logits: torch.Tensor | None = None


class VisionLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig, vision_tower: VisionTower, projector: Projector, llm: nn.Module,
                 tokenizer, image_processor: ImageProcessor) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.anyres = anyres_layout(config, vision_tower, image_processor)
        """How an image becomes tokens with `image_aspect_ratio: anyres` (None: `num_image_tokens` each)."""
        if (self.anyres is not None and self.anyres.merge == "spatial_unpad") != (projector.image_newline is not None):
            raise ValueError("the projector's image_newline must exist exactly with model.patch_merge=spatial_unpad")
        self.renderer = Renderer(tokenizer, config.template, vision_tower.num_tokens, system=config.system_prompt,
                                 image_tokens=self.image_tokens)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ---------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def build(cls, config: ModelConfig, dtype: torch.dtype = torch.float32) -> "VisionLanguageModel":
        """Assemble a fresh model from the parts named in `config` (pretrained tower and LLM, new projector)."""
        tower = build_vision_tower(config.vision_tower, config.vision_layer, config.vision_select, dtype,
                                   config.image_size)
        llm, tokenizer = load_llm(config.llm, dtype)
        return cls.from_parts(config, tower, llm, tokenizer)

    @classmethod
    def from_parts(cls, config: ModelConfig, tower: VisionTower, llm: nn.Module, tokenizer,
                   projector: Projector | None = None) -> "VisionLanguageModel":
        if config.image_size is not None and config.image_size != tower.image_size:
            why = (f" (a transformers tower runs at {tower.image_size} px, the size of its position embeddings; "
                   "leave image_size unset)" if tower.kind == "hf" else "")
            raise ValueError(f"model.image_size={config.image_size} but the tower was built for "
                             f"{tower.image_size} px{why}")
        llm_dim = llm.get_input_embeddings().weight.shape[1]
        if projector is None:
            embeddings = llm.get_input_embeddings().weight.detach()
            output_rms = float(embeddings.float().pow(2).mean().sqrt()) if config.projector_norm == "rms" else None
            projector = Projector(config.projector, tower.hidden_size, llm_dim, output_rms,
                                  config.feature_norm == "channel",
                                  tower.num_tokens if config.image_position == "learned_2d" else None,
                                  image_newline=config.anyres and config.patch_merge == "spatial_unpad",
                                  ).to(embeddings.dtype)
        processor_config = tower.processor_config(config.image_size, config.pad_to_square)
        if config.anyres:
            processor_config = dataclasses.replace(processor_config,
                                                   pinpoints=tuple(config.grid_pinpoints(tower.image_size)))
        return cls(config, tower, projector, llm, tokenizer, ImageProcessor(processor_config))

    def set_conversation(self, template: str, system_prompt: str | None) -> None:
        """Switch the conversation template and system prompt (e.g. stage 1's `plain` -> stage 2's chat format)."""
        from dataclasses import replace

        self.config = replace(self.config, template=template, system_prompt=system_prompt)
        self.renderer = Renderer(self.tokenizer, template, self.num_image_tokens, system=system_prompt,
                                 image_tokens=self.image_tokens)

    def feature_fingerprint(self, precision: str) -> str:
        """sha256 of everything that shapes the tower's features: its config and weights, the layer and tokens
        taken, the image processing, and the compute precision (`bf16` or `fp32`)."""
        import hashlib
        import json

        from vistune.data.feature_cache import tensor_digest

        settings = {"tower": self.vision_tower.config_dict(), "layer": self.config.vision_layer,
                    "select": self.config.vision_select, "image_size": self.config.image_size,
                    "processor": self.image_processor.config.to_dict(), "precision": precision}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for name, t in sorted(self.vision_tower.state_dict().items()):
            h.update(f"{name}:{tensor_digest(t)}".encode())
        return h.hexdigest()

    @property
    def num_image_tokens(self) -> int:
        """Tokens of one image (anyres: of one tile; an image's count is `image_tokens(size)`)."""
        return self.vision_tower.num_tokens

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Image positions of an image of `size` (width, height)."""
        return self.num_image_tokens if self.anyres is None else self.anyres.num_tokens(size)

    def tiles_per_image(self, image_sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Tower inputs per image (1 each without anyres)."""
        return [1 if self.anyres is None else self.anyres.num_tiles(tuple(s)) for s in image_sizes]

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ---------------------------------------------------------------------------------------------
    # forward

    def projector_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (I, 3, H, W) -> (I, N, D_v)
        """The tower's features as the projector receives them."""
        return self.prepare_features(self.vision_tower(pixel_values.to(self.device)))  # no grad

    def prepare_features(self, features: torch.Tensor) -> torch.Tensor:  # (I, N, D_v) -> (I, N, D_v)
        """The tower's raw features (e.g. from the feature cache) as the projector receives them."""
        features = features.to(self.device)
        if self.config.feature_norm == "token":
            features = F.layer_norm(features.float(), features.shape[-1:])
        return features.to(self.projector.linear_1.weight.dtype)

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
                      ) -> torch.Tensor | list[torch.Tensor]:
        """(I, 3, H, W) -> (I, N, D_llm); anyres: tiles (sum of P, 3, H, W) and `image_sizes` -> per image (M_i, D)."""
        if self.anyres is None:
            return self.projector(self.projector_inputs(pixel_values))
        return self.project(self.vision_tower(pixel_values.to(self.device)), image_sizes)

    def project(self, features: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
                ) -> torch.Tensor | list[torch.Tensor]:
        """The tower's raw features (I, N, D_v) -> (I, N, D_llm); anyres: every tile's (sum of P, N, D_v) and
        `image_sizes` -> per image (M_i, D_llm)."""
        x = self.projector(self.prepare_features(features))
        if self.anyres is None:
            return x
        if image_sizes is None:
            raise ValueError("an anyres model needs each image's size (image_sizes) to lay out its tiles")
        return self.merge_tiles(x, image_sizes)

    def merge_tiles(self, tiles: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Projected tile features (sum of P, N, D) -> each image's tokens (M_i, D), in order."""
        layout, counts = self.anyres, self.tiles_per_image(image_sizes)
        if sum(counts) != tiles.shape[0]:
            raise ImageTokenMismatch(f"{tiles.shape[0]} tiles for {len(counts)} image(s) that take {sum(counts)}")
        out = []
        for size, feats in zip(image_sizes, torch.split(tiles, counts)):  # feats: (P, N, D)
            size = tuple(int(v) for v in size)
            if layout.merge == "flat":
                out.append(feats.reshape(-1, feats.shape[-1]))  # (P * N, D)
                continue
            rows, cols = layout.grid_shape(size)
            g, d = layout.grid, feats.shape[-1]
            grid = feats[1:].view(rows, cols, g, g, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, d)
            r, c = layout.merged_grid(size)
            top, left = (rows * g - r) // 2, (cols * g - c) // 2
            grid = grid[top:top + r, left:left + c]  # (r, c, D): the rows / columns over padding removed
            newline = self.projector.image_newline.to(grid.dtype).expand(r, 1, d)
            out.append(torch.cat([feats[0], torch.cat([grid, newline], 1).reshape(-1, d)]))  # (N + r (c + 1), D)
        return out

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | Sequence[torch.Tensor] | None
              ) -> torch.Tensor:
        """Token embeddings with image features spliced in; (B, T) -> (B, T, D). image_features: (I, N, D), or
        per image (M_i, D) (anyres)."""
        is_image = input_ids == IMAGE_TOKEN_ID
        n_positions = int(is_image.sum())
        if image_features is not None and not isinstance(image_features, torch.Tensor):
            image_features = list(image_features)
            counts = [f.shape[0] for f in image_features]
            image_features = torch.cat(image_features) if image_features else None  # (sum of M_i, D)
            n_features, what = sum(counts), f"{len(counts)} image(s) of {counts} features"
        else:
            n_features = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
            n_images = 0 if image_features is None else image_features.shape[0]
            what = f"{n_images} image(s) x {self.num_image_tokens} features"
        if n_positions != n_features:
            raise ImageTokenMismatch(f"the text has {n_positions} image positions but {what} = {n_features}")
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))  # (B, T, D)
        if n_positions:
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), image_features.to(embeds.dtype).reshape(-1))
        return embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_logits: bool = False, position_ids: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None,
                image_sizes: Sequence[tuple[int, int]] | None = None) -> VLMOutput:
        """position_ids (B, T): packed rows (positions restart at 0 for every sample, `collate(pack=...)`); the
        LLM then keeps attention within each sample and `attention_mask` is not used.
        image_features (I, N, D_v): the tower's features (feature cache) instead of `pixel_values`.
        image_sizes: each image's (width, height), for anyres (pixels and features are then every tile's)."""
        if image_features is not None:
            features = self.project(image_features, image_sizes)
        elif pixel_values is not None and len(pixel_values):
            features = self.encode_images(pixel_values, image_sizes)
        else:
            features = None
        embeds = self.embed(input_ids, features)
        if position_ids is not None:
            attention_mask = None  # transformers builds the block-diagonal causal mask from the restarts
        llm_kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
        if labels is None or return_logits:
            logits = self.llm(inputs_embeds=embeds, **llm_kwargs).logits
            out = VLMOutput(logits=logits)
            if labels is not None:
                flat_labels = labels[:, 1:].reshape(-1)
                loss_sum = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), flat_labels,
                                           ignore_index=IGNORE_INDEX, reduction="sum")
                out.num_tokens = int((flat_labels != IGNORE_INDEX).sum())
                out.loss_sum, out.loss = loss_sum, loss_sum / max(out.num_tokens, 1)
            return out
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, **llm_kwargs).last_hidden_state
        return self.supervised_loss(hidden, labels)

    def supervised_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> VLMOutput:
        """Cross-entropy from hidden states (B, T, D), applying the LM head only where labels are set."""
        targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]  # (M, D)
        logits = self._lm_logits(selected).float()  # (M, V)
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        n = int(keep.sum())
        return VLMOutput(loss=loss_sum / max(n, 1), loss_sum=loss_sum, num_tokens=n)

    def _lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.llm.get_output_embeddings()(hidden)
        cfg = self.llm.config
        if getattr(cfg, "logit_scale", None) is not None:
            logits = logits * cfg.logit_scale
        if getattr(cfg, "final_logit_softcapping", None) is not None:
            cap = cfg.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits


def anyres_layout(config: ModelConfig, tower: VisionTower, processor: ImageProcessor) -> AnyresLayout | None:
    """The anyres layout of a model (None unless `image_aspect_ratio: anyres`); refuses a tower whose tokens are not
    a square grid (plus a CLS token with `flat`) and a processor without tile resolutions."""
    if not config.anyres:
        return None
    if processor.config.pinpoints is None or processor.config.crop_size != tower.image_size:
        raise ValueError("an anyres model needs an image processor with tile resolutions at the tower's size")
    extra = getattr(tower, "num_extra", 0) - getattr(tower, "drop", 0)  # a kept CLS token
    side = math.isqrt(tower.num_tokens - extra)
    if side * side != tower.num_tokens - extra:
        raise ConfigError(f"model.image_aspect_ratio=anyres needs a square grid of tokens per tile; the tower gives "
                          f"{tower.num_tokens}")
    return AnyresLayout(processor.config.pinpoints, tower.image_size, side, extra, config.patch_merge)
