"""Data inspection: see what the model is trained on (`show_record`), find bad records (`check_dataset`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vistune.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    Renderer,
    RenderError,
    TokenizerMismatch,
    check_whole_prompt_tokenization,
    sample_rng,
)
from vistune.data.anyres import AnyresLayout
from vistune.data.dataset import BadRecord, image_token_excess, record_id, record_images, record_messages
from vistune.data.image import ImageLoadError, load_image, read_image_size
from vistune.utils.io import read_json_or_jsonl


def token_records(renderer: Renderer, input_ids: list[int], labels: list[int]) -> list[dict]:
    tok = renderer.tokenizer
    out = []
    for i, label in zip(input_ids, labels):
        text = "<image>" if i == IMAGE_TOKEN_ID else tok.decode([i])
        out.append({"token": text, "id": i, "supervised": label != IGNORE_INDEX})
    return out


def marked_text(records: list[dict], color: bool) -> str:
    """Decoded sample with supervised runs marked: green on a terminal, else between ⟪ and ⟫."""
    on, off = ("\x1b[1;32m", "\x1b[0m") if color else ("⟪", "⟫")
    parts, inside, image_run = [], False, 0
    for r in records + [{"token": "", "id": 0, "supervised": False}]:
        if r["id"] == IMAGE_TOKEN_ID:
            image_run += 1
            continue
        if image_run:
            parts.append(f"<image x{image_run}>")
            image_run = 0
        if r["supervised"] != inside:
            parts.append(on if r["supervised"] else off)
            inside = r["supervised"]
        parts.append(r["token"])
    return "".join(parts)


@dataclass
class ShownRecord:
    """One record as the model sees it."""

    id: str
    tokens: list[dict]
    """{"token", "id", "supervised"} per position."""
    image_spans: list[tuple[int, int]]
    num_supervised: int
    images: list[str] = field(default_factory=list)
    """The record's image paths, in the order of `image_spans`."""
    image_layouts: list[str] = field(default_factory=list)
    """anyres: each image's tile grid and token count (`2x2 tiles + base, 2144 tokens`)."""


def show_record(records: list, index: int, renderer: Renderer, seed: int = 0, inference: bool = False,
                image_folder: str | Path | None = None, anyres: AnyresLayout | None = None) -> ShownRecord:
    """Render record `index` as training does (random image placement with `seed`) or as inference does. An anyres
    model (`anyres`) needs `image_folder`: each image's size sets its token count."""
    if not 0 <= index < len(records):
        raise IndexError(f"index {index} is out of range (the file has {len(records)} records)")
    record = records[index]
    rid = record_id(record, index)
    sizes = None
    try:
        messages = record_messages(record)
        images = record_images(record)
        if anyres is not None and images:
            if image_folder is None:
                raise BadRecord("missing_image", "an anyres model's image token count depends on each image's size: "
                                                 "give the image folder (--images)")
            sizes = [read_image_size(Path(image_folder) / path) for path in images]
        rendered = renderer.render(messages, num_images=len(images),
                                   placement="front" if inference else "random", rng=sample_rng(seed, index),
                                   image_sizes=sizes)
    except ImageLoadError as e:
        raise BadRecord(e.reason, f"record {rid}: {e}") from None
    except (BadRecord, RenderError) as e:
        raise BadRecord(getattr(e, "reason", "invalid_record"), f"record {rid} cannot be rendered: {e}") from None
    layouts = [anyres.describe(size) for size in sizes] if sizes else []
    return ShownRecord(rid, token_records(renderer, rendered.input_ids, rendered.labels),
                       [tuple(s) for s in rendered.image_spans], rendered.num_supervised, images, layouts)


