"""What every command shares: the usage-error type, help formatting and the flags several commands declare."""

from __future__ import annotations

import argparse

from vistune.errors import UserError


class UsageError(UserError):
    """A flag the user can fix; printed as one line (no traceback) and the command exits with 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default in --help."""


def add_command(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help shows every default."""
    return sub.add_parser(name, help=help, description=kwargs.pop("description", help), formatter_class=_Formatter,
                          **kwargs)


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, for every command that loads a model to answer."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)")


def add_generation_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The sampling flags every answering command shares; greedy by default, so answers repeat."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="answer length limit")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature > 0)")
    add_device_flags(p)


def sampling_params(args: argparse.Namespace):
    """`SamplingParams` from the generation flags (validated once, there)."""
    from vistune.inference.generate import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)


def run_name(checkpoint: str) -> str:
    """A checkpoint's display name: its run's directory when the checkpoint is the run's `final/` or a step."""
    from pathlib import Path

    path = Path(checkpoint).resolve()
    if path.name == "final" or path.parent.name == "checkpoints":
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run.name if path.name == "final" else f"{run.name}-{path.name}"
    return path.name
