"""Where a training step's wall time goes, phase by phase.

    timer = StepTimer(device, sync=False)
    ...                          # fetch a batch
    timer.lap("data")            # the time since the previous lap is charged to "data"
    ...                          # forward
    timer.lap("forward")
    timer.step_done()
    timer.split()                # {"data": s, "forward": s, ...} mean seconds per step since the last split

Laps tile the time without gaps, so a split's phases add up to the wall time of its steps. On a GPU the host
runs ahead of the device unless `sync` makes every lap wait for it; without it the split is the host's view.
"""

from __future__ import annotations

import time

import torch

PHASES = ("data", "forward", "backward", "optimizer", "bookkeeping")
"""data: waiting for the loader and reading cached tower features; optimizer: clipping, the update and zeroing
the gradients; bookkeeping: the rest (counting tokens and FLOPs, logging, hooks, checkpoints)."""


class StepTimer:
    """Wall time per phase, summed over steps until `split` reads and resets it."""

    def __init__(self, device: torch.device, sync: bool = False) -> None:
        self._sync = sync and device.type == "cuda"
        self._totals = dict.fromkeys(PHASES, 0.0)
        self._steps = 0
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (or since the timer started) to `phase`."""
        if self._sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self._totals[phase] += now - self._mark
        self._mark = now

    def step_done(self) -> None:
        self._steps += 1

    def split(self) -> dict[str, float]:
        """Mean seconds per step of each phase since the last split (rounded to 0.1 ms); resets the sums."""
        steps = max(self._steps, 1)
        out = {p: round(self._totals[p] / steps, 4) for p in PHASES}
        self._totals = dict.fromkeys(PHASES, 0.0)
        self._steps = 0
        return out
