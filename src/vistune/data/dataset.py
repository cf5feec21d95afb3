"""LLaVA-format datasets: records, structural checks, lazy image loading, rendering, right-padded batches.

A record is `{"id", "image" (relative path, absent for text-only), "conversations": [{"from", "value"}]}`.
Several images: `"image"` is a list of paths, one per `<image>` placeholder, in the order the placeholders
appear (any user turn); a list of one path is the same record as the path alone.
Structurally bad records are dropped when the dataset is built; samples that fail when loaded (an unreadable
image, too long after rendering) come back as `Skipped` so the loader can count them instead of dying.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from vistune.conversation import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    Message,
    Placement,
    Renderer,
    RenderError,
    messages_from_llava,
    sample_rng,
    validate_messages,
)
from vistune.data.feature_cache import FeatureCache
from vistune.data.image import ImageLoadError, ImageProcessor, load_image, read_image_bytes, read_image_size
from vistune.errors import UserError
from vistune.utils.io import read_json_or_jsonl

log = logging.getLogger(__name__)

# Reasons a record is bad, as `vistune data check` reports them.
REASONS = {
    "invalid_record": "not an object with a 'conversations' list",
    "missing_image": "image file not found",
    "unreadable_image": "image file cannot be decoded",
    "no_image_placeholder": "record has an image but no <image> in its text",
    "multiple_images": "more than one <image> in the text but 'image' is one path (several images: a list)",
    "image_count_mismatch": "the number of <image> placeholders differs from the number of images",
    "placeholder_without_image": "<image> in the text but the record has no image",
    "image_not_in_first_turn": "<image> is not in the first human turn",
    "empty_turn": "a turn has no text",
    "first_not_human": "the first turn is not from the human",
    "roles_not_alternating": "human and gpt turns do not alternate",
    "ends_with_human": "the last turn is not an answer",
    "too_long": "longer than max_length after rendering (or the image would be cut)",
    "too_many_image_tokens": "an image takes more tokens than model.max_image_tokens",
}


class BadRecord(UserError, ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail or REASONS.get(reason, '')}")
        self.reason = reason
        self.detail = detail or REASONS.get(reason, "")


def record_id(record: Any, index: int) -> str:
    return str(record.get("id", index)) if isinstance(record, dict) else str(index)


def record_images(record: dict) -> list[str]:
    """The image paths of a record, in placeholder order: `image` as one path, a list of paths, or absent / None /
    "" / [] for none. Raises BadRecord("invalid_record") naming anything else."""
    image = record.get("image")
    if image is None or image == "":
        return []
    if isinstance(image, str):
        return [image]
    if not isinstance(image, list):
        raise BadRecord("invalid_record", f"'image' is a {type(image).__name__}, not a path or a list of paths")
    for k, path in enumerate(image):
        if not isinstance(path, str) or not path:
            raise BadRecord("invalid_record", f"'image'[{k}] is {path!r}, not a path")
    return list(image)


def record_messages(record: Any) -> list[Message]:
    """Validate a record's structure and return its messages; raise BadRecord with a reason."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise BadRecord("invalid_record")
    try:
        messages = messages_from_llava(record["conversations"])
    except RenderError as e:
        raise BadRecord("invalid_record", str(e)) from None
    body = [m for m in messages if m.role != "system"] if messages and messages[0].role == "system" else messages
    if not body:
        raise BadRecord("invalid_record", "no turns")
    offset = len(messages) - len(body)  # a leading system turn
    speakers = [t["from"] for t in record["conversations"]]

    def name(role: str) -> str:  # the data's own word for a role, as `data check` reports it
        return next((w for w, m in zip(speakers, messages) if m.role == role), {"user": "human"}.get(role, "gpt"))

    if body[0].role != "user":
        raise BadRecord("first_not_human", f"turn {offset} is from {speakers[offset]!r}, not {name('user')!r}")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise BadRecord("roles_not_alternating",
                            f"turn {i + offset} is from {speakers[i + offset]!r}, expected {name(expected)!r}")
        if not m.content:
            raise BadRecord("empty_turn", f"turn {i + offset} (from {speakers[i + offset]!r})")
    if body[-1].role != "assistant":
        raise BadRecord("ends_with_human")
    placeholders = [m.content.count(IMAGE_PLACEHOLDER) for m in body]
    total = sum(placeholders)
    answer = next((i for i, m in enumerate(body) if m.role == "assistant" and IMAGE_PLACEHOLDER in m.content), None)
    if answer is not None:
        raise BadRecord("image_not_in_first_turn", f"<image> in an answer (turn {answer + offset})")
    images = record_images(record)
    if total and not images:
        raise BadRecord("placeholder_without_image", f"{total} <image> placeholder(s) but the record has no image")
    if images and not total:
        raise BadRecord("no_image_placeholder", f"{len(images)} image(s) but no <image> in the text")
    if total != len(images):
        if isinstance(record["image"], str):
            raise BadRecord("multiple_images", f"{total} placeholders but 'image' is one path (for several images, "
                                               f"give 'image' as a list of {total} paths)")
        raise BadRecord("image_count_mismatch", f"{total} <image> placeholders but {len(images)} images in 'image'")
    if len(images) == 1 and placeholders[0] != 1:
        where = next(i for i, n in enumerate(placeholders) if n)
        raise BadRecord("image_not_in_first_turn", f"the only <image> is in turn {where + offset}")
    validate_messages(messages, for_generation=False)  # the renderer's own rules, as a last check
    return messages


