"""Training throughput of `vistune train` against a plain padded-batch loop, on the default parts.

    .venv/bin/python benchmarks/bench_train.py [--rounds 3] [--steps 4] [--batch 8] [--samples 96]

Both loops train EfficientNet-Lite0 + SmolLM2-135M (AdamW; bf16 autocast where the CPU has native bf16,
else fp32, as `precision: auto` decides) on the same synthetic LLaVA data
(3/4 with an image: 49 image tokens + 20-200 text tokens). The baseline shuffles samples into batches without
length grouping and computes the loss from the full-vocabulary logits of every position (what
`LlavaForConditionalGeneration` training does); vistune's loop draws length-grouped batches and applies the LM
head only at supervised positions. Rounds alternate (vistune, baseline, vistune, ...) in one process; each
round's figure is the median real (non-padding) tokens/s of its steps after the first; the report gives the
median over rounds and the ratio of the medians, for stage 1 and stage 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vistune.train.distributed import native_bf16

BF16 = native_bf16(torch.device("cpu"))  # what the default configs' `precision: auto` picks on this CPU


def make_data(directory: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    words = ("red blue green yellow circle square triangle small large top left right bottom corner centre "
             "shape colour light dark near far above below next to the a of and with in on").split()
    records = []
    for i in range(n):
        name = f"img{i % 16}.png"
        if not (images / name).exists():
            im = Image.new("RGB", (224, 224), tuple(rng.randint(150, 255) for _ in range(3)))
            d = ImageDraw.Draw(im)
            for _ in range(rng.randint(1, 3)):
                x, y, s = rng.randint(0, 160), rng.randint(0, 160), rng.randint(20, 60)
                d.ellipse((x, y, x + s, y + s), fill=tuple(rng.randint(0, 200) for _ in range(3)))
            im.save(images / name)
        n_words = rng.randint(15, 150)  # ~20-200 tokens with the template
        q = " ".join(rng.choices(words, k=max(3, n_words // 5))) + "?"
        a = " ".join(rng.choices(words, k=n_words - n_words // 5)) + "."
        rec = {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if rng.random() < 0.75:
            rec["image"] = name
            rec["conversations"][0]["value"] = "<image>\n" + q
        records.append(rec)
    path = directory / "data.json"
    path.write_text(json.dumps(records))
    return path


def vistune_round(init: Path, data: Path, out: Path, stage: int, steps: int, batch: int) -> float:
    from vistune.config import load_run_config
    from vistune.train.loop import train

    run = load_run_config(Path(__file__).resolve().parents[1] / "configs" / f"default_stage{stage}.yaml", [
        f"init_from={init}", f"output_dir={out}", f"data.path={data}", f"data.image_folder={data.parent / 'images'}",
        f"train.max_steps={steps}", f"train.global_batch_size={batch}", f"train.micro_batch_size={batch}",
        "train.save_every=null", "data.num_workers=1", f"train.seed={random.randint(0, 10**6)}"])
    train(run, progress=False, resume=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records[1:])


def baseline_round(model, dataset, stage: int, steps: int, batch: int, lr: float) -> float:
    """Random padded batches, loss from full logits, bf16 autocast, AdamW on what the stage trains."""
    from vistune.data.dataset import collate
    from vistune.train.optim import set_trainable

    set_trainable(model, stage, lora=False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    order = random.sample(range(len(dataset)), steps * batch)
    rates = []
    for s in range(steps):
        t0 = time.perf_counter()
        b = collate([dataset[i] for i in order[s * batch: (s + 1) * batch]], model.tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            out = model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["labels"], return_logits=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(int(b["attention_mask"].sum()) / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="steps per round (the first is not counted)")
    ap.add_argument("--batch", type=int, default=8, help="samples per step")
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    from vistune.config import load_run_config
    from vistune.data.dataset import LlavaDataset
    from vistune.model.checkpoint import save_checkpoint
    from vistune.model.vlm import VisionLanguageModel

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    data = make_data(root / "data", args.samples)
    base_cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "default_stage1.yaml")
    model = VisionLanguageModel.build(base_cfg.model)
    init = save_checkpoint(model, root / "init")
    dataset = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=512)
    results = {}
    for stage in (1, 2):
        lr = 1e-3 if stage == 1 else 5e-5
        fast, slow = [], []
        for r in range(args.rounds):
            fast.append(vistune_round(init, data, root / f"run-{stage}-{r}", stage, args.steps, args.batch))
            slow.append(baseline_round(model, dataset, stage, args.steps, args.batch, lr))
            print(f"stage {stage} round {r + 1}: vistune {fast[-1]:.0f} tok/s, baseline {slow[-1]:.0f} tok/s",
                  flush=True)
        model = VisionLanguageModel.build(base_cfg.model)  # stage 2 baseline starts from fresh weights too
        dataset = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=512)
        results[f"stage{stage}"] = {"vistune_tokens_per_s": statistics.median(fast),
                                    "baseline_tokens_per_s": statistics.median(slow),
                                    "ratio": statistics.median(fast) / statistics.median(slow),
                                    "rounds": {"vistune": fast, "baseline": slow}}
    machine = f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads, {'bf16 autocast' if BF16 else 'fp32 (no native bf16)'}"
    print(f"\ncommand: {' '.join([sys.executable, *sys.argv])}\nmachine: {machine}")
    for stage, r in results.items():
        print(f"{stage}: vistune {r['vistune_tokens_per_s']:.0f} tok/s, baseline {r['baseline_tokens_per_s']:.0f} "
              f"tok/s, ratio {r['ratio']:.2f}x (medians of {args.rounds} alternating rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
