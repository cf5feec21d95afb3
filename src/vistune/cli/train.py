"""`vistune train`: one loop for both stages, from a YAML config."""

from __future__ import annotations

import argparse

from vistune.cli.common import UsageError, add_command


class _HelpConfig(argparse.Action):
    """`vistune train --help-config`: print every RunConfig key and exit (like --help, needs no --config)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from vistune.config import RunConfig, describe

        print("\n".join(describe(RunConfig)))
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    train = add_command(sub, "train", "train stage 1 or stage 2 from a YAML config")
    train.add_argument("--config", required=True, help="YAML run config (see configs/)")
    train.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in output_dir")
    train.add_argument("--no-resume", action="store_true", help="start over even if output_dir has checkpoints")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    train.add_argument("--help-config", action=_HelpConfig, help="list every config key with its default and meaning")
    train.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from vistune.config import load_run_config
    from vistune.train.loop import TrainingError, train

    if args.resume and args.no_resume:
        raise UsageError("--resume and --no-resume contradict each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = load_run_config(args.config, args.overrides)
    resume = True if args.resume else False if args.no_resume else None
    try:
        final = train(run, progress=True, resume=resume)
    except TrainingError as e:
        print(f"vistune train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(final)
    return 0
