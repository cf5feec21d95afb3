"""What every command shares: lazy handlers, the user-error type and the flags several commands declare."""

from __future__ import annotations

import argparse
import importlib
from typing import Callable


class UsageError(Exception):
    """A mistake the user can fix; printed as one line (no traceback) and the command exits with 2."""


def handler(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Resolve "module:function" lazily so `vistune --help` stays fast."""

    def run(args: argparse.Namespace) -> int | None:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run
