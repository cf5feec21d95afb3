"""Frozen vision-tower features stored once per image and reused across steps, epochs and both stages.

An entry is keyed by the image file's content and a fingerprint of everything that shapes its features (the
tower's config and weights, the layer and tokens taken, the image processing, the compute precision), so a
change of any of them misses instead of returning stale features. One safetensors file per entry:

    DIR/<fingerprint[:16]>/<key[:2]>/<key>.safetensors   tensor "features" (N, D_v); metadata: its sha256

An anyres image's tiles are entries of their own, keyed by the image's key and the tile's index (`tile_key`).

An entry that cannot be read, whose checksum or fingerprint does not match, is deleted and reported as a miss
(the caller recomputes and stores it again); it is never used. Entries are written to a temporary name and
renamed, so concurrent writers (data-loader workers, several processes) never expose a half-written file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vistune.utils.io import atomic_path

log = logging.getLogger(__name__)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = t.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Tower features on disk under `directory`, for one `fingerprint` of the tower settings."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(directory) / fingerprint[:16]
        self.hits = self.misses = self.rejected = 0

    def key(self, image_bytes: bytes) -> str:
        return hashlib.sha256(self.fingerprint.encode() + b"\0" + image_bytes).hexdigest()

    @staticmethod
    def tile_key(key: str, tile: int) -> str:
        """The key of tile `tile` (0: the base tile) of the image whose key is `key`."""
        return hashlib.sha256(f"{key}:tile:{tile}".encode()).hexdigest()

    def load_tiles(self, key: str, tiles: int) -> torch.Tensor | None:
        """(tiles, N, D_v) of an anyres image when every tile is stored, else None."""
        found = []
        for t in range(tiles):
            features = self.load(self.tile_key(key, t))
            if features is None:
                return None
            found.append(features)
        return torch.stack(found)

    def store_tiles(self, key: str, features: torch.Tensor) -> None:
        """Store an anyres image's tile features (P, N, D_v), one entry per tile."""
        for t, tile in enumerate(features):
            self.store(self.tile_key(key, t), tile)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        """The stored features, or None (missing; unreadable, corrupt or stale entries are deleted)."""
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
            problem = ("another tower fingerprint" if meta.get("fingerprint") != self.fingerprint else
                       "checksum mismatch" if meta.get("sha256") != tensor_digest(features) else None)
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
            problem = f"unreadable ({e})"
        if problem is None:
            self.hits += 1
            return features
        log.warning("feature cache entry %s: %s; recomputing it", path, problem)
        path.unlink(missing_ok=True)
        self.rejected += 1
        self.misses += 1
        return None

    def store(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().contiguous().cpu()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": features}, str(tmp),
                      metadata={"sha256": tensor_digest(features), "fingerprint": self.fingerprint})
