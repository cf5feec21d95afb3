"""Stage-1 (feature alignment) data: one caption per image, asked for with a brief-description
instruction.

Input: COCO captions JSON, or JSON/JSONL records `{"image", "caption"}` (several lines may share
an image) or `{"image", "captions": [...]}`. For each image one caption is chosen at random
(seeded by the seed and the image name, so a pair does not change when other images come or go).

`--filter concepts` is the paper's CC3M concept filter (`concept_filter`), applied to the chosen
pairs:

1. extract each caption's noun phrases (spaCy noun chunks if installed, else the built-in
   extractor in `nounphrases.py`) and count, for every phrase, how many captions contain it;
2. drop phrases contained in fewer than `min_count` (3) captions: they are rare combinations that
   other captions already cover;
3. go through the surviving phrases from the least to the most frequent (ties by phrase text);
   for each, add the captions that contain it to the kept set; when more than `max_per_concept`
   (100) captions contain it, add a seeded random sample of `max_per_concept` of them instead;
4. keep exactly the captions added at least once, in input order.

A caption with no surviving phrase is dropped. Because a caption can be added through several
phrases, a frequent phrase can end up in more than `max_per_concept` kept captions; the cap
bounds how many captions each phrase contributes, as in the paper.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Sequence

from vistune.data.annotations import ImageContext, load_caption_sets, load_coco
from vistune.data.world import SHAPES, cap, count_phrase, parse_label, region_words, with_article
from vistune.utils.io import atomic_write_json

BRIEF_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short description of this picture.",
    "What does this image show? Answer in one sentence.",
    "Summarize the picture in a few words.",
    "Write a one-sentence caption for the image.",
    "Provide a concise caption for this image.",
    "Tell me briefly what is in the picture.",
    "Caption this image.",
    "In one sentence, what do you see here?",
    "Offer a short summary of the image.",
    "Briefly say what the picture contains.",
)


#: The 3x3 regions of `region_words`, in reading order (top to bottom, left to right).
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


def grounded_caption(ctx: ImageContext) -> str | None:
    """How many labelled boxes an image has, then each with where it is, region by region in reading order:
    "Three shapes. top left: a red circle; center: two blue squares." (None for an image without boxes)."""
    if not ctx.instances:
        return None
    noun = "shape" if all(parse_label(i.category)[1] in SHAPES for i in ctx.instances) else "object"
    by_region: dict[str, Counter] = defaultdict(Counter)
    for inst in ctx.instances:
        x1, y1, x2, y2 = inst.bbox
        by_region[region_words((x1 + x2) / 2, (y1 + y2) / 2)][inst.category] += 1
    parts = []
    for region in REGIONS:
        if by_region[region]:
            things = [with_article(c) if n == 1 else count_phrase(n, c) for c, n in sorted(by_region[region].items())]
            parts.append(f"{region}: {', '.join(things)}")
    return f"{cap(count_phrase(len(ctx.instances), noun))}. {cap('; '.join(parts))}."


def grounded_pairs(captions_path: str | Path, instances_path: str | Path) -> tuple[list[tuple[str, str]], dict]:
    """(image, grounded caption) per image of a COCO captions + instances pair, and the skip counts."""
    contexts, skips = load_coco(captions_path, instances_path)
    pairs = []
    for ctx in contexts:
        caption = grounded_caption(ctx)
        if caption is None:
            skips["no_boxes"] += 1
        else:
            pairs.append((ctx.image, caption))
    return pairs, dict(skips)


def choose_pairs(caption_sets: Sequence[tuple[str, list[str]]], seed: int = 0) -> list[tuple[str, str]]:
    """One (image, caption) per image, chosen by a generator seeded with (seed, image)."""
    return [(image, random.Random(f"{seed}:caption:{image}").choice(caps)) for image, caps in caption_sets]


def concept_filter(
    captions: Sequence[str],
    min_count: int = 3,
    max_per_concept: int = 100,
    seed: int = 0,
    extractor: Callable[[list[str]], list[set[str]]] | None = None,
) -> tuple[list[int], dict]:
    """Indices of the captions to keep (ascending) and statistics; see the module docstring."""
    if min_count < 1 or max_per_concept < 1:
        raise ValueError("min_count and max_per_concept must be at least 1")
    if extractor is None:
        from vistune.datagen.nounphrases import noun_phrases_many

        extractor = noun_phrases_many
    phrases = extractor(list(captions))
    holders: dict[str, list[int]] = defaultdict(list)
    for i, ps in enumerate(phrases):
        for p in sorted(ps):
            holders[p].append(i)
    surviving = sorted((p for p, idx in holders.items() if len(idx) >= min_count),
                       key=lambda p: (len(holders[p]), p))
    rng = random.Random(f"{seed}:concepts")
    keep: set[int] = set()
    capped = 0
    for p in surviving:
        idx = holders[p]
        if len(idx) > max_per_concept:
            idx = sorted(rng.sample(idx, max_per_concept))
            capped += 1
        keep.update(idx)
    stats = {"captions_in": len(captions), "captions_kept": len(keep), "concepts_total": len(holders),
             "concepts_kept": len(surviving), "concepts_capped": capped,
             "min_count": min_count, "max_per_concept": max_per_concept}
    return sorted(keep), stats


def _stem(image: str) -> str:
    return str(Path(image).with_suffix("")).replace("/", "_").replace("\\", "_")


def build_pretrain_records(pairs: Sequence[tuple[str, str]], seed: int = 0) -> list[dict]:
    """LLaVA stage-1 records: a brief-description instruction (seeded per image) and the caption."""
    records, seen = [], Counter()
    for image, caption in pairs:
        stem = _stem(image)
        seen[stem] += 1
        rid = stem if seen[stem] == 1 else f"{stem}~{seen[stem] - 1}"
        instr = random.Random(f"{seed}:instruction:{rid}").choice(BRIEF_INSTRUCTIONS)
        records.append({"id": rid, "image": image, "conversations": [
            {"from": "human", "value": f"<image>\n{instr}"}, {"from": "gpt", "value": caption}]})
    return records


def make_pretrain_data(captions_path: str | Path, out: str | Path, seed: int = 0, filter: str = "none",
                       min_count: int = 3, max_per_concept: int = 100,
                       grounded_from: str | Path | None = None) -> dict:
    """Read captions, choose one per image, optionally filter by concepts, write the JSON list. With
    `grounded_from` (COCO instances of the same images), each image's caption is instead its grounded
    caption (`grounded_caption`: every box with its region), and images without boxes are skipped."""
    if grounded_from is not None:
        pairs, skipped = grounded_pairs(captions_path, grounded_from)
        stats: dict = {"images": len(pairs) + skipped.get("no_boxes", 0), "skipped": skipped}
    else:
        sets, skips = load_caption_sets(captions_path)
        pairs = choose_pairs(sets, seed)
        stats = {"images": len(sets), "skipped": dict(skips)}
    if filter == "concepts":
        keep, fstats = concept_filter([c for _, c in pairs], min_count, max_per_concept, seed)
        pairs = [pairs[i] for i in keep]
        from vistune.datagen.nounphrases import extractor_name

        stats.update(fstats, extractor=extractor_name())
    elif filter != "none":
        raise ValueError(f"unknown filter {filter!r}")
    records = build_pretrain_records(pairs, seed)
    atomic_write_json(out, records)
    stats["pairs"] = len(records)
    return stats
