"""`vistune demo`: the offline end-to-end run; `vistune ablate`: the paper's ablations on the same world."""

from __future__ import annotations

import argparse

from vistune.cli.common import add_command
from vistune.config import PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    demo = add_command(sub, "demo", "build a visual assistant from scratch offline and evaluate it")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    demo.add_argument("--quick", action="store_true", help="a small run (minutes) for smoke tests")
    demo.add_argument("--long", action="store_true",
                      help="stage 2 trains 360 steps instead of 90 (about 46 min instead of 19 on 2 AVX-512 cores, "
                           "2.2-2.6x that on an older AVX2-only CPU): the accuracy the 20-minute recipe does not "
                           "reach; use its own --out (runs/demo-long)")
    demo.add_argument("--force", action="store_true", help="redo finished steps")
    demo.add_argument("--precision", choices=PRECISIONS, default=None,
                      help="training precision for both stages instead of the recipes' fp32 (on every CPU: the same "
                           "figures up to the matmul kernels' rounding); `auto` trains in bf16 autocast where the "
                           "CPU has native bf16 (faster, figures within bf16's noise); a changed precision retrains")
    demo.add_argument("--seed", type=int, default=0,
                      help="added to both stages' train.seed (data order, initialisations); a changed seed "
                           "retrains")
    demo.add_argument("--seeds", type=int, default=1,
                      help="run seeds 0..N-1 (seed 0 in --out, seed k in OUT/seeds/seed-k) and write "
                           "OUT/seeds.md, seeds.json and seeds.png with the mean ± standard deviation")
    demo.set_defaults(func=demo_command)
    _register_ablate(sub)


ABLATION_NAMES = ("no_instruction_tuning", "no_pretraining", "last_layer", "conversation_only", "answer_first")
"""For --help only (vistune.ablate.ABLATIONS is the list; importing it here would slow every command's start)."""


def _register_ablate(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "ablate", "the paper's ablations on the demo's synthetic world, each against the full "
                                   "recipe with the same steps and seeds")
    p.add_argument("--out", default="runs/demo", help="study directory; seed k's full recipe is `vistune demo "
                   "--seeds`'s seed k there, so the demo's directory (the default) shares its trained runs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (at least 1)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these ablations (and the full recipe): "
                   f"{', '.join(ABLATION_NAMES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny runs of every step, for smoke tests")
    p.add_argument("--force", action="store_true", help="redo finished steps")
    p.set_defaults(func=ablate_command)


def demo_command(args: argparse.Namespace) -> int:
    from vistune.demo import run_demo

    run_demo(args.out, quick=args.quick, force=args.force, precision=args.precision, seed=args.seed,
             seeds=args.seeds, long=args.long)
    return 0


def ablate_command(args: argparse.Namespace) -> int:
    from vistune.ablate import run_ablations

    run_ablations(args.out, seeds=args.seeds, only=args.only, quick=args.quick, force=args.force)
    return 0