@dataclass
class SampleImage:
    """One image of a sample: its pixels, or its tower features from the feature cache."""

    pixels: torch.Tensor | None  # (3, H, W), anyres (P, 3, H, W); None when the cache had the features
    features: torch.Tensor | None = None  # (N, D_v), anyres (P, N, D_v): the tower's features from the feature cache
    key: str | None = None
    """Feature-cache key (content + tower settings) when the dataset has a cache."""
    size: tuple[int, int] | None = None
    """anyres: the image's (width, height), which sets its tiles and token count."""


@dataclass
class Sample:
    id: str
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,)
    pixel_values: torch.Tensor | None  # (3, H, W): the image of a one-image sample (see `images`)
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    features: torch.Tensor | None = None  # (N, D_v): the tower's features from the feature cache (then no pixels)
    image_key: str | None = None
    """Feature-cache key of the image (content + tower settings) when the dataset has a cache."""
    images: list[SampleImage] | None = None
    """Every image, in the order of `image_spans`. Left out, it is the one image that `pixel_values`, `features`
    and `image_key` describe (or none); a sample with several images gives this list and leaves those three
    None."""

    def __post_init__(self) -> None:
        if self.images is None:
            one = self.pixel_values is not None or self.features is not None
            self.images = [SampleImage(self.pixel_values, self.features, self.image_key)] if one else []

    @property
    def has_image(self) -> bool:
        return bool(self.images)


@dataclass
class Skipped:
    id: str
    reason: str
    detail: str = ""


