"""The cost of detail: LLaVA-NeXT's anyres tiles against the square default, on the same model and images.

    .venv/bin/python benchmarks/bench_anyres.py [--rounds 3] [--batch 4] [--threads 2] [--json FILE]

The model is the default parts (EfficientNet-Lite0 at 224 px, 49 tokens per tile, + SmolLM2-135M-Instruct, fp32,
untrained projector: timings only), built once; the square model and the anyres one (`image_aspect_ratio: anyres`,
`patch_merge: spatial_unpad`, LLaVA-NeXT's grids at 224 px) share the tower, the LLM and the projector's
matrices. The images are crops of matplotlib's photo of Grace Hopper: wide (512x300), square (512x512) and tall
(512x600). Reported per way:

- image tokens of each image;
- time to first token: one question about one image, answered alone (`Engine`, no kept prompt starts, one new
  token), from the PIL image to the first sampled token (preprocessing, tower, projector, prefill);
- training tokens/s and samples/s: a stage-2 step (forward and backward through projector and LLM, the tower run
  on the pixels, no feature cache) on a batch of `--batch` samples over the three images; tokens are every position
  of the batch that is not padding, image positions included.

Rounds alternate which way goes first; the first round of each warms up and is not counted; medians are quoted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

QUESTION = "What is in the picture?"
ANSWER = "A woman in a navy uniform with a tie, in front of a dark background."


def photos():
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        full = Image.open(f).convert("RGB")  # 512 x 600
    return {"wide": full.crop((0, 100, 512, 400)), "square": full.crop((0, 44, 512, 556)), "tall": full}


def build():
    """(square model, anyres model) over one tower, one LLM and the same projector matrices."""
    from vistune.config import ModelConfig
    from vistune.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    square = VisionLanguageModel.build(ModelConfig())
    anyres = VisionLanguageModel.from_parts(ModelConfig(image_aspect_ratio="anyres", patch_merge="spatial_unpad"),
                                            square.vision_tower, square.llm, square.tokenizer)
    anyres.projector.load_state_dict({**square.projector.state_dict(),
                                      "image_newline": anyres.projector.image_newline.detach()})
    return square, anyres


def first_token_s(model, image) -> float:
    from vistune.inference.engine import Engine, Request

    engine = Engine(model, prefix_reuse=False)
    start = time.perf_counter()
    engine.generate_batch([Request.of(QUESTION, image, max_new_tokens=1)])
    return time.perf_counter() - start


def training_step(model, images: list) -> tuple[float, int]:
    """Seconds of one forward + backward on a batch over `images`, and its real tokens."""
    from vistune.conversation import Message, conversation_messages
    from vistune.data.dataset import Sample, SampleImage, collate

    samples = []
    for k, image in enumerate(images):
        messages = conversation_messages(QUESTION) + [Message("assistant", ANSWER)]
        r = model.renderer.render(messages, num_images=1, image_sizes=[image.size])
        size = image.size if model.anyres is not None else None
        samples.append(Sample(str(k), torch.tensor(r.input_ids), torch.tensor(r.labels), None, r.image_spans,
                              images=[SampleImage(model.image_processor(image), size=size)]))
    batch = collate(samples, model.tokenizer.pad_token_id)
    model.train()
    start = time.perf_counter()
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                image_sizes=batch.get("image_sizes"))
    out.loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds, int(batch["attention_mask"].sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="counted rounds per way (one more warms up)")
    ap.add_argument("--batch", type=int, default=4, help="samples per training step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = photos()
    models = dict(zip(("square", "anyres"), build()))
    batch = [list(images.values())[k % len(images)] for k in range(args.batch)]
    ttft = {way: {name: [] for name in images} for way in models}
    train = {way: [] for way in models}
    tokens = {}
    for r in range(args.rounds + 1):
        for way in (list(models) if r % 2 == 0 else list(models)[::-1]):
            model = models[way]
            for name, image in images.items():
                seconds = first_token_s(model, image)
                if r:
                    ttft[way][name].append(seconds)
            seconds, n = training_step(model, batch)
            tokens[way] = n
            if r:
                train[way].append(seconds)
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
              "images": {name: list(im.size) for name, im in images.items()}, "ways": {}}
    for way, model in models.items():
        step = statistics.median(train[way])
        result["ways"][way] = {
            "image_tokens": {name: model.image_tokens(im.size) for name, im in images.items()},
            "first_token_s": {name: round(statistics.median(v), 4) for name, v in ttft[way].items()},
            "train_tokens_per_s": round(tokens[way] / step, 1),
            "train_samples_per_s": round(args.batch / step, 3),
            "train_batch_tokens": tokens[way],
        }
    sq, ar = result["ways"]["square"], result["ways"]["anyres"]
    print(f"{result['machine']}; medians of {args.rounds} rounds")
    print(f"{'':8} {'image tokens':>24} {'first token (s)':>30} {'train tokens/s':>15} {'samples/s':>10}")
    for way, w in result["ways"].items():
        toks = " ".join(f"{n}={w['image_tokens'][n]}" for n in images)
        firsts = " ".join(f"{n}={w['first_token_s'][n]:.3f}" for n in images)
        print(f"{way:8} {toks:>24} {firsts:>30} {w['train_tokens_per_s']:>15} {w['train_samples_per_s']:>10}")
    ratio = {n: ar["first_token_s"][n] / sq["first_token_s"][n] for n in images}
    print("anyres / square: first token " + ", ".join(f"{n} {v:.2f}x" for n, v in ratio.items())
          + f"; training samples/s {ar['train_samples_per_s'] / sq['train_samples_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
