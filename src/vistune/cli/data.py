"""`vistune data show|check`: inspect and validate LLaVA-format datasets."""

from __future__ import annotations

import argparse

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