class LlavaDataset(Dataset):
    """Map-style dataset over LLaVA records; `dataset[i]` is a `Sample` or a `Skipped`."""

    def __init__(self, records: Sequence[dict] | str | Path, image_folder: str | Path | None, renderer: Renderer,
                 image_processor: ImageProcessor, max_length: int = 2048, seed: int = 0,
                 placement: Placement = "random", feature_cache: FeatureCache | None = None,
                 max_image_tokens: int | None = None) -> None:
        """`feature_cache`: images whose tower features it holds are not decoded (the sample carries the
        features); the others carry pixels and their cache key. `max_image_tokens`: a sample with an image that
        takes more is skipped (`too_many_image_tokens`)."""
        if isinstance(records, (str, Path)):
            records = read_json_or_jsonl(records)
        self.image_folder = Path(image_folder) if image_folder else None
        self.renderer = renderer
        self.image_processor = image_processor
        self.max_length = max_length
        self.seed = seed
        self.placement = placement
        self.feature_cache = feature_cache
        self.max_image_tokens = max_image_tokens
        self.epoch = 0
        self.skipped: Counter[str] = Counter()
        self.records: list[dict] = []
        self.messages: list[list[Message]] = []
        for i, record in enumerate(records):
            try:
                self.messages.append(record_messages(record))
            except BadRecord as e:
                self.skipped[e.reason] += 1
                continue
            self.records.append(record)
        if self.skipped:
            log.warning("skipped %d invalid record(s): %s", sum(self.skipped.values()), dict(self.skipped))

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def has_image(self, i: int) -> bool:
        return self.num_images(i) > 0

    def num_images(self, i: int) -> int:
        return len(record_images(self.records[i]))

    @property
    def lengths(self) -> list[int]:
        """Approximate token counts (about 4 characters per token plus the images), for length grouping. anyres:
        each image's own token count, from its file's header (one tile's count where it cannot be read)."""
        n_img = self.renderer.num_image_tokens
        if self.image_processor.anyres:
            return [sum(len(m.content) for m in msgs) // 4 + sum(self._image_tokens(p) for p in self.image_paths(r))
                    for r, msgs in zip(self.records, self.messages)]
        return [sum(len(m.content) for m in msgs) // 4 + n_img * self.num_images(i)
                for i, msgs in enumerate(self.messages)]

    def _image_tokens(self, path: Path) -> int:
        try:
            return self.renderer.image_token_count(read_image_size(path))
        except ImageLoadError:
            return self.renderer.num_image_tokens  # the sample is skipped when loaded

    def resolve(self, image: str) -> Path:
        """An image path of a record, relative to the image folder unless absolute."""
        path = Path(image)
        return path if self.image_folder is None or path.is_absolute() else self.image_folder / path

    def image_paths(self, record: dict) -> list[Path]:
        """The record's image files, in placeholder order."""
        return [self.resolve(image) for image in record_images(record)]

    def image_path(self, record: dict) -> Path:
        """The image file of a one-image record."""
        (path,) = self.image_paths(record)
        return path

    def _load_image(self, path: Path) -> SampleImage:
        if self.image_processor.anyres:
            return self._load_tiles(path)
        features = key = None
        if self.feature_cache is not None:
            key = self.feature_cache.key(read_image_bytes(path))
            features = self.feature_cache.load(key)
        pixels = self.image_processor(load_image(path)) if features is None else None
        return SampleImage(pixels, features, key)

    def _load_tiles(self, path: Path) -> SampleImage:
        """An anyres image: its size from the header, its tiles' features from the cache or its tiles' pixels."""
        size = read_image_size(path)
        features = key = None
        if self.feature_cache is not None:
            key = self.feature_cache.key(read_image_bytes(path))
            features = self.feature_cache.load_tiles(key, self.image_processor.num_tiles(size))
        pixels = self.image_processor(load_image(path)) if features is None else None  # (P, 3, H, W)
        return SampleImage(pixels, features, key, size)

    def __getitem__(self, i: int) -> Sample | Skipped:
        record = self.records[i]
        rid = record_id(record, i)
        paths = self.image_paths(record)
        images = []
        for k, path in enumerate(paths):
            try:
                images.append(self._load_image(path))
            except ImageLoadError as e:
                return Skipped(rid, e.reason, f"image {k}: {e}" if len(paths) > 1 else str(e))
        sizes = [im.size for im in images] if self.image_processor.anyres else None
        if sizes is not None and self.max_image_tokens is not None:
            over = image_token_excess(self.renderer, sizes, self.max_image_tokens)
            if over:
                return Skipped(rid, "too_many_image_tokens", over)
        try:
            rendered = self.renderer.render(self.messages[i], num_images=len(images),
                                            placement=self.placement,
                                            rng=sample_rng(self.seed, i, self.epoch), image_sizes=sizes)
        except RenderError as e:
            return Skipped(rid, "invalid_record", str(e))
        ids, labels = rendered.input_ids, rendered.labels
        if len(ids) > self.max_length:
            if any(end > self.max_length for _, end in rendered.image_spans):
                last = max(k for k, (_, end) in enumerate(rendered.image_spans) if end > self.max_length)
                what = "the image" if len(images) == 1 else f"image {last}"
                return Skipped(rid, "too_long", f"{len(ids)} tokens; {what} ends past {self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                return Skipped(rid, "too_long", f"{len(rendered)} tokens; nothing supervised in the first "
                                                f"{self.max_length}")
        if len(images) == 1:
            (one,) = images
            return Sample(rid, torch.tensor(ids), torch.tensor(labels), one.pixels, rendered.image_spans,
                          one.features, one.key, images=images)
        return Sample(rid, torch.tensor(ids), torch.tensor(labels), None, rendered.image_spans, images=images)


