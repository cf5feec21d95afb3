"""vistune's training loop on a CUDA GPU, checked against the CPU: a few steps of a tiny model per setting.

    python benchmarks/gpu_check.py [--steps 6] [--json FILE]

Settings (stage 2 on a tiny random CLIP + Llama checkpoint and small LLaVA data with one- and two-image records):
`cpu_fp32` (the reference), `cuda_fp32` (packing, feature cache: the defaults), `cuda_fp32_plain` (no packing,
no feature cache), `cuda_bf16` (bf16 autocast), `cuda_compile` (decoder layers compiled), and stage 1 on CUDA.
Each CUDA fp32 run must give the CPU's losses within `--rel` (cuDNN's TF32 convolutions in the tower and other
kernels round differently), bf16 within 5 %; the script exits 1 otherwise. Needs a GPU; the tiny checkpoint
needs the default tokenizer (`VISTUNE_CACHE` may point at a folder holding it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = {  # name: (stage, overrides)
    "cpu_fp32": (2, ["train.device=cpu"]),
    "cuda_fp32": (2, ["train.device=cuda"]),
    "cuda_fp32_plain": (2, ["train.device=cuda", "train.packing=false", "train.feature_cache=false"]),
    "cuda_bf16": (2, ["train.device=cuda", "train.precision=bf16"]),
    "cuda_compile": (2, ["train.device=cuda", "train.compile=true"]),
    "cuda_stage1": (1, ["train.device=cuda"]),
}


def losses_of(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_settings(tmp: Path, names: list[str], device: str, steps: int) -> dict[str, dict]:
    """Each named setting trained `steps` steps from one tiny checkpoint on the same data: losses and seconds."""
    from vistune.train.loop import train
    from vistune.train.tiny import save_tiny_checkpoint, tiny_run_config, write_tiny_data

    ckpt = save_tiny_checkpoint(tmp / "ckpt", projector="mlp2x_gelu")
    data = write_tiny_data(tmp / "data", n=24, two_images_every=3)
    results = {}
    for name in names:
        stage, overrides = SETTINGS[name]
        overrides = [o.replace("=cuda", "=" + device) for o in overrides]
        if "train.feature_cache=false" not in overrides:
            overrides.append(f"train.feature_cache_dir={tmp / 'fc' / name}")
        cfg = tiny_run_config(ckpt, data, tmp / name, overrides, stage=stage, max_steps=steps, lr=1e-3)
        t0 = time.perf_counter()
        train(cfg, progress=False, resume=False)
        results[name] = {"losses": losses_of(tmp / name), "seconds": time.perf_counter() - t0}
    return results


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rel", type=float, default=5e-3, help="relative tolerance of CUDA fp32 against the CPU")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: every setting on the CPU (checks this script where there is no GPU)")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="comma-separated subset of the settings (cpu_fp32, the reference, is always run)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (--device cpu runs every setting on the CPU)")

    chosen = {"cpu_fp32", *args.settings.split(",")}
    unknown = chosen - set(SETTINGS)
    if unknown:
        raise SystemExit(f"unknown setting(s) {sorted(unknown)}; choose from {list(SETTINGS)}")
    with tempfile.TemporaryDirectory(prefix="vistune-gpu-check-") as tmp:
        results = train_settings(Path(tmp), [n for n in SETTINGS if n in chosen], args.device, args.steps)

    ref = results["cpu_fp32"]["losses"]
    failures = []
    for name, r in results.items():
        if SETTINGS[name][0] != 2 or name == "cpu_fp32":
            continue
        tol = 0.05 if name == "cuda_bf16" else args.rel
        worst = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref))
        r["max_rel_diff_to_cpu"] = worst
        if len(r["losses"]) != len(ref) or not worst <= tol:
            failures.append(f"{name}: losses differ from the CPU's by {worst:.2e} (tolerance {tol:g})")
    stage1 = results.get("cuda_stage1")
    if stage1 is not None and not (len(stage1["losses"]) == args.steps and all(map(math.isfinite, stage1["losses"]))):
        failures.append(f"cuda_stage1: losses {stage1['losses']} (expected {args.steps} finite values)")
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    summary = {"device": device, "torch": torch.__version__, "results": results, "failures": failures}
    for name, r in results.items():
        diff = r.get("max_rel_diff_to_cpu")
        print(f"{name:16s} losses {' '.join(f'{x:.4f}' for x in r['losses'])}"
              + (f"  max rel diff to cpu {diff:.1e}" if diff is not None else "") + f"  ({r['seconds']:.1f} s)")
    print("gpu_check: " + ("; ".join(failures) if failures else "all CUDA settings agree with the CPU"))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if failures:
        sys.exit(1)
    return summary


if __name__ == "__main__":
    run()
