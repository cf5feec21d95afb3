"""Command line: argv -> typed library functions. The only place that parses arguments.

Each group module registers its subcommands; a command function turns flags into one call of a library
function and prints the result. A `UserError` (or a file that cannot be read) is printed as one line and
exits with 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vistune.cli import data, datagen, demo, evaluate, model_io, train, use
from vistune.errors import UserError
from vistune.version import __version__

GROUPS = (data, model_io, train, datagen, use, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistune", description="Visual instruction tuning toolkit.")
    parser.add_argument("--version", action="version", version=f"vistune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
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
    except (UserError, OSError) as e:
        if args.debug:
            raise
        print(f"vistune {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return int(code or 0)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
