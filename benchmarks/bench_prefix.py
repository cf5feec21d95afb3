"""Batch answering with and without the engine's kept prompt start (`Engine(prefix_reuse=...)`).

    .venv/bin/python benchmarks/bench_prefix.py [--model DIR] [--questions 64] [--images 36] [--rounds 5]
                                                [--threads 2]

The model is a checkpoint (`--model`, e.g. the demo's `runs/demo/stage2/final`) or, by default, the default
parts (EfficientNet-Lite0 + SmolLM2-135M, `VisionLanguageModel.build(ModelConfig())`, untrained projector:
timings only). The workload is the demo benchmark's: short questions about `--images` images (some asked
about twice), the model's system prompt, greedy answers of at most `--answer-tokens` tokens, batches of 16 (`Engine.generate`). Each round is
a fresh pass (the kept starts are cleared before it), so only the repeats within a pass are reused. Rounds
alternate which way goes first; the first round of each warms up and is not counted. The script checks that
both ways give the same answers and reports questions/s (medians) and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

QUESTIONS = ("What colour is the circle?", "How many shapes are there?", "Is there a red square?",
             "Is the star on the left or the right?", "Which shape is above the other?", "What shape is blue?")
INSTRUCTION = "Answer with a single word or number."


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="vistune checkpoint (default: the default parts, untrained projector)")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--images", type=int, default=36, help="images the questions are about (the demo's benchmark "
                    "asks 420 questions about 240 images)")
    ap.add_argument("--rounds", type=int, default=5, help="counted rounds per way")
    ap.add_argument("--answer-tokens", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (for tests; figures mean nothing)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from PIL import Image

    from vistune.config import ModelConfig
    from vistune.inference.engine import Engine, Request
    from vistune.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    if args.model:
        model = Engine.from_checkpoint(args.model).model
        name = args.model
    elif args.tiny:
        from vistune.model.tiny import tiny_vlm

        model, name = tiny_vlm(), "tiny random model"
    else:
        model = VisionLanguageModel.build(ModelConfig())
        name = "default parts: EfficientNet-Lite0 + SmolLM2-135M-Instruct (fp32, untrained projector)"
    engines = {"whole prompt": Engine(model, prefix_reuse=False), "kept prompt start": Engine(model)}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)) for _ in range(args.images)]
    requests = [Request.of(f"{QUESTIONS[i % len(QUESTIONS)]}\n{INSTRUCTION}", images[i % args.images],
                           temperature=0.0, max_new_tokens=args.answer_tokens) for i in range(args.questions)]
    ids = engines["kept prompt start"].render(requests[0])
    shared = len(engines["kept prompt start"].opening())

    times: dict[str, list[float]] = {k: [] for k in engines}
    answers: dict[str, list[str]] = {}
    for rnd in range(args.rounds + 1):
        for way in (list(engines) if rnd % 2 else list(reversed(engines))):
            engines[way].clear_prefix()  # each round is a fresh pass: only its own repeats are reused
            start = time.perf_counter()
            answers[way] = engines[way].generate_batch(requests, batch_size=16)
            if rnd:
                times[way].append(time.perf_counter() - start)
        if len(set(map(tuple, answers.values()))) != 1:
            raise SystemExit("the two ways gave different answers")
    rate = {k: args.questions / statistics.median(v) for k, v in times.items()}
    ratio = rate["kept prompt start"] / rate["whole prompt"]
    print(f"model: {name}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32")
    print(f"prompt: {len(ids)} positions: {shared} of the template's opening (system turn), "
          f"{model.num_image_tokens} of the image, then the question")
    for k, v in rate.items():
        print(f"{k:>18}: {v:.2f} questions/s (median of {args.rounds} rounds of {args.questions})")
    print(f"kept prompt start vs whole prompt: {ratio:.2f}x (answers identical)")
    return {"rate": rate, "ratio": ratio, "prompt_positions": len(ids), "shared_positions": shared}


if __name__ == "__main__":
    main()
