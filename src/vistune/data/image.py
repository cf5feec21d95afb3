"""Image loading and preprocessing: the tower's resize / centre-crop / normalise, LLaVA-1.5's pad-to-square, or
LLaVA-NeXT's any-resolution tiles.

Resizing follows CLIP's processor exactly (shortest edge to `size` with bicubic resampling, long edge
`int(size * long / short)`, centre crop), so exported llava-hf checkpoints see the same pixels. With `pinpoints`
(anyres) an image becomes several tower-sized tiles: the whole image resized to one tile, then the tiles of the
image resized into its best-fitting resolution (keeping its aspect ratio, bicubic) and padded with black, row by
row, exactly as transformers' llava-next processor cuts them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vistune.data.anyres import best_resolution, fitted_size
from vistune.errors import UserError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageLoadError(UserError, ValueError):
    """An image that is missing or cannot be decoded; `reason` is "missing_image" or "unreadable_image"."""

    def __init__(self, message: str, reason: str = "unreadable_image") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageProcessorConfig:
    size: int
    """Shortest edge after resizing."""
    crop_size: int
    """Side of the square centre crop fed to the tower."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad_to_square: bool = False
    """Pad to a square with the mean colour before resizing (LLaVA-1.5)."""
    pinpoints: tuple[tuple[int, int], ...] | None = None
    """anyres: the resolutions (height, width) an image may be tiled at (None: one square image)."""

    def __post_init__(self) -> None:
        if self.pinpoints is not None:
            if self.size != self.crop_size or self.pad_to_square:
                raise ValueError("anyres tiles need size == crop_size and no pad_to_square")
            object.__setattr__(self, "pinpoints", tuple((int(h), int(w)) for h, w in self.pinpoints))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.pinpoints is None:  # square settings keep their original form (and feature-cache fingerprint)
            del d["pinpoints"]
        else:
            d["pinpoints"] = [list(p) for p in self.pinpoints]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessorConfig":
        pinpoints = d.get("pinpoints")
        return cls(size=int(d["size"]), crop_size=int(d["crop_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   pad_to_square=bool(d.get("pad_to_square", False)),
                   pinpoints=None if pinpoints is None else tuple(tuple(p) for p in pinpoints))


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open an image as RGB, fully decoded; raise ImageLoadError with the reason."""
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageLoadError(f"{path}: {im.width}x{im.height} exceeds {max_pixels} pixels")
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found", "missing_image") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{path}: cannot decode image ({e})") from None


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels; ImageLoadError as `load_image`."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found", "missing_image") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{path}: cannot decode image ({e})") from None


def read_image_bytes(path: str | Path) -> bytes:
    """The file's bytes (for content keys); raise ImageLoadError as `load_image` does when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found", "missing_image") from None
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot read image ({e})") from None


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


class ImageProcessor:
    """PIL image -> normalised tensor (3, crop_size, crop_size); anyres: (tiles, 3, crop_size, crop_size)."""

    def __init__(self, config: ImageProcessorConfig) -> None:
        self.config = config
        self._mean = np.asarray(config.mean, dtype=np.float32)
        self._std = np.asarray(config.std, dtype=np.float32)

    def fit(self, image: Image.Image) -> Image.Image:
        """The geometric part of preprocessing: RGB, padded to square (if configured), resized and cropped to
        crop_size x crop_size. When size == crop_size (every built-in tower) `fit(fit(x)) == fit(x)`, so a
        caller may shrink an image early (the server does, to bound memory) without changing the pixels."""
        c = self.config
        image = image.convert("RGB")
        if c.pad_to_square:
            image = expand_to_square(image, tuple(int(m * 255) for m in c.mean))  # type: ignore[arg-type]
        image = self._resize_shortest_edge(image, c.size)
        return self._center_crop(image, c.crop_size)

    @property
    def fit_is_stable(self) -> bool:
        """Whether `fit` is idempotent (size == crop_size, one square image)."""
        return self.config.size == self.config.crop_size and self.config.pinpoints is None

    @property
    def anyres(self) -> bool:
        return self.config.pinpoints is not None

    def num_tiles(self, size: tuple[int, int]) -> int:
        """Tower inputs for an image of `size` (width, height): 1, or anyres' base tile and grid tiles."""
        if not self.anyres:
            return 1
        h, w = best_resolution(size, self.config.pinpoints)
        return 1 + (h // self.config.crop_size) * (w // self.config.crop_size)

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """anyres: the base tile (the whole image resized to one tile), then the image's tiles row by row."""
        side = self.config.crop_size
        image = image.convert("RGB")
        target_h, target_w = best_resolution(image.size, self.config.pinpoints)
        new_w, new_h = fitted_size(image.size, (target_h, target_w))
        canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
        resized = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
        base = image.resize((side, side), resample=Image.Resampling.BICUBIC)
        return [base] + [canvas.crop((x, y, x + side, y + side))
                         for y in range(0, target_h, side) for x in range(0, target_w, side)]

    def _normalise(self, image: Image.Image) -> torch.Tensor:  # -> (3, H, W)
        x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        x = (x - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.anyres:
            return torch.stack([self._normalise(t) for t in self.tiles(image)])  # (P, 3, H, W)
        return self._normalise(self.fit(image))  # (3, H, W)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W); anyres: every image's tiles, image after image (sum of P, 3, H, W)."""
        if self.anyres:
            return torch.cat([self(im) for im in images])
        return torch.stack([self(im) for im in images])

    @staticmethod
    def _resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        if short == size:
            return image
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)

    @staticmethod
    def _center_crop(image: Image.Image, size: int) -> Image.Image:
        w, h = image.size
        if w < size or h < size:  # pad like transformers' center_crop, then crop
            canvas = Image.new("RGB", (max(w, size), max(h, size)), (0, 0, 0))
            canvas.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
            image, (w, h) = canvas, canvas.size
        top = (h - size) // 2
        left = (w - size) // 2
        return image.crop((left, top, left + size, top + size))
