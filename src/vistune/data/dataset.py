"""LLaVA-format datasets: records, structural checks, lazy image loading, rendering, right-padded batches.

A record is `{"id", "image" (relative path, absent for text-only), "conversations": [{"from", "value"}]}`.
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
from vistune.data.image import ImageLoadError, ImageProcessor, load_image, read_image_bytes
from vistune.errors import UserError
from vistune.utils.io import read_json_or_jsonl

log = logging.getLogger(__name__)

# Reasons a record is bad, as `vistune data check` reports them.
REASONS = {
    "invalid_record": "not an object with a 'conversations' list",
    "missing_image": "image file not found",
    "unreadable_image": "image file cannot be decoded",
    "no_image_placeholder": "record has an image but no <image> in its text",
    "multiple_images": "more than one <image> in the text",
    "placeholder_without_image": "<image> in the text but the record has no image",
    "image_not_in_first_turn": "<image> is not in the first human turn",
    "empty_turn": "a turn has no text",
    "first_not_human": "the first turn is not from the human",
    "roles_not_alternating": "human and gpt turns do not alternate",
    "ends_with_human": "the last turn is not an answer",
    "too_long": "longer than max_length after rendering (or the image would be cut)",
}


class BadRecord(UserError, ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail or REASONS.get(reason, '')}")
        self.reason = reason
        self.detail = detail or REASONS.get(reason, "")


def record_id(record: Any, index: int) -> str:
    return str(record.get("id", index)) if isinstance(record, dict) else str(index)


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
    if any(IMAGE_PLACEHOLDER in m.content for m in body if m.role == "assistant"):
        raise BadRecord("image_not_in_first_turn", "<image> in an answer")
    has_image = record.get("image") not in (None, "")
    if has_image and not isinstance(record["image"], str):
        raise BadRecord("invalid_record", "'image' is not a string")
    if has_image and total == 0:
        raise BadRecord("no_image_placeholder")
    if total > 1:
        raise BadRecord("multiple_images", f"{total} placeholders")
    if not has_image and total:
        raise BadRecord("placeholder_without_image")
    if total and placeholders[0] != 1:
        raise BadRecord("image_not_in_first_turn")
    validate_messages(messages, for_generation=False)  # the renderer's own rules, as a last check
    return messages


@dataclass
class Sample:
    id: str
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,)
    pixel_values: torch.Tensor | None  # (3, H, W)
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    features: torch.Tensor | None = None  # (N, D_v): the tower's features from the feature cache (then no pixels)
    image_key: str | None = None
    """Feature-cache key of the image (content + tower settings) when the dataset has a cache."""

    @property
    def has_image(self) -> bool:
        return self.pixel_values is not None or self.features is not None


@dataclass
class Skipped:
    id: str
    reason: str
    detail: str = ""


class LlavaDataset(Dataset):
    """Map-style dataset over LLaVA records; `dataset[i]` is a `Sample` or a `Skipped`."""

    def __init__(self, records: Sequence[dict] | str | Path, image_folder: str | Path | None, renderer: Renderer,
                 image_processor: ImageProcessor, max_length: int = 2048, seed: int = 0,
                 placement: Placement = "random", feature_cache: FeatureCache | None = None) -> None:
        """`feature_cache`: images whose tower features it holds are not decoded (the sample carries the
        features); the others carry pixels and their cache key."""
        if isinstance(records, (str, Path)):
            records = read_json_or_jsonl(records)
        self.image_folder = Path(image_folder) if image_folder else None
        self.renderer = renderer
        self.image_processor = image_processor
        self.max_length = max_length
        self.seed = seed
        self.placement = placement
        self.feature_cache = feature_cache
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
        return self.records[i].get("image") not in (None, "")

    @property
    def lengths(self) -> list[int]:
        """Approximate token counts (about 4 characters per token plus the image), for length grouping."""
        n_img = self.renderer.num_image_tokens
        return [sum(len(m.content) for m in msgs) // 4 + (n_img if self.has_image(i) else 0)
                for i, msgs in enumerate(self.messages)]

    def image_path(self, record: dict) -> Path:
        image = Path(record["image"])
        return image if self.image_folder is None or image.is_absolute() else self.image_folder / image

    def __getitem__(self, i: int) -> Sample | Skipped:
        record = self.records[i]
        rid = record_id(record, i)
        pixels = features = key = None
        if self.has_image(i):
            path = self.image_path(record)
            try:
                if self.feature_cache is not None:
                    key = self.feature_cache.key(read_image_bytes(path))
                    features = self.feature_cache.load(key)
                if features is None:
                    pixels = self.image_processor(load_image(path))
            except ImageLoadError as e:
                return Skipped(rid, e.reason, str(e))
        try:
            rendered = self.renderer.render(self.messages[i], num_images=int(self.has_image(i)),
                                            placement=self.placement,
                                            rng=sample_rng(self.seed, i, self.epoch))
        except RenderError as e:
            return Skipped(rid, "invalid_record", str(e))
        ids, labels = rendered.input_ids, rendered.labels
        if len(ids) > self.max_length:
            if any(end > self.max_length for _, end in rendered.image_spans):
                return Skipped(rid, "too_long", f"{len(ids)} tokens; the image ends past {self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):
                return Skipped(rid, "too_long", f"{len(rendered)} tokens; nothing supervised in the first "
                                                f"{self.max_length}")
        return Sample(rid, torch.tensor(ids), torch.tensor(labels), pixels, rendered.image_spans, features, key)


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
    with_image = [s for s in order if s.has_image]
    pixels = [s.pixel_values for s in with_image if s.pixel_values is not None]
    batch = {
        "input_ids": input_ids,  # (R, T)
        "labels": labels,  # (R, T)
        "attention_mask": attention_mask,  # (R, T)
        "pixel_values": torch.stack(pixels) if pixels else None,  # (I_pixels, 3, H, W)
        "ids": [s.id for s in order],
        "skipped": skipped,
    }
    if pack:
        batch["position_ids"] = position_ids  # (R, T)
    if any(s.image_key is not None for s in with_image):
        batch["image_features"] = [s.features for s in with_image]  # per image: (N, D_v) or None (from pixels)
        batch["image_keys"] = [s.image_key for s in with_image]
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
