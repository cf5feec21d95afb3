"""`vistune generate`: load captions + boxes, then hand them to the chosen teacher."""

from __future__ import annotations

import argparse
import sys


def generate_command(args: argparse.Namespace) -> int:
    if args.teacher == "openai":
        from vistune.datagen.openai_teacher import generate_command_openai  # lazy: needs httpx

        return generate_command_openai(args)
    if args.teacher != "symbolic":
        print(f"vistune generate: error: unknown teacher {args.teacher!r}", file=sys.stderr)
        return 2
    from vistune.datagen.context import load_image_contexts
    from vistune.datagen.symbolic import TYPES, symbolic_command

    if bool(args.input) == bool(args.captions):
        print("vistune generate: error: give either --captions (with optional --instances) or --input",
              file=sys.stderr)
        return 2
    if args.instances and not args.captions:
        print("vistune generate: error: --instances needs --captions", file=sys.stderr)
        return 2
    types = [t.strip() for t in (args.types or "").split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if not types or bad:
        print(f"vistune generate: error: --types must list some of {','.join(TYPES)} (got {args.types!r})",
              file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("vistune generate: error: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        contexts, skips = load_image_contexts(args.input, args.captions, args.instances)
    except (OSError, ValueError) as e:
        print(f"vistune generate: error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        contexts = contexts[: args.limit]
    if not contexts:
        print("vistune generate: error: no usable images in the input", file=sys.stderr)
        return 2
    return symbolic_command(args, contexts, skips)
