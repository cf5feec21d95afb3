"""Command line: argv -> typed library functions. The only module tree that parses arguments."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vistune.cli import data, datagen, demo, evaluate, model_io, train, use

GROUPS = (data, model_io, train, datagen, use, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    from vistune import __version__

    parser = argparse.ArgumentParser(prog="vistune", description="Visual instruction tuning toolkit.")
    parser.add_argument("--version", action="version", version=f"vistune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vistune.utils.quiet import silence_library_output

    silence_library_output()
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
