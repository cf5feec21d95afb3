"""`vistune export`, `vistune import` and `vistune merge-lora`: checkpoints in other forms."""

from __future__ import annotations

import argparse
import json

from vistune.cli.common import UsageError, add_command
from vistune.conversation import TEMPLATE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    export = add_command(sub, "export", "export a checkpoint to another format")
    export.add_argument("--model", required=True, help="vistune checkpoint directory")
    export.add_argument("--to", required=True, choices=["hf-llava", "gguf"],
                        help="target format: hf-llava (transformers), gguf (llama.cpp: model.gguf + mmproj.gguf)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--outtype", default="f32", choices=["f32", "f16", "q8_0"],
                        help="gguf: precision of the language model (the projector stays f32)")
    export.add_argument("--llama-cpp", default=None,
                        help="gguf: a llama.cpp source tree with convert_hf_to_gguf.py (default: $VISTUNE_LLAMA_CPP, "
                             "else the one make install keeps in the virtual environment)")
    export.set_defaults(func=export_command)

    merge = add_command(sub, "merge-lora", "merge LoRA adapters into a plain checkpoint")
    merge.add_argument("--model", required=True, help="checkpoint directory with LoRA adapters")
    merge.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    merge.set_defaults(func=merge_command)
    _register_import(sub)


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "import", "turn a released LLaVA checkpoint into a vistune checkpoint",
        epilog="forms:\n"
               "  vistune import --from llava-hf SRC --out CK            transformers' llava or llava-next directory\n"
               "  vistune import --from llava SRC --out CK               the original LlavaLlamaForCausalLM\n"
               "  vistune import --from llava --projector mm_projector.bin --llm DIR --vision-tower DIR --out CK\n"
               "                                                         an original stage-1 projector")
    p.add_argument("src", nargs="?", default=None, help="source checkpoint directory (not with --projector)")
    p.add_argument("--from", dest="source_format", required=True, choices=["llava-hf", "llava"],
                   help="source format")
    p.add_argument("--out", required=True, help="output vistune checkpoint directory (must not exist or be empty)")
    p.add_argument("--template", default=None, choices=list(TEMPLATE_NAMES),
                   help="conversation template (default: llava-hf: the processor's chat template, checked; llava: "
                        "vicuna_v1 for a full model, plain for a stage-1 projector)")
    p.add_argument("--system-prompt", default=None,
                   help="system message for conversations that bring none (default: the template's own)")
    p.add_argument("--projector", default=None, help="llava: a stage-1 mm_projector.bin (config.json beside it)")
    p.add_argument("--llm", default=None, help="llava with --projector: the base LLM directory")
    p.add_argument("--vision-tower", default=None,
                   help="llava: a local directory holding the tower that mm_vision_tower names")
    p.set_defaults(func=import_command)


def export_command(args: argparse.Namespace) -> int:
    if args.to == "gguf":
        from vistune.checkpoint_format import read_config
        from vistune.model.gguf_export import export_gguf, gguf_warnings

        out = export_gguf(args.model, args.out, args.outtype, args.llama_cpp)
        for warning in gguf_warnings(read_config(args.model)):
            print(f"warning: {warning}")
        print(f"wrote {out}/model.gguf and {out}/mmproj.gguf (how to run them: {out}/README.md)")
        return 0
    if args.outtype != "f32" or args.llama_cpp is not None:
        raise UsageError("--outtype and --llama-cpp apply to --to gguf only")
    from vistune.model.export import export_hf_llava

    out = export_hf_llava(args.model, args.out)
    architecture = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote {out} (load with transformers' {architecture} and AutoProcessor)")
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from vistune.train.lora import merge_lora_checkpoint

    out = merge_lora_checkpoint(args.model, args.out)
    print(f"merged LoRA adapters of {args.model} into {out}")
    return 0


def import_command(args: argparse.Namespace) -> int:
    from vistune.model.importers import import_llava, import_llava_hf

    if args.source_format == "llava-hf":
        unused = [flag for flag, value in (("--projector", args.projector), ("--llm", args.llm),
                                           ("--vision-tower", args.vision_tower)) if value is not None]
        if unused:
            raise UsageError(f"{', '.join(unused)} only apply to --from llava")
        if args.src is None:
            raise UsageError("--from llava-hf needs the source directory")
        out = import_llava_hf(args.src, args.out, template=args.template, system_prompt=args.system_prompt)
    else:
        if (args.src is None) == (args.projector is None):
            raise UsageError("--from llava takes either a full checkpoint directory or --projector FILE --llm DIR")
        out = import_llava(args.src, args.out, projector=args.projector, llm=args.llm,
                           vision_tower=args.vision_tower, template=args.template, system_prompt=args.system_prompt)
    from vistune.checkpoint_format import read_config

    template = read_config(out)["model"]["template"]
    print(f"wrote {out} (template {template}; use it with vistune chat / serve / eval, or init_from to fine-tune)")
    return 0