def image_token_excess(renderer: Renderer, sizes: Sequence[tuple[int, int]], bound: int) -> str:
    """Why images of `sizes` exceed `bound` image tokens each ("" when none does)."""
    over = [(k, size, renderer.image_token_count(size)) for k, size in enumerate(sizes)]
    over = [(k, size, n) for k, size, n in over if n > bound]
    return "; ".join(f"image {k} ({size[0]}x{size[1]}) takes {n} image tokens > model.max_image_tokens={bound}"
                     for k, size, n in over)


def collate(items: Sequence[Sample | Skipped], pad_id: int, pack: int | None = None) -> dict[str, Any]:
    """Right-pad samples into a batch; skipped items are counted by reason under "skipped".

    pack: pack the samples into rows of at most this many tokens (first fit, longest first; a longer sample gets
    a row of its own). A packed batch has `position_ids` that restart at 0 for every sample (and for the padding
    at a row's end), which is what keeps samples apart in attention; `attention_mask` then only marks real tokens.
    Images (pixels, cached features, keys) are listed in the order their positions appear, row by row.
    """
    samples = [s for s in items if isinstance(s, Sample)]
    skipped = Counter(s.reason for s in items if isinstance(s, Skipped))
    for s in items:
        if isinstance(s, Skipped):
            log.warning("skipping sample %s: %s (%s)", s.id, s.reason, s.detail)
    if not samples:
        return {"input_ids": None, "skipped": skipped, "ids": []}
    rows = pack_rows([len(s.input_ids) for s in samples], pack) if pack else [[b] for b in range(len(samples))]
    T = max(sum(len(samples[j].input_ids) for j in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    labels = torch.full((R, T), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((R, T), dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    order = []
    for r, row in enumerate(rows):
        start = 0
        for j in row:
            s = samples[j]
            n = len(s.input_ids)
            input_ids[r, start:start + n], labels[r, start:start + n] = s.input_ids, s.labels
            labels[r, start] = IGNORE_INDEX  # never a target of the previous sample's last position
            attention_mask[r, start:start + n] = 1
            position_ids[r, start:start + n] = torch.arange(n)
            start += n
            order.append(s)
        position_ids[r, start:] = torch.arange(T - start)
    images = [im for s in order for im in s.images]  # row by row, sample by sample, image by image
    pixels = [im.pixels for im in images if im.pixels is not None]
    anyres = any(im.size is not None for im in images)
    batch = {
        "input_ids": input_ids,  # (R, T)
        "labels": labels,  # (R, T)
        "attention_mask": attention_mask,  # (R, T)
        # (I_pixels, 3, H, W); anyres: every tile of those images, image after image (sum of P, 3, H, W)
        "pixel_values": (torch.cat if anyres else torch.stack)(pixels) if pixels else None,
        "ids": [s.id for s in order],
        "sample_lengths": [len(s.input_ids) for s in order],
        "skipped": skipped,
    }
    if pack:
        batch["position_ids"] = position_ids  # (R, T)
    if anyres:
        batch["image_sizes"] = [im.size for im in images]  # (width, height) of every image
    if any(im.key is not None for im in images):
        batch["image_features"] = [im.features for im in images]  # per image: (N, D_v) (anyres (P, N, D_v)) or None
        batch["image_keys"] = [im.key for im in images]
    return batch


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens: first fit, longest first (a sample longer than
    `capacity` gets a row of its own). Rows keep their samples in the order they were placed."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if r is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return rows
