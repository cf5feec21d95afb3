"""Image annotations: captions + normalised boxes (the symbolic context, the only thing a text-only teacher sees),
and caption sets for stage 1 and the projector warm start.

Inputs are COCO files (captions JSON, optional instances JSON) or a JSONL of ready contexts.
Annotations that cannot be trusted are skipped and counted by reason (a `collections.Counter`),
never silently dropped: the commands print the counts.

COCO boxes are `[x, y, w, h]` in pixels; contexts carry `[x1, y1, x2, y2]` normalised to 0..1 by
the image's width and height. A box may overrun the image border by at most
`BORDER_TOLERANCE_PX` pixels (COCO has rounding overruns of a fraction of a pixel); such a box is
clipped to the image. A larger overrun counts as `bbox_outside_image`.
"""

from __future__ import annotations

import collections
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistune.errors import UserError
from vistune.utils.io import read_json_or_jsonl

#: How far (pixels) a COCO box may overrun the image border and still be clipped and kept.
BORDER_TOLERANCE_PX = 1.0


@dataclass
class Instance:
    """One labelled object."""

    category: str
    bbox: tuple[float, float, float, float]  # normalised [x1, y1, x2, y2] in 0..1


@dataclass
class ImageContext:
    """Everything the symbolic teacher knows about one image."""

    image: str  # file name relative to the image folder (COCO file_name)
    captions: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    width: int | None = None
    height: int | None = None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coco_box_to_xyxy(bbox: Any, width: Any, height: Any) -> tuple[tuple[float, float, float, float] | None, str]:
    """Normalise a COCO `[x, y, w, h]` pixel box; returns (box, "") or (None, skip reason)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None, "bbox_malformed"
    if not (_is_number(width) and _is_number(height)) or width <= 0 or height <= 0:
        return None, "image_size_unknown"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, "bbox_nonpositive_size"
    tol = BORDER_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return None, "bbox_outside_image"
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 <= x1 or y2 <= y1:
        return None, "bbox_outside_image"
    return (x1 / width, y1 / height, x2 / width, y2 / height), ""


def _load_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    return data


def load_coco(
    captions_path: str | Path, instances_path: str | Path | None = None
) -> tuple[list[ImageContext], collections.Counter]:
    """Join COCO captions (and boxes, when `instances_path` is given) into one context per image.

    Images come from both files' `images` lists (same ids). An image is kept when it has at least
    one caption or one valid box; the order is by image id. Skip reasons counted:
    `caption_missing_image`, `caption_malformed`, `bbox_missing_image`, `bbox_malformed`,
    `bbox_nonpositive_size`, `bbox_outside_image`, `image_size_unknown`, `unknown_category`,
    `image_malformed`, `image_empty`.
    """
    skips: collections.Counter = collections.Counter()
    images: dict[Any, dict] = {}

    def add_images(data: dict) -> None:
        for img in data["images"]:
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                skips["image_malformed"] += 1
                continue
            entry = images.setdefault(img["id"], {"file_name": img["file_name"]})
            for key in ("width", "height"):
                if key in img and key not in entry:
                    entry[key] = img[key]

    caps = _load_json(captions_path)
    add_images(caps)
    inst = None
    if instances_path is not None:
        inst = _load_json(instances_path)
        add_images(inst)

    captions: dict[Any, list[str]] = collections.defaultdict(list)
    for ann in caps["annotations"]:
        if not isinstance(ann, dict):
            skips["caption_malformed"] += 1
            continue
        if ann.get("image_id") not in images:
            skips["caption_missing_image"] += 1
            continue
        text = ann.get("caption")
        if not isinstance(text, str) or not text.strip():
            skips["caption_malformed"] += 1
            continue
        captions[ann["image_id"]].append(" ".join(text.split()))

    boxes: dict[Any, list[Instance]] = collections.defaultdict(list)
    if inst is not None:
        names = {c["id"]: c["name"] for c in inst.get("categories", []) if isinstance(c, dict) and "id" in c}
        for ann in inst["annotations"]:
            if not isinstance(ann, dict):
                skips["bbox_malformed"] += 1
                continue
            img = images.get(ann.get("image_id"))
            if img is None:
                skips["bbox_missing_image"] += 1
                continue
            name = names.get(ann.get("category_id"))
            if not isinstance(name, str):
                skips["unknown_category"] += 1
                continue
            box, reason = _coco_box_to_xyxy(ann.get("bbox"), img.get("width"), img.get("height"))
            if box is None:
                skips[reason] += 1
                continue
            boxes[ann["image_id"]].append(Instance(name, box))

    contexts = []
    for image_id in sorted(images, key=lambda k: (str(type(k)), k)):
        img = images[image_id]
        if not captions.get(image_id) and not boxes.get(image_id):
            skips["image_empty"] += 1
            continue
        w, h = img.get("width"), img.get("height")
        contexts.append(
            ImageContext(
                image=img["file_name"],
                captions=captions.get(image_id, []),
                instances=boxes.get(image_id, []),
                width=int(w) if _is_number(w) else None,
                height=int(h) if _is_number(h) else None,
            )
        )
    return contexts, skips


def _valid_xyxy(bbox: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        return None
    return (x1, y1, x2, y2)


def load_context_jsonl(path: str | Path) -> tuple[list[ImageContext], collections.Counter]:
    """Read contexts from JSONL lines `{"image", "captions": [...], "instances": [{"category", "bbox"}]}`.

    Boxes are already normalised `[x1, y1, x2, y2]`; a box outside 0..1 or with x2 <= x1 / y2 <= y1
    is skipped (`bbox_malformed`). Lines without an image name are skipped (`record_malformed`).
    Optional `width` / `height` are carried over.
    """
    skips: collections.Counter = collections.Counter()
    contexts = []
    for rec in read_json_or_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not rec["image"]:
            skips["record_malformed"] += 1
            continue
        caps = rec.get("captions") or []
        if isinstance(caps, str):
            caps = [caps]
        captions = []
        for c in caps:
            if isinstance(c, str) and c.strip():
                captions.append(" ".join(c.split()))
            else:
                skips["caption_malformed"] += 1
        instances = []
        for ins in rec.get("instances") or []:
            if not isinstance(ins, dict) or not isinstance(ins.get("category"), str):
                skips["bbox_malformed"] += 1
                continue
            box = _valid_xyxy(ins.get("bbox"))
            if box is None:
                skips["bbox_malformed"] += 1
                continue
            instances.append(Instance(ins["category"], box))
        if not captions and not instances:
            skips["image_empty"] += 1
            continue
        w, h = rec.get("width"), rec.get("height")
        contexts.append(
            ImageContext(
                image=rec["image"],
                captions=captions,
                instances=instances,
                width=int(w) if _is_number(w) else None,
                height=int(h) if _is_number(h) else None,
            )
        )
    return contexts, skips


def format_context(ctx: ImageContext) -> str:
    """The paper's symbolic context: captions one per line, then `label: [x1, y1, x2, y2]` lines."""
    lines = [c for c in ctx.captions]
    for ins in ctx.instances:
        coords = ", ".join(f"{v:.3f}" for v in ins.bbox)
        lines.append(f"{ins.category}: [{coords}]")
    return "\n".join(lines)


