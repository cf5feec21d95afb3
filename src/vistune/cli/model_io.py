"""`vistune export` and `vistune merge-lora`: checkpoints in other forms."""

from __future__ import annotations

import argparse

from vistune.cli.common import handler


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a checkpoint to another format")
    export.add_argument("--model", required=True, help="vistune checkpoint directory")
    export.add_argument("--to", required=True, choices=["hf-llava"], help="target format")
    export.add_argument("--out", required=True, help="output directory")
    export.set_defaults(func=handler("vistune.model.export:export_command"))

    merge = sub.add_parser("merge-lora", help="merge LoRA adapters into a plain checkpoint")
    merge.add_argument("--model", required=True, help="checkpoint directory with LoRA adapters")
    merge.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    merge.set_defaults(func=handler("vistune.train.lora:merge_command"))
