"""One AdamW step over the default LLM's parameters: the fused kernel `build_optimizer` picks on CPU against
PyTorch's default (foreach) implementation.

    .venv/bin/python benchmarks/bench_optim.py [--reps 5] [--threads 2]

The parameters are SmolLM2-135M-Instruct's (the built-in LLM, every tensor trainable, as in stage 2) with
random gradients. The two optimizers alternate which goes first in each repetition; the first step of each
(state allocation) is not timed. Reports medians, and checks that both give the same parameters after the
timed steps (to fp32 rounding).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vistune.model.llm import load_llm

    llm, _ = load_llm("smollm2-135m-instruct", torch.float32)
    base = [p.detach().clone() for p in llm.parameters()]
    grads = [torch.randn_like(p) * 1e-3 for p in base]
    n_params = sum(p.numel() for p in base)

    def optimizer(fused: bool):
        params = [torch.nn.Parameter(p.clone()) for p in base]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused or None, foreach=None)
        opt.step()  # allocates the moments
        return params, opt

    runs = {"fused": optimizer(True), "default": optimizer(False)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.reps):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            runs[name][1].step()
            times[name].append(time.perf_counter() - start)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(runs["fused"][0], runs["default"][0]))
    fused, default = statistics.median(times["fused"]), statistics.median(times["default"])
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"{n_params / 1e6:.0f}M parameters, {args.reps} steps each")
    print(f"AdamW step: fused {fused * 1000:.0f} ms, default {default * 1000:.0f} ms: {default / fused:.1f}x "
          f"(same parameters after the steps: {same})")


if __name__ == "__main__":
    main()