def make_record(
    id: str, image: str | None, conversations: list[dict], type: str, teacher: str, **extra: Any
) -> dict:
    """One LLaVA record; `image` None makes a text-only record (no "image" key)."""
    for turn in conversations:
        if turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"record {id}: bad turn {turn!r}")
    rec: dict[str, Any] = {"id": id}
    if image is not None:
        rec["image"] = image
    rec["conversations"] = [{"from": t["from"], "value": t["value"]} for t in conversations]
    rec["metadata"] = {"type": type, "teacher": teacher, **extra}
    return rec


def format_skips(skips: collections.Counter) -> str:
    """One line for the commands to print: `skipped: reason=N, ...` (or `skipped: none`)."""
    if not skips:
        return "skipped: none"
    return "skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(skips.items()))


@dataclass
class ContextSource:
    """Where the captions and boxes of the images come from: a context JSONL, or COCO files."""

    input: str | Path | None = None
    """JSONL of {image, captions, instances: [{category, bbox}]} (normalised xyxy boxes)."""
    captions: str | Path | None = None
    """COCO captions JSON."""
    instances: str | Path | None = None
    """COCO instances JSON (boxes); only with `captions`."""
    limit: int | None = None
    """Use at most this many images (the first ones)."""

    def __post_init__(self) -> None:
        if bool(self.input) == bool(self.captions):
            raise UserError("give either --input JSONL or --captions (with optional --instances)")
        if self.instances and not self.captions:
            raise UserError("--instances needs --captions")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")


def load_image_contexts(input: str | Path | None = None, captions: str | Path | None = None,
                        instances: str | Path | None = None) -> tuple[list[ImageContext], collections.Counter]:
    """Contexts from a context JSONL (`input`) or from COCO captions (+ instances)."""
    if input:
        return load_context_jsonl(input)
    return load_coco(captions, instances)


def load_contexts(source: ContextSource) -> tuple[list[ImageContext], collections.Counter]:
    """The source's contexts, one per image (later duplicates are counted as skipped), cut to `limit`;
    raises UserError when the files cannot be read or no image is usable."""
    try:
        contexts, skips = load_image_contexts(source.input, source.captions, source.instances)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e
    unique: dict[str, ImageContext] = {}
    for ctx in contexts:
        if ctx.image in unique:
            skips["duplicate_image"] += 1
        else:
            unique[ctx.image] = ctx
    contexts = list(unique.values())[: source.limit]
    if not contexts:
        raise UserError(f"no usable images in the input ({format_skips(skips)})")
    return contexts, skips


def load_caption_sets(path: str | Path) -> tuple[list[tuple[str, list[str]]], Counter]:
    """(image, captions) per image in first-seen order, plus skip counts."""
    skips: Counter = Counter()
    text_start = Path(path).read_text(encoding="utf-8").lstrip()[:1]
    if text_start == "{":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            contexts, skips = load_coco(path)
            return [(c.image, c.captions) for c in contexts if c.captions], skips
    groups: dict[str, list[str]] = defaultdict(list)
    for rec in read_json_or_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not rec["image"]:
            skips["record_malformed"] += 1
            continue
        caps = rec.get("captions", rec.get("caption"))
        caps = [caps] if isinstance(caps, str) else (caps if isinstance(caps, list) else [])
        good = [" ".join(c.split()) for c in caps if isinstance(c, str) and c.strip()]
        if not good:
            skips["caption_malformed"] += 1
            continue
        groups[rec["image"]].extend(good)
    return list(groups.items()), skips
