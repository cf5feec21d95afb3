"""`vistune eval ...`: benchmarks."""

from __future__ import annotations

import argparse

from vistune.cli.common import add_command, add_generation_flags, sampling_params
from vistune.cli.use import load_engine


def register(sub: argparse._SubParsersAction) -> None:
    ev = add_command(sub, "eval", "evaluate a model")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    _register_shapes(esub)


def _register_shapes(esub: argparse._SubParsersAction) -> None:
    shapes = add_command(esub, "shapes", "exact-answer benchmark on the synthetic world")
    shapes.add_argument("--model", required=True, help="vistune checkpoint directory")
    shapes.add_argument("--bench", required=True, help="bench.jsonl")
    shapes.add_argument("--images", required=True, help="image folder")
    shapes.add_argument("--out", required=True, help="output directory for report.json/.md/.png")
    shapes.add_argument("--batch-size", type=int, default=16, help="questions per batch")
    shapes.add_argument("--limit", type=int, default=None, help="score at most N questions")
    shapes.add_argument("--shuffle-images", action="store_true",
                        help="control: ask each question about a different image")
    add_generation_flags(shapes, max_new_tokens=8)
    shapes.set_defaults(func=shapes_command)


def shapes_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vistune.eval.shapes import evaluate, load_bench

    params = sampling_params(args)
    bench = load_bench(args.bench, args.limit)
    engine = load_engine(args)
    report = evaluate(engine, bench, args.images, args.out, shuffle=args.shuffle_images, batch_size=args.batch_size,
                      params=params)
    print(f"overall {report['overall']:.1f}% on {report['n']} questions")
    for t, v in report["by_type"].items():
        print(f"  {t:<18} {v:5.1f}%")
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
