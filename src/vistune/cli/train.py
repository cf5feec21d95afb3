"""`vistune train`: one loop for both stages, from a YAML config."""

from __future__ import annotations

import argparse

from vistune.cli.common import handler


class _HelpConfig(argparse.Action):
    """`vistune train --help-config`: print every RunConfig key and exit (like --help, needs no --config)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from vistune.config import RunConfig, describe

        print("\n".join(describe(RunConfig)))
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train stage 1 or stage 2 from a YAML config")
    train.add_argument("--config", required=True, help="YAML run config (see configs/)")
    train.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in output_dir")
    train.add_argument("--no-resume", action="store_true", help="start over even if output_dir has checkpoints")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    train.add_argument("--help-config", action=_HelpConfig, help="list every config key with its default and meaning")
    train.set_defaults(func=handler("vistune.train.loop:train_command"))
