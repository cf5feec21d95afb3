"""`vistune export` and `vistune merge-lora`: checkpoints in other forms."""

from __future__ import annotations

import argparse

from vistune.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    export = add_command(sub, "export", "export a checkpoint to another format")
    export.add_argument("--model", required=True, help="vistune checkpoint directory")
    export.add_argument("--to", required=True, choices=["hf-llava"], help="target format")
    export.add_argument("--out", required=True, help="output directory")
    export.set_defaults(func=export_command)

    merge = add_command(sub, "merge-lora", "merge LoRA adapters into a plain checkpoint")
    merge.add_argument("--model", required=True, help="checkpoint directory with LoRA adapters")
    merge.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    merge.set_defaults(func=merge_command)


def export_command(args: argparse.Namespace) -> int:
    from vistune.model.export import export_hf_llava

    out = export_hf_llava(args.model, args.out)
    print(f"wrote {out} (load with transformers' LlavaForConditionalGeneration and AutoProcessor)")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from vistune.train.lora import merge_lora_checkpoint

    out = merge_lora_checkpoint(args.model, args.out)
    print(f"merged LoRA adapters of {args.model} into {out}")
    return 0
