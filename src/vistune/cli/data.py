"""`vistune data show|check`: inspect and validate LLaVA-format datasets."""

from __future__ import annotations

import argparse
import sys

from vistune.cli.common import handler

def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect and validate LLaVA-format datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    show = dsub.add_parser("show", help="print one rendered sample with its supervised tokens marked")
    show.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    show.add_argument("--index", type=int, default=0, help="record index (0-based)")
    show.add_argument("--llm", default="smollm2-135m-instruct", help="LLM whose tokenizer renders the sample")
    show.add_argument("--template", default="chat_template", help="conversation template")
    show.add_argument("--num-image-tokens", type=int, default=None,
                      help="image positions per image (default: from --vision-tower)")
    show.add_argument("--vision-tower", default="efficientnet-lite0", help="tower that fixes the image token count")
    show.add_argument("--seed", type=int, default=0, help="seed for the random image placement")
    show.add_argument("--inference", action="store_true", help="render as at inference (fixed image placement)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=handler("vistune.data.inspect:show_command"))

    check = dsub.add_parser("check", help="list every bad record; exit 1 if any")
    check.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    check.add_argument("--images", default=None, help="image folder (image paths are relative to it)")
    check.add_argument("--llm", default=None, help="render with this LLM's tokenizer to check lengths")
    check.add_argument("--template", default="chat_template", help="conversation template (with --llm)")
    check.add_argument("--max-length", type=int, default=2048, help="longest allowed rendered sample")
    check.add_argument("--vision-tower", default="efficientnet-lite0", help="tower that fixes the image token count")
    check.add_argument("--num-image-tokens", type=int, default=None, help="override the image token count")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=handler("vistune.data.inspect:check_command"))
    _register_scienceqa(dsub)


def _register_scienceqa(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("scienceqa", help="convert ScienceQA into LLaVA training records")
    p.add_argument("--problems", required=True, help="ScienceQA problems.json")
    p.add_argument("--pid-splits", default=None,
                   help="pid_splits.json (default: use each problem's own 'split' field)")
    p.add_argument("--split", default="train", help="split to convert (default: train)")
    p.add_argument("--prompt-format", default="QCM-LEA",
                   help="IN-OUT parts: IN from Q,C,M,L,E; OUT from A,L,E, e.g. QCM-A, QCM-LEA (reason first), "
                        "QCM-ALE (answer first) (default: QCM-LEA)")
    p.add_argument("--out", required=True, help="output LLaVA JSON file")
    p.set_defaults(func=scienceqa_command)


def scienceqa_command(args: argparse.Namespace) -> int:
    from vistune.data.scienceqa import ScienceQAError, convert_scienceqa

    try:
        counts = convert_scienceqa(args.problems, args.pid_splits, args.split, args.prompt_format, args.out)
    except ScienceQAError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {counts['records']} records ({counts['with_image']} with an image, {counts['text_only']} text-only) "
          f"-> {args.out}")
    return 0
