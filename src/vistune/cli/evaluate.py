"""`vistune eval ...`: benchmarks."""

from __future__ import annotations

import argparse

from vistune.cli.common import handler


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a model")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    shapes = esub.add_parser("shapes", help="exact-answer benchmark on the synthetic world")
    shapes.add_argument("--model", required=True, help="vistune checkpoint directory")
    shapes.add_argument("--bench", required=True, help="bench.jsonl")
    shapes.add_argument("--images", required=True, help="image folder")
    shapes.add_argument("--out", required=True, help="output directory for report.json/.md/.png")
    shapes.add_argument("--batch-size", type=int, default=16, help="questions per batch")
    shapes.add_argument("--limit", type=int, default=None, help="score at most N questions")
    shapes.add_argument("--shuffle-images", action="store_true",
                        help="control: ask each question about a different image")
    shapes.set_defaults(func=handler("vistune.eval.shapes:eval_command"))
