"""The question-file benchmarks by command name."""

from __future__ import annotations

from vistune.eval.gqa import Gqa
from vistune.eval.mmbench import MMBench
from vistune.eval.mme import Mme
from vistune.eval.pope import Pope
from vistune.eval.seed import Seed
from vistune.eval.vqa import Vqa

BENCHMARKS = {"pope": Pope, "vqa": Vqa, "gqa": Gqa, "mme": Mme, "mmbench": MMBench, "seed": Seed}
"""`vistune eval NAME` -> its `Benchmark` class."""