def check_records(records: list, images: str | None, renderer: Renderer | None, max_length: int | None,
                  max_image_tokens: int | None = None, anyres: AnyresLayout | None = None,
                  image_stats: Counter | None = None) -> list[dict]:
    """Every bad record as {"index", "id", "reason", "detail"}. With a renderer, the tokenizer is refused first
    (`TokenizerMismatch`, naming the first differing position) when rendered ids cannot equal its ids for the whole
    prompt, on probe conversations or on any record. An anyres model (`anyres`, with `images`): each image's token
    count comes from its size, an image over `max_image_tokens` makes its record bad, and `image_stats` counts
    the images per tile grid (`"2x2"`) and their tokens (`"tokens"`, `"images"`, `"max_tokens"`)."""
    if renderer is not None:
        check_whole_prompt_tokenization(renderer)
    bad = []
    for i, record in enumerate(records):
        rid = record_id(record, i)
        try:
            messages = record_messages(record)
            paths = record_images(record)
            sizes = None
            if images is not None:
                failed, sizes = [], []  # every image that cannot be opened, named with its index when there are several
                for k, path in enumerate(paths):
                    try:
                        sizes.append(load_image(Path(images) / path).size)
                    except ImageLoadError as e:
                        failed.append((e.reason, f"image {k}: {e}" if len(paths) > 1 else str(e)))
                if failed:
                    raise BadRecord(failed[0][0], "; ".join(detail for _, detail in failed))
            if anyres is not None and sizes:
                _count_images(image_stats, anyres, sizes)
                if max_image_tokens is not None and renderer is not None:
                    over = image_token_excess(renderer, sizes, max_image_tokens)
                    if over:
                        raise BadRecord("too_many_image_tokens", over)
            if renderer is not None:
                rendered = renderer.render(messages, num_images=len(paths), placement="front",
                                           image_sizes=sizes if anyres is not None else None)
                if max_length is not None and len(rendered) > max_length:
                    raise BadRecord("too_long", f"{len(rendered)} tokens > {max_length}")
        except BadRecord as e:
            bad.append({"index": i, "id": rid, "reason": e.reason, "detail": e.detail})
        except TokenizerMismatch as e:
            raise TokenizerMismatch(f"record {rid}: {e}", e.position) from None
        except RenderError as e:
            bad.append({"index": i, "id": rid, "reason": "invalid_record", "detail": str(e)})
    return bad


def _count_images(stats: Counter | None, anyres: AnyresLayout, sizes: list[tuple[int, int]]) -> None:
    if stats is None:
        return
    for size in sizes:
        rows, cols = anyres.grid_shape(size)
        tokens = anyres.num_tokens(size)
        stats[f"{rows}x{cols}"] += 1
        stats["images"] += 1
        stats["tokens"] += tokens
        stats["max_tokens"] = max(stats["max_tokens"], tokens)


@dataclass
class CheckReport:
    """What `vistune data check` found."""

    records: int
    bad: list[dict]
    """{"index", "id", "reason", "detail"} per bad record."""
    skipped_checks: dict[str, str] = field(default_factory=dict)
    """Checks that did not run -> why."""
    settings: str = ""
    """Where the rendering settings came from."""
    image_stats: dict = field(default_factory=dict)
    """anyres, with the image folder: images per tile grid (`"2x2": 12`), `images`, `tokens` (their sum) and
    `max_tokens` (one image's most)."""

    @property
    def counts(self) -> Counter:
        return Counter(b["reason"] for b in self.bad)


def check_dataset(data: str | Path, images: str | Path | None = None, renderer: Renderer | None = None,
                  max_length: int | None = None, settings: str = "", max_image_tokens: int | None = None,
                  anyres: AnyresLayout | None = None) -> CheckReport:
    """Check every record of a LLaVA JSON/JSONL file; image checks need `images`, length checks a renderer and
    `max_length`; an anyres model (`anyres`) also needs `images` for each image's token count, checked against
    `max_image_tokens`. Checks that cannot run are listed in `skipped_checks` with the reason."""
    skipped = {}
    if images is None:
        skipped["images"] = "no image folder given (--images): image files were not opened"
    elif not Path(images).is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    if renderer is None:
        skipped["rendering"] = ("no tokenizer given (--model, --config or --llm): samples were not rendered, "
                                "so lengths and template rules were not checked")
    elif max_length is None:
        skipped["length"] = "no max length given (--max-length, or --config's data.max_length)"
    if anyres is not None and images is None:
        skipped["image_tokens"] = ("an anyres model's image token counts depend on each image's size: without "
                                   "--images, lengths were checked with one tile's tokens per image and "
                                   "max_image_tokens was not checked")
    records = read_json_or_jsonl(data)
    stats: Counter = Counter()
    bad = check_records(records, None if images is None else str(images), renderer, max_length, max_image_tokens,
                        anyres, stats)
    return CheckReport(len(records), bad, skipped, settings, dict(stats))
