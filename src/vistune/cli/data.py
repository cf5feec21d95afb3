"""`vistune data show|check`: inspect and validate LLaVA-format datasets."""

from __future__ import annotations

import argparse
import json
import sys

from vistune.cli.common import UsageError, add_command


def register(sub: argparse._SubParsersAction) -> None:
    data = add_command(sub, "data", "inspect and validate LLaVA-format datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    show = add_command(dsub, "show", "print one rendered sample with its supervised tokens marked")
    show.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    show.add_argument("--index", type=int, default=0, help="record index (0-based)")
    show.add_argument("--images", default=None, help="image folder (an anyres model's image token counts depend "
                                                     "on each image's size)")
    _add_render_source(show)
    show.add_argument("--seed", type=int, default=0, help="seed for the random image placement")
    show.add_argument("--inference", action="store_true", help="render as at inference (fixed image placement)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=show_command)

    check = add_command(dsub, "check", "list every bad record; exit 1 if any")
    check.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    check.add_argument("--images", default=None, help="image folder (image paths are relative to it)")
    _add_render_source(check)
    check.add_argument("--max-length", type=int, default=None,
                       help="longest allowed rendered sample (default: --config's data.max_length, else 2048 "
                            "with --llm/--model)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=check_command)
    _register_scienceqa(dsub)


def _add_render_source(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("rendering settings (the first given wins: --model, --config, --llm)")
    src.add_argument("--model", default=None, help="a vistune checkpoint: its tokenizer, template, system prompt "
                                                   "and image-token count")
    src.add_argument("--config", default=None, help="a `vistune train` YAML config: its model (or init_from "
                                                    "checkpoint) and data.max_length")
    src.add_argument("--llm", default=None, help="an LLM (built-in name, hub id or directory) with --template and "
                                                 "--vision-tower")
    src.add_argument("--template", default=None, help="conversation template (default: the model's; chat_template "
                                                      "with --llm)")
    src.add_argument("--vision-tower", default="efficientnet-lite0", help="with --llm: the tower that fixes the "
                                                                          "image token count")
    src.add_argument("--num-image-tokens", type=int, default=None, help="override the image token count")


def _render_setup(args: argparse.Namespace, required: bool):
    """The renderer the flags name, or None when none is named and `required` is False."""
    from vistune.config import load_run_config
    from vistune.model.checkpoint import is_checkpoint
    from vistune.model.renderers import setup_for_checkpoint, setup_for_llm, setup_for_run

    n = args.num_image_tokens
    if n is not None and n < 1:
        raise UsageError(f"--num-image-tokens must be positive, got {n}")
    if args.model:
        return setup_for_checkpoint(args.model, args.template, n)
    if args.config:
        overrides = [f"model.template={args.template}"] if args.template else []
        return setup_for_run(load_run_config(args.config, overrides), n)
    if args.llm:
        if is_checkpoint(args.llm):
            return setup_for_checkpoint(args.llm, args.template, n)
        return setup_for_llm(args.llm, args.template or "chat_template", args.vision_tower, n)
    if required:
        return setup_for_llm("smollm2-135m-instruct", args.template or "chat_template", args.vision_tower, n)
    return None


def show_command(args: argparse.Namespace) -> int:
    from vistune.data.inspect import marked_text, show_record
    from vistune.utils.io import read_json_or_jsonl

    records = read_json_or_jsonl(args.data)
    if not 0 <= args.index < len(records):
        raise UsageError(f"--index {args.index} is out of range ({args.data} has {len(records)} records)")
    setup = _render_setup(args, required=True)
    shown = show_record(records, args.index, setup.renderer, args.seed, args.inference, args.images, setup.anyres)
    if args.json:
        span = list(shown.image_spans[0]) if shown.image_spans else None
        extra = {"image_layouts": shown.image_layouts} if shown.image_layouts else {}
        print(json.dumps({"id": shown.id, "tokens": shown.tokens, "image_span": span,
                          "image_spans": [list(s) for s in shown.image_spans], "images": shown.images, **extra},
                         ensure_ascii=False))
        return 0
    print(f"record {shown.id}: {len(shown.tokens)} tokens, {shown.num_supervised} supervised, "
          f"template {setup.renderer.template.name}, image span {shown.image_spans or 'none'}")
    if len(shown.images) > 1:
        print("images: " + ", ".join(f"{k}: {path} at {start}-{end}"
                                     for k, (path, (start, end)) in enumerate(zip(shown.images, shown.image_spans))))
    for path, layout in zip(shown.images, shown.image_layouts):
        print(f"image {path}: {layout}")
    print(marked_text(shown.tokens, color=sys.stdout.isatty()))
    return 0


def check_command(args: argparse.Namespace) -> int:
    from vistune.data.dataset import REASONS
    from vistune.data.inspect import check_dataset

    setup = _render_setup(args, required=False)
    max_length = args.max_length
    if max_length is None and setup is not None:
        max_length = setup.max_length or 2048
    if max_length is not None and max_length < 1:
        raise UsageError(f"--max-length must be positive, got {max_length}")
    report = check_dataset(args.data, args.images, setup.renderer if setup else None, max_length,
                           settings=setup.source if setup else "",
                           max_image_tokens=setup.max_image_tokens if setup else None,
                           anyres=setup.anyres if setup else None)
    counts = report.counts
    if args.json:
        print(json.dumps({"records": report.records, "bad": len(report.bad), "counts": dict(counts),
                          "bad_records": report.bad, "skipped_checks": report.skipped_checks,
                          **({"image_stats": report.image_stats} if report.image_stats else {})}))
        return 1 if report.bad else 0
    for b in report.bad:
        print(f"{b['id']}\t{b['reason']}\t{b['detail']}")
    print(f"{report.records} records, {len(report.bad)} bad")
    for reason, n in counts.most_common():
        print(f"  {reason}: {n}  ({REASONS[reason]})")
    if setup is not None:
        print(f"rendered with {setup.source}: template {setup.renderer.template.name}, "
              f"{setup.renderer.num_image_tokens} image tokens, max length {max_length}")
    stats = dict(report.image_stats)
    if stats:
        images, tokens, most = stats.pop("images"), stats.pop("tokens"), stats.pop("max_tokens")
        grids = ", ".join(f"{grid}: {n}" for grid, n in sorted(stats.items()))
        print(f"anyres: {images} images, {tokens / images:.0f} image tokens each on average (most {most}"
              f"{f', bound {setup.max_image_tokens}' if setup.max_image_tokens else ''}); tile grids {grids}")
    for check, why in report.skipped_checks.items():
        print(f"not checked: {check}: {why}")
    return 1 if report.bad else 0


def _register_scienceqa(dsub: argparse._SubParsersAction) -> None:
    p = add_command(dsub, "scienceqa", "convert ScienceQA into LLaVA training records")
    p.add_argument("--problems", required=True, help="ScienceQA problems.json")
    p.add_argument("--pid-splits", default=None, help="pid_splits.json (none: each problem's own 'split' field)")
    p.add_argument("--split", default="train", help="split to convert")
    p.add_argument("--prompt-format", default="QCM-LEA",
                   help="IN-OUT parts: IN from Q,C,M,L,E; OUT from A,L,E, e.g. QCM-A, QCM-LEA (reason first), "
                        "QCM-ALE (answer first)")
    p.add_argument("--out", required=True, help="output LLaVA JSON file")
    p.set_defaults(func=scienceqa_command)


def scienceqa_command(args: argparse.Namespace) -> int:
    from vistune.data.scienceqa import convert_scienceqa

    counts = convert_scienceqa(args.problems, args.pid_splits, args.split, args.prompt_format, args.out)
    print(f"wrote {counts['records']} records ({counts['with_image']} with an image, {counts['text_only']} text-only) "
          f"-> {args.out}")
    return 0
