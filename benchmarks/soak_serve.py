"""Soak test of `vistune serve`: many concurrent streaming clients for minutes, some leaving mid-stream.

    .venv/bin/python benchmarks/soak_serve.py [--clients 64] [--duration 120] [--warmup 20] [--leave 0.15]
                                              [--max-tokens 24] [--rss-bound-mb 64] [--model DIR] [--json OUT]

The server runs in a subprocess (`vistune serve`, CPU) with a tiny random model (or `--model`), on a loopback
port. First each of 16 prompts is answered alone (greedy, not streamed): those are the reference answers.
Then `--clients` clients stream requests back to back for `--duration` seconds; a fraction `--leave` of the
requests disconnect after a few chunks. Checked: every completed streamed answer equals its reference, no
request fails, cancelled requests release their places (the server reports nothing queued or running at
the end), and the server's resident memory at the end is within `--rss-bound-mb` of its value after
`--warmup` seconds of load. Reports requests/s, latency percentiles and memory; exits 1 if a check fails.
The run stops by itself: every request is bounded by `--max-tokens` and the load by `--duration`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import wait_ready  # noqa: E402

PROMPTS = [f"Question {i}: tell me about the number {i * 7}." + " Please." * (i % 4) for i in range(16)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def tiny_checkpoint(directory: Path) -> Path:
    import torch

    from vistune.model.checkpoint import save_checkpoint
    from vistune.model.tiny import tiny_vlm

    model = tiny_vlm(seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the init: varied greedy text instead of one repeated token
        for p in model.llm.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_checkpoint(model, directory / "soak-tiny")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def soak(url: str, pid: int, args) -> dict:
    import httpx

    body = {"messages": [], "max_tokens": args.max_tokens, "temperature": 0}
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        reference = []
        for prompt in PROMPTS:
            r = await http.post("/v1/chat/completions",
                                json={**body, "messages": [{"role": "user", "content": prompt}]})
            r.raise_for_status()
            reference.append(r.json()["choices"][0]["message"]["content"])
        rss_idle = rss_mb(pid)
        start = time.perf_counter()
        deadline = start + args.duration
        stats = {"completed": 0, "left": 0, "errors": 0, "mismatches": 0, "latency": [], "ttft": []}
        rss_samples: list[tuple[float, float]] = []

        async def client(i: int) -> None:
            rng = random.Random(i)
            while time.perf_counter() < deadline:
                k = rng.randrange(len(PROMPTS))
                leave_after = rng.randint(1, 4) if rng.random() < args.leave else None
                t0 = time.perf_counter()
                pieces, chunks, first = [], 0, None
                try:
                    async with http.stream("POST", "/v1/chat/completions", json={
                            **body, "stream": True, "messages": [{"role": "user", "content": PROMPTS[k]}]}) as r:
                        if r.status_code != 200:
                            stats["errors"] += 1
                            continue
                        async for line in r.aiter_lines():
                            if not line.startswith("data: "):
                                continue
                            if line == "data: [DONE]":
                                break
                            event = json.loads(line[6:])
                            if "error" in event:
                                stats["errors"] += 1
                                break
                            if event["choices"] and event["choices"][0]["delta"].get("content"):
                                first = first or time.perf_counter()
                                pieces.append(event["choices"][0]["delta"]["content"])
                            chunks += 1
                            if leave_after is not None and chunks >= leave_after:
                                break  # leaving the block closes the connection mid-stream
                except httpx.HTTPError:
                    stats["errors"] += 1
                    continue
                if leave_after is not None and chunks >= leave_after:
                    stats["left"] += 1
                    continue
                stats["completed"] += 1
                stats["latency"].append(time.perf_counter() - t0)
                stats["ttft"].append((first or time.perf_counter()) - t0)
                if "".join(pieces) != reference[k]:
                    stats["mismatches"] += 1

        async def sample_memory() -> None:
            while time.perf_counter() < deadline:
                rss_samples.append((time.perf_counter() - start, rss_mb(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(sample_memory(), *[client(i) for i in range(args.clients)])
        elapsed = time.perf_counter() - start
        settle = time.perf_counter() + 30
        while True:  # cancelled requests must have left the batch and the queue
            health = (await http.get("/health")).json()
            if (health["queued"], health["running"], health["admitted"]) == (0, 0, 0) or time.perf_counter() > settle:
                break
            await asyncio.sleep(0.2)
        released = (health["queued"], health["running"], health["admitted"]) == (0, 0, 0)
        after = await http.post("/v1/chat/completions",
                                json={**body, "messages": [{"role": "user", "content": PROMPTS[0]}]})
        still_right = after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == reference[0]
    warm = [mb for t, mb in rss_samples if t >= args.warmup]
    rss_warm = warm[0] if warm else rss_samples[-1][1]
    rss_end = rss_mb(pid)
    return {
        "clients": args.clients, "duration_s": round(elapsed, 1), "completed": stats["completed"],
        "left_mid_stream": stats["left"], "errors": stats["errors"], "mismatches": stats["mismatches"],
        "requests_per_s": round((stats["completed"] + stats["left"]) / elapsed, 2),
        "completed_per_s": round(stats["completed"] / elapsed, 2),
        "latency_s": {f"p{q}": round(percentile(stats["latency"], q), 3) for q in (50, 90, 99)},
        "ttft_s": {f"p{q}": round(percentile(stats["ttft"], q), 3) for q in (50, 90, 99)},
        "rss_mb": {"idle": round(rss_idle, 1), "after_warmup": round(rss_warm, 1),
                   "peak": round(max(mb for _, mb in rss_samples), 1), "end": round(rss_end, 1)},
        "rss_bound_mb": args.rss_bound_mb, "slots_released": released, "answers_after": still_right,
        "mean_answer_s": round(statistics.mean(stats["latency"]), 3) if stats["latency"] else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the memory reference")
    ap.add_argument("--leave", type=float, default=0.15, help="fraction of requests that disconnect mid-stream")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rss-bound-mb", type=float, default=64.0, help="allowed RSS growth after warm-up")
    ap.add_argument("--model", help="checkpoint to serve (default: a tiny random model)")
    ap.add_argument("--json", help="write the report here too")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_checkpoint(Path(tmp))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = subprocess.Popen([sys.executable, "-m", "vistune", "serve", "--model", str(model), "--port",
                                   str(port), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, server, timeout=180)
            report = asyncio.run(soak(url, server.pid, args))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    report["rss_growth_mb"] = round(report["rss_mb"]["end"] - report["rss_mb"]["after_warmup"], 1)
    ok = (report["errors"] == 0 and report["mismatches"] == 0 and report["completed"] > 0
          and report["slots_released"] and report["answers_after"] and report["rss_growth_mb"] <= args.rss_bound_mb)
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
