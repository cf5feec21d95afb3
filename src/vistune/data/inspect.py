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
from vistune.data.dataset import BadRecord, record_id, record_images, record_messages
from vistune.data.image import ImageLoadError, load_image
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


def show_record(records: list, index: int, renderer: Renderer, seed: int = 0, inference: bool = False
                ) -> ShownRecord:
    """Render record `index` as training does (random image placement with `seed`) or as inference does."""
    if not 0 <= index < len(records):
        raise IndexError(f"index {index} is out of range (the file has {len(records)} records)")
    record = records[index]
    rid = record_id(record, index)
    try:
        messages = record_messages(record)
        images = record_images(record)
        rendered = renderer.render(messages, num_images=len(images),
                                   placement="front" if inference else "random", rng=sample_rng(seed, index))
    except (BadRecord, RenderError) as e:
        raise BadRecord(getattr(e, "reason", "invalid_record"), f"record {rid} cannot be rendered: {e}") from None
    return ShownRecord(rid, token_records(renderer, rendered.input_ids, rendered.labels),
                       [tuple(s) for s in rendered.image_spans], rendered.num_supervised, images)


def check_records(records: list, images: str | None, renderer: Renderer | None, max_length: int | None
                  ) -> list[dict]:
    """Every bad record as {"index", "id", "reason", "detail"}. With a renderer, the tokenizer is refused first
    (`TokenizerMismatch`, naming the first differing position) when rendered ids cannot equal its ids for the whole
    prompt, on probe conversations or on any record."""
    if renderer is not None:
        check_whole_prompt_tokenization(renderer)
    bad = []
    for i, record in enumerate(records):
        rid = record_id(record, i)
        try:
            messages = record_messages(record)
            paths = record_images(record)
            if images is not None:
                failed = []  # every image that cannot be opened, named with its index when there are several
                for k, path in enumerate(paths):
                    try:
                        load_image(Path(images) / path)
                    except ImageLoadError as e:
                        failed.append((e.reason, f"image {k}: {e}" if len(paths) > 1 else str(e)))
                if failed:
                    raise BadRecord(failed[0][0], "; ".join(detail for _, detail in failed))
            if renderer is not None:
                rendered = renderer.render(messages, num_images=len(paths), placement="front")
                if max_length is not None and len(rendered) > max_length:
                    raise BadRecord("too_long", f"{len(rendered)} tokens > {max_length}")
        except BadRecord as e:
            bad.append({"index": i, "id": rid, "reason": e.reason, "detail": e.detail})
        except TokenizerMismatch as e:
            raise TokenizerMismatch(f"record {rid}: {e}", e.position) from None
        except RenderError as e:
            bad.append({"index": i, "id": rid, "reason": "invalid_record", "detail": str(e)})
    return bad


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

    @property
    def counts(self) -> Counter:
        return Counter(b["reason"] for b in self.bad)


def check_dataset(data: str | Path, images: str | Path | None = None, renderer: Renderer | None = None,
                  max_length: int | None = None, settings: str = "") -> CheckReport:
    """Check every record of a LLaVA JSON/JSONL file; image checks need `images`, length checks a renderer and
    `max_length`. Checks that cannot run are listed in `skipped_checks` with the reason."""
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
    records = read_json_or_jsonl(data)
    bad = check_records(records, None if images is None else str(images), renderer, max_length)
    return CheckReport(len(records), bad, skipped, settings)
