"""Time to first token of a follow-up chat turn: KV-cache reuse against re-processing the conversation.

    .venv/bin/python benchmarks/bench_chat.py [--model DIR] [--reps 5] [--answer-tokens 48] [--threads 2]

The model is a checkpoint (`--model`) or, by default, the default parts (EfficientNet-Lite0 + SmolLM2-135M,
`VisionLanguageModel.build(ModelConfig())`, untrained projector: timings only). Each repetition asks a
first question about a photo, then times the follow-up two ways, alternating which goes first:

- reuse: `ChatSession.ask_stream` (image encoded once, the cache of the first turn reused), start of the
  turn to the first sampled token;
- baseline: rendering, encoding the image and prefilling the whole conversation, to the first sampled token
  (what a stateless `model.chat(image, q, history)` does).

Greedy decoding; the script checks that both ways give the same follow-up answer. Reports medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="vistune checkpoint (default: the default parts, untrained projector)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--answer-tokens", type=int, default=48, help="length of each answer")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from matplotlib import cbook
    from PIL import Image

    from vistune.config import ModelConfig
    from vistune.inference.chat import ChatSession
    from vistune.inference.engine import Engine, Request
    from vistune.inference.generate import SamplingParams
    from vistune.model.vlm import VisionLanguageModel

    if args.model:
        engine = Engine.from_checkpoint(args.model, prefix_reuse=False)  # the baseline re-processes everything
        name = args.model
    else:
        torch.manual_seed(0)
        engine = Engine(VisionLanguageModel.build(ModelConfig()), prefix_reuse=False)
        name = "default parts: EfficientNet-Lite0 + SmolLM2-135M-Instruct (fp32, untrained projector)"
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB")
    params = SamplingParams(max_new_tokens=args.answer_tokens)
    q1 = "Describe this image in detail."
    q2 = "What is the person wearing?"

    def baseline(history) -> tuple[float, int, str]:
        start = time.perf_counter()
        request = Request.of(q2, image, history=history, params=params)
        decoder = engine.decoder(engine.prepare([request]))
        decoder.step()
        ttft = decoder.first_token_time - start
        rows = decoder.run()
        return ttft, rows[0].prompt_tokens, rows[0].stream.text

    reuse_t, base_t, prefill, full_len = [], [], [], []
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        session = ChatSession(engine, image, params)
        a1 = session.ask(q1)
        history = list(session.history)
        order = ("reuse", "base") if rep % 2 else ("base", "reuse")
        for which in order:
            if which == "reuse":
                a2 = session.ask(q2)
                t_reuse = session.last_ttft_s
                prefill_tokens = session.last_prefill_tokens
            else:
                t_base, n_full, b2 = baseline(history)
        if a2 != b2:
            raise SystemExit(f"answers differ: {a2!r} != {b2!r}")
        if rep == 0:
            continue
        reuse_t.append(t_reuse)
        base_t.append(t_base)
        prefill.append(prefill_tokens)
        full_len.append(n_full)
        print(f"rep {rep}: reuse {t_reuse * 1e3:.0f} ms ({prefill_tokens} new positions), "
              f"re-process {t_base * 1e3:.0f} ms ({n_full} positions)", flush=True)
    r, b = statistics.median(reuse_t), statistics.median(base_t)
    print()
    print(f"model: {name}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"first answer: {args.answer_tokens} tokens; follow-up prompt: {statistics.median(full_len):.0f} positions "
          f"in all, {statistics.median(prefill):.0f} new with reuse")
    print(f"follow-up time to first token, median of {args.reps}: reuse {r * 1e3:.0f} ms, "
          f"re-process {b * 1e3:.0f} ms -> {b / r:.1f}x faster (answers identical)")


if __name__ == "__main__":
    main()
