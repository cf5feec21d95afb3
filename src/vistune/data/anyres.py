"""LLaVA-NeXT's any-resolution geometry: which tile grid an image gets, and how many image tokens it becomes.

An image of size (width, height) is fitted into the best of a list of resolutions ("pinpoints", (height, width) in
pixels, whole tiles of the tower's input size): the one that keeps the most of the image's pixels, and among those
the one that wastes the least area. It is resized into it keeping its aspect ratio, padded, and cut into tiles;
the whole image resized to one tile comes first (the base tile). Everything here depends only on the image's size
and the settings, so the number of image tokens is known before any pixel is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from vistune.config import PATCH_MERGES


def best_resolution(size: tuple[int, int], pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The pinpoint (height, width) that fits an image of `size` (width, height) best: most effective pixels after
    an aspect-preserving downscale (never more than the image has), then least wasted area."""
    width, height = size
    best, best_effective, best_waste = None, 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pw * ph - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (ph, pw), effective, waste
    assert best is not None, "no pinpoints"
    return best


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of `size` (width, height) resized into `target` (height, width) keeping its
    aspect ratio (the long side fills the target; the other rounded up, at most the target's)."""
    width, height = size
    th, tw = target
    if tw / width < th / height:
        return tw, min(math.ceil(height * tw / width), th)
    return min(math.ceil(width * th / height), tw), th


def unpadded_grid(rows: int, cols: int, size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a (rows, cols) feature grid that covered an image of `size` (width, height) resized into it and
    padded evenly on both sides, after removing the rows or columns that cover only padding."""
    width, height = size
    if width / height > cols / rows:  # wider than the grid: padding above and below
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return rows - 2 * pad, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return rows, cols - 2 * pad


@dataclass(frozen=True)
class AnyresLayout:
    """How an anyres model turns an image into tokens."""

    pinpoints: tuple[tuple[int, int], ...]
    """Allowed resolutions (height, width) in pixels, multiples of `tile`."""
    tile: int
    """The tower's input side in pixels."""
    grid: int
    """Feature-grid side of one tile (a tile gives grid² tokens, plus `extra`)."""
    extra: int = 0
    """Tokens beside the grid per tile (a kept CLS token; `flat` only)."""
    merge: str = "flat"
    """`flat` or `spatial_unpad` (`ModelConfig.patch_merge`)."""

    def __post_init__(self) -> None:
        if self.merge not in PATCH_MERGES:
            raise ValueError(f"unknown patch merge {self.merge!r}; expected one of {list(PATCH_MERGES)}")
        if self.merge == "spatial_unpad" and self.extra:
            raise ValueError("spatial_unpad needs grid tokens only (no CLS token)")
        if not self.pinpoints:
            raise ValueError("no pinpoints")

    @property
    def tokens_per_tile(self) -> int:
        return self.grid * self.grid + self.extra

    def resolution(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) in pixels an image of `size` (width, height) is tiled at."""
        return best_resolution(size, self.pinpoints)

    def grid_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of `size` (width, height); the base tile not counted."""
        h, w = self.resolution(size)
        return h // self.tile, w // self.tile

    def num_tiles(self, size: tuple[int, int]) -> int:
        """Tiles through the tower for one image: the base tile and the grid's."""
        rows, cols = self.grid_shape(size)
        return 1 + rows * cols

    def merged_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """`spatial_unpad`: (rows, cols) of the joined feature grid after removing padding-only rows / columns."""
        rows, cols = self.grid_shape(size)
        return unpadded_grid(rows * self.grid, cols * self.grid, size)

    def num_tokens(self, size: tuple[int, int]) -> int:
        """Image tokens of an image of `size` (width, height)."""
        if self.merge == "flat":
            return self.num_tiles(size) * self.tokens_per_tile
        rows, cols = self.merged_grid(size)
        return self.tokens_per_tile + rows * (cols + 1)  # base tile, then each row and its newline

    def describe(self, size: tuple[int, int]) -> str:
        """`2x3 tiles + base, 1234 tokens` for reports."""
        rows, cols = self.grid_shape(size)
        return f"{rows}x{cols} tiles + base, {self.num_tokens(size)} tokens"
