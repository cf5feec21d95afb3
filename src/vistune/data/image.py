"""Image loading and preprocessing: the tower's resize / centre-crop / normalise, or LLaVA-1.5's pad-to-square.

Resizing follows CLIP's processor exactly (shortest edge to `size` with bicubic resampling, long edge
`int(size * long / short)`, centre crop), so exported llava-hf checkpoints see the same pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessorConfig":
        return cls(size=int(d["size"]), crop_size=int(d["crop_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   pad_to_square=bool(d.get("pad_to_square", False)))


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
    """PIL image -> normalised tensor (3, crop_size, crop_size)."""

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
        """Whether `fit` is idempotent (size == crop_size)."""
        return self.config.size == self.config.crop_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.fit(image)
        x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        x = (x - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, H, W)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self(im) for im in images])  # (B, 3, H, W)

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
