"""Answers per second of `vistune serve` under concurrent clients: batched worker against one-at-a-time.

    .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--clients 16] [--requests 2] [--max-tokens 32]
                                               [--reps 2] [--threads 1]

Two servers run in subprocesses with the same model (a checkpoint, or by default the default parts
EfficientNet-Lite0 + SmolLM2-135M with an untrained projector): the baseline worker answers one request at
a time (`max_batch_size=1`), the other batches up to 16 waiting requests. Each measurement sends
`--clients` concurrent openai-client streams of `--requests` requests each (a photo as a data URL, a
different question each, greedy, `--max-tokens` tokens), alternating baseline and batched runs; it reports
median answers/s and checks that both servers gave the same answers.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time


def serve(args) -> None:
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    from vistune.config import ModelConfig
    from vistune.inference.engine import Engine, EngineWorker
    from vistune.model.vlm import VisionLanguageModel
    from vistune.serve.app import create_app

    if args.model:
        engine = Engine.from_checkpoint(args.model, max_batch_size=args.serve_batch)
    else:
        torch.manual_seed(0)
        engine = Engine(VisionLanguageModel.build(ModelConfig()), max_batch_size=args.serve_batch)
    app = create_app(engine, model_name="bench", worker=EngineWorker(engine, args.serve_batch))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-batch", str(batch), "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} did not start")


def measure(url: str, image_url: str, args) -> tuple[float, float, dict]:
    import openai

    answers: dict[tuple[int, int], str] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        oc = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)
        for k in range(args.requests):
            question = f"Question {c}-{k}: what is in this picture?" + " Be precise." * (c % 4)
            t = time.perf_counter()
            stream = oc.chat.completions.create(
                model="bench", temperature=0, max_tokens=args.max_tokens, stream=True,
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                       {"type": "text", "text": question}]}])
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            with lock:
                answers[(c, k)] = text
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if len(answers) != args.clients * args.requests:
        raise SystemExit(f"only {len(answers)} of {args.clients * args.requests} answers arrived")
    return len(answers) / wall, statistics.median(latencies), answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="vistune checkpoint (default: the default parts)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the servers")
    ap.add_argument("--serve-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_batch:
        serve(args)
        return

    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image_url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    servers = {"one-at-a-time": start_server(args, 1), "batched": start_server(args, 16)}
    try:
        for proc, url in servers.values():
            wait_ready(url, proc)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        reference = None
        for rep in range(args.reps):
            for name in (("one-at-a-time", "batched") if rep % 2 == 0 else ("batched", "one-at-a-time")):
                rate, latency, answers = measure(servers[name][1], image_url, args)
                if reference is None:
                    reference = answers
                elif answers != reference:
                    raise SystemExit(f"{name} answers differ from the first run's")
                results[name].append((rate, latency))
                print(f"rep {rep + 1} {name}: {rate:.2f} answers/s, median latency {latency:.1f} s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    base = statistics.median(r for r, _ in results["one-at-a-time"])
    batched = statistics.median(r for r, _ in results["batched"])
    print()
    print(f"model: {args.model or 'default parts: EfficientNet-Lite0 + SmolLM2-135M-Instruct (fp32, untrained projector)'}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads per server: {args.threads or 'default'}")
    print(f"{args.clients} concurrent clients x {args.requests} requests, {args.max_tokens} tokens each, streaming")
    print(f"median of {args.reps}: batched {batched:.2f} answers/s, one-at-a-time {base:.2f} answers/s "
          f"-> {batched / base:.1f}x (answers identical)")


if __name__ == "__main__":
    main()
