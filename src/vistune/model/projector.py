"""Projectors from vision features to LLM input embeddings.

Module names follow transformers' Llava (`linear_1`, `act`, `linear_2`) so exports map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vistune.config import PROJECTORS


class Projector(nn.Module):
    """`linear`: one matrix (the paper). `mlp2x_gelu`: linear, GELU, linear (LLaVA-1.5).

    With `output_rms`, every output vector is rescaled to that root-mean-square (kept as a buffer, so it is
    saved and loaded with the weights). With `standardise`, each input channel is first standardised with
    `input_mean` / `input_std` buffers (measured on training images by the warm start; an affine map that
    `folded_linear_1` merges into the first matrix for export). With `grid_tokens` (the tower's token count),
    learned `row_embed` / `col_embed` vectors (zero at first) are added to each grid token by its cell
    (`model.image_position: learned_2d`). With `image_newline`, it holds the learned vector that anyres'
    `spatial_unpad` merge puts after each row of image tokens (used by the model, not by `forward`)."""

    def __init__(self, kind: str, vision_dim: int, llm_dim: int, output_rms: float | None = None,
                 standardise: bool = False, grid_tokens: int | None = None, image_newline: bool = False) -> None:
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"unknown projector {kind!r}; expected one of {sorted(PROJECTORS)}")
        self.kind = kind
        self.linear_1 = nn.Linear(vision_dim, llm_dim)
        if kind == "mlp2x_gelu":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(llm_dim, llm_dim)
        self.register_buffer("output_rms", None if output_rms is None else torch.tensor(float(output_rms)))
        self.register_buffer("input_mean", torch.zeros(vision_dim) if standardise else None)
        self.register_buffer("input_std", torch.ones(vision_dim) if standardise else None)
        self.extra_tokens, self.grid_side = (0, 0) if grid_tokens is None else grid_layout(grid_tokens)
        if self.grid_side:
            self.row_embed = nn.Parameter(torch.zeros(self.grid_side, llm_dim))
            self.col_embed = nn.Parameter(torch.zeros(self.grid_side, llm_dim))
        self.register_parameter("image_newline", nn.Parameter(torch.randn(llm_dim) / math.sqrt(llm_dim))
                                if image_newline else None)  # LLaVA-NeXT's initialisation

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, N, Dv) -> (B, N, Dl)
        if self.input_mean is not None:
            features = (features - self.input_mean) / self.input_std
        x = self.linear_1(features)
        if self.kind == "mlp2x_gelu":
            x = self.linear_2(self.act(x))
        if self.output_rms is not None:
            x = x * (self.output_rms / x.float().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).to(x.dtype)
        if self.grid_side:
            if x.shape[-2] != self.extra_tokens + self.grid_side ** 2:
                raise ValueError(f"image_position learned_2d was built for {self.extra_tokens + self.grid_side ** 2} "
                                 f"image tokens, got {x.shape[-2]}")
            cells = (self.row_embed[:, None] + self.col_embed[None]).reshape(-1, x.shape[-1])  # (side², Dl)
            x = torch.cat([x[..., : self.extra_tokens, :], x[..., self.extra_tokens:, :] + cells.to(x.dtype)], -2)
        return x

    def position_parameters(self) -> list[nn.Parameter]:
        """The learned image position vectors (`image_position: learned_2d`; none otherwise)."""
        return [self.row_embed, self.col_embed] if self.grid_side else []

    def folded_linear_1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the first linear layer with the input standardisation merged in."""
        weight, bias = self.linear_1.weight, self.linear_1.bias
        if self.input_mean is None:
            return weight, bias
        folded = weight / self.input_std  # (Dl, Dv)
        return folded, bias - folded @ self.input_mean



def grid_layout(num_tokens: int) -> tuple[int, int]:
    """(tokens before the grid, grid side) of a tower's tokens: a square grid, or one CLS token and a square grid."""
    for extra in (0, 1):
        side = math.isqrt(num_tokens - extra)
        if side > 0 and side * side == num_tokens - extra:
            return extra, side
    raise ValueError(f"model.image_position=learned_2d needs a square grid of image tokens; the tower gives "
                     f"{num_tokens}")
