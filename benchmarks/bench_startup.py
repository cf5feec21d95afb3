"""Start-up time of the commands: `vistune --help`, and `vistune chat --model CK --prompt ...` to its first answer
byte, each in a fresh process, plus where a chat's start-up goes (a phase breakdown in one fresh process).

    .venv/bin/python benchmarks/bench_startup.py [--model CK ...] [--default-parts] [--reps 3]

Checkpoints: a tiny random one (always, written to a temporary directory), each `--model`, and with
`--default-parts` the default offline parts (EfficientNet-Lite0 + SmolLM2-135M, untrained projector; written to a
temporary directory; needs the offline weight packages). Runs alternate between the checkpoints; medians.
Greedy, one answer token: what is timed is starting, not answering.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

PHASES = r"""
import json, sys, time
t0 = time.perf_counter(); marks = {}
import torch; marks["import torch"] = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer; marks["import transformers models"] = time.perf_counter()
from vistune.inference.chat import ChatSession; from vistune.inference.engine import Engine
from vistune.inference.generate import SamplingParams; marks["import vistune"] = time.perf_counter()
engine = Engine.load(sys.argv[1]); marks["load checkpoint"] = time.perf_counter()
for _ in ChatSession(engine, params=SamplingParams(max_new_tokens=1, temperature=0.0)).ask_stream("What is this?"):
    break
marks["first answer token"] = time.perf_counter()
prev, out = t0, {}
for name, t in marks.items():
    out[name], prev = t - prev, t
print(json.dumps(out))
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def time_to_first_byte(argv: list[str]) -> tuple[float, str]:
    """Seconds from spawning `argv` to its first stdout byte; and its stderr (must stay empty of progress bars)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.read(1)
    first = time.perf_counter() - start
    _, err = proc.communicate(timeout=600)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err.decode()}")
    return first, err.decode()


def chat_argv(ckpt: Path) -> list[str]:
    return [sys.executable, "-m", "vistune", "chat", "--model", str(ckpt), "--prompt", "What is this?",
            "--max-new-tokens", "1", "--temperature", "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="a vistune checkpoint (repeatable)")
    ap.add_argument("--default-parts", action="store_true", help="also a checkpoint of the default offline parts")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, SRC)
    from vistune.train.tiny import save_tiny_checkpoint
    from vistune.utils.quiet import silence_library_output

    silence_library_output()
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    checkpoints = {"tiny": save_tiny_checkpoint(tmp / "tiny")}
    if args.default_parts:
        import torch

        from vistune.config import ModelConfig
        from vistune.model.checkpoint import save_checkpoint
        from vistune.model.vlm import VisionLanguageModel

        model = VisionLanguageModel.build(ModelConfig(vision_layer=-1, feature_norm=True), dtype=torch.float32)
        checkpoints["default parts"] = save_checkpoint(model, tmp / "default")
        del model
    checkpoints.update({Path(m).name or m: Path(m) for m in args.model})

    times: dict[str, list[float]] = {"vistune --help": []}
    times.update({f"chat --prompt ({name})": [] for name in checkpoints})
    bars = 0
    for _ in range(args.reps):
        times["vistune --help"].append(time_to_first_byte([sys.executable, "-m", "vistune", "--help"])[0])
        for name, ckpt in checkpoints.items():
            seconds, err = time_to_first_byte(chat_argv(ckpt))
            times[f"chat --prompt ({name})"].append(seconds)
            bars += "it/s" in err or "Loading weights" in err
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; medians of {args.reps} fresh processes")
    for name, values in times.items():
        print(f"  {name:40s} {statistics.median(values):6.2f} s   (all: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"  progress bars seen on stderr: {bars}")
    for name, ckpt in checkpoints.items():
        done = subprocess.run([sys.executable, "-c", PHASES, str(ckpt)], capture_output=True, text=True, env=_env(),
                              check=True)
        phases = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"where a chat start goes ({name}): " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))


if __name__ == "__main__":
    main()
