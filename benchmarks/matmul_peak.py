"""This machine's dense matmul peak at the shapes of a training step, fp32 and bf16 (where bf16 is native).

    .venv/bin/python benchmarks/matmul_peak.py [--tokens 2048] [--hidden 576] [--intermediate 1536] [--vocab 49152]

The shapes are those of SmolLM2-135M's linear layers over `tokens` rows (attention projections, MLP, LM head);
each is timed for about `--seconds` after a warm-up and the best rate is kept. `peak()` returns the best rate
over the shapes, which `bench_peer.py` uses as the denominator of its model-FLOPs fractions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def shapes(tokens: int, hidden: int, intermediate: int, vocab: int) -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of each matmul kind: rows x inputs x outputs."""
    return {"attention_proj": (tokens, hidden, hidden), "mlp_up": (tokens, hidden, intermediate),
            "mlp_down": (tokens, intermediate, hidden), "lm_head": (tokens // 4, hidden, vocab),
            "square_2048": (2048, 2048, 2048)}


def rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Best FLOP/s of `(m, k) @ (k, n)` in `dtype` over repeated runs."""
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * m * k * n / (time.perf_counter() - t))
    return best


def measure(tokens: int = 2048, hidden: int = 576, intermediate: int = 1536, vocab: int = 49152,
            seconds: float = 0.5, bf16: bool | None = None) -> dict:
    """{"fp32": {shape: FLOP/s}, "bf16": {...} (when native), "peak": {"fp32": best, "bf16": best}}."""
    from vistune.train.distributed import native_bf16

    if bf16 is None:
        bf16 = native_bf16(torch.device("cpu"))
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16 else {})}
    out: dict = {"threads": torch.get_num_threads(), "peak": {}}
    for name, dtype in dtypes.items():
        out[name] = {s: rate(*mkn, dtype, seconds) for s, mkn in shapes(tokens, hidden, intermediate, vocab).items()}
        out["peak"][name] = max(out[name].values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seconds", type=float, default=0.5, help="timing per shape and dtype")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    res = measure(args.tokens, args.hidden, args.intermediate, args.vocab, args.seconds)
    for dtype in res["peak"]:
        for s, r in res[dtype].items():
            print(f"{dtype:5s} {s:15s} {r / 1e9:8.1f} GFLOP/s")
    print("peak: " + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in res["peak"].items())
          + f" ({res['threads']} threads)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
