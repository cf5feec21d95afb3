"""`vistune data show` and `vistune data check`: see what the model is trained on; find bad records."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from vistune.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    Renderer,
    RenderError,
    TokenizerMismatch,
    check_whole_prompt_tokenization,
)
from vistune.data.dataset import REASONS, BadRecord, record_id, record_messages
from vistune.data.image import ImageLoadError, load_image
from vistune.utils.io import read_json_or_jsonl


def num_image_tokens_for(vision_tower: str, layer: int = -2, select: str = "patch") -> int:
    """Image positions per image for a tower, read from its config (no weights are loaded for transformers towers)."""
    from vistune.model.vision import EFFICIENTNET_WEIGHTS, EfficientNetTower

    if vision_tower in EFFICIENTNET_WEIGHTS:
        return EfficientNetTower(vision_tower, layer, pretrained=False).num_tokens
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(vision_tower)
    cfg = getattr(cfg, "vision_config", cfg)
    grid = (cfg.image_size // cfg.patch_size) ** 2
    return grid + (1 if select == "cls_patch" else 0)


def make_renderer(llm: str, template: str, vision_tower: str, num_image_tokens: int | None) -> Renderer:
    """A renderer for an LLM (or a vistune checkpoint, whose tokenizer and image count are used)."""
    from vistune.model.checkpoint import is_checkpoint, read_config
    from vistune.model.llm import load_tokenizer

    if is_checkpoint(llm):
        from transformers import AutoTokenizer

        config = read_config(llm)
        tokenizer = AutoTokenizer.from_pretrained(Path(llm) / "tokenizer")
        return Renderer(tokenizer, template, num_image_tokens or config["num_image_tokens"])
    return Renderer(load_tokenizer(llm), template, num_image_tokens or num_image_tokens_for(vision_tower))


def token_records(renderer: Renderer, input_ids: list[int], labels: list[int]) -> list[dict]:
    tok = renderer.tokenizer
    out = []
    for i, label in zip(input_ids, labels):
        text = "<image>" if i == IMAGE_TOKEN_ID else tok.decode([i])
        out.append({"token": text, "id": i, "supervised": label != IGNORE_INDEX})
    return out


def _marked_text(records: list[dict], color: bool) -> str:
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


def show_command(args) -> int:
    records = read_json_or_jsonl(args.data)
    if not 0 <= args.index < len(records):
        print(f"error: --index {args.index} is out of range (the file has {len(records)} records)", file=sys.stderr)
        return 2
    record = records[args.index]
    renderer = make_renderer(args.llm, args.template, args.vision_tower, args.num_image_tokens)
    try:
        messages = record_messages(record)
        from vistune.conversation import sample_rng

        has_image = record.get("image") not in (None, "")
        rendered = renderer.render(messages, num_images=int(has_image),
                                   placement="front" if args.inference else "random",
                                   rng=sample_rng(args.seed, args.index))
    except (BadRecord, RenderError) as e:
        print(f"error: record {record_id(record, args.index)} cannot be rendered: {e}", file=sys.stderr)
        return 1
    toks = token_records(renderer, rendered.input_ids, rendered.labels)
    if args.json:
        span = list(rendered.image_spans[0]) if rendered.image_spans else None
        print(json.dumps({"id": record_id(record, args.index), "tokens": toks, "image_span": span,
                          "image_spans": [list(s) for s in rendered.image_spans]}, ensure_ascii=False))
        return 0
    print(f"record {record_id(record, args.index)}: {len(toks)} tokens, {rendered.num_supervised} supervised, "
          f"template {renderer.template.name}, image span {rendered.image_spans or 'none'}")
    print(_marked_text(toks, color=sys.stdout.isatty()))
    return 0


def check_records(records: list, images: str | None, renderer: Renderer | None, max_length: int) -> list[dict]:
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
            has_image = record.get("image") not in (None, "")
            if has_image and images is not None:
                try:
                    load_image(Path(images) / record["image"])
                except ImageLoadError as e:
                    raise BadRecord(e.reason, str(e)) from None
            if renderer is not None:
                rendered = renderer.render(messages, num_images=int(has_image), placement="front")
                if len(rendered) > max_length:
                    raise BadRecord("too_long", f"{len(rendered)} tokens > {max_length}")
        except BadRecord as e:
            bad.append({"index": i, "id": rid, "reason": e.reason, "detail": e.detail})
        except TokenizerMismatch as e:
            raise TokenizerMismatch(f"record {rid}: {e}", e.position) from None
        except RenderError as e:
            bad.append({"index": i, "id": rid, "reason": "invalid_record", "detail": str(e)})
    return bad


def check_command(args) -> int:
    records = read_json_or_jsonl(args.data)
    renderer = make_renderer(args.llm, args.template, args.vision_tower, args.num_image_tokens) if args.llm else None
    bad = check_records(records, args.images, renderer, args.max_length)
    counts = Counter(b["reason"] for b in bad)
    if args.json:
        print(json.dumps({"records": len(records), "bad": len(bad), "counts": dict(counts), "bad_records": bad}))
    else:
        for b in bad:
            print(f"{b['id']}\t{b['reason']}\t{b['detail']}")
        print(f"{len(records)} records, {len(bad)} bad")
        for reason, n in counts.most_common():
            print(f"  {reason}: {n}  ({REASONS[reason]})")
    return 1 if bad else 0
