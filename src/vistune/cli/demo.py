"""`vistune demo`: the offline end-to-end run."""

from __future__ import annotations

import argparse

from vistune.cli.common import add_command


def register(sub: argparse._SubParsersAction) -> None:
    demo = add_command(sub, "demo", "build a visual assistant from scratch offline and evaluate it")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    demo.add_argument("--quick", action="store_true", help="a small run (minutes) for smoke tests")
    demo.add_argument("--force", action="store_true", help="redo finished steps")
    demo.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from vistune.demo import run_demo

    run_demo(args.out, quick=args.quick, force=args.force)
    return 0
