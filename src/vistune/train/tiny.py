"""Tiny training runs for tests and smoke checks: a tiny random checkpoint, small LLaVA data, a RunConfig."""

from __future__ import annotations

import json
import random
from pathlib import Path

from vistune.config import RunConfig, load_run_config

_WORDS = ("red blue green circle square triangle small large top left right bottom corner centre shape "
          "colour light dark near far above below").split()


def save_tiny_checkpoint(path: str | Path, tower: str = "clip", projector: str = "linear", seed: int = 0) -> Path:
    """A tiny random VisionLanguageModel (2-layer CLIP + 2-layer Llama, real SmolLM2 tokenizer) saved at `path`."""
    from vistune.model.checkpoint import save_checkpoint
    from vistune.model.tiny import tiny_vlm

    return save_checkpoint(tiny_vlm(tower, projector=projector, seed=seed), path)


def write_tiny_data(directory: str | Path, n: int = 16, text_only_every: int = 4, seed: int = 0,
                    bad: dict[str, int] | None = None, two_images_every: int = 0) -> Path:
    """`n` LLaVA records of varied lengths over the sample images (every `text_only_every`-th without an
    image), plus `bad` broken ones: {"unreadable_image": k, "missing_image": k, "invalid_record": k}.
    `two_images_every`: every such record with an image gets both sample images instead (in a random order), the
    second leading a follow-up question."""
    directory = Path(directory)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    from PIL import Image, ImageDraw

    for name, colour in (("circles.png", (200, 40, 40)), ("square.png", (40, 160, 60))):
        im = Image.new("RGB", (48, 40), (235, 235, 225))
        draw = ImageDraw.Draw(im)
        (draw.ellipse if name == "circles.png" else draw.rectangle)((8, 6, 36, 32), fill=colour)
        im.save(images / name)
    (images / "broken.png").write_bytes(b"not a png at all")
    rng = random.Random(seed)
    records = []
    for i in range(n):
        question = " ".join(rng.choices(_WORDS, k=rng.randint(2, 12))) + "?"
        answer = " ".join(rng.choices(_WORDS, k=rng.randint(2, 30))) + "."
        record = {"id": f"r{i}", "conversations": [{"from": "human", "value": question},
                                                    {"from": "gpt", "value": answer}]}
        if text_only_every == 0 or i % text_only_every != text_only_every - 1:
            record["image"] = rng.choice(["circles.png", "square.png"])
            record["conversations"][0]["value"] = "<image>\n" + question
            if two_images_every and i % two_images_every == two_images_every - 1:
                record["image"] = rng.sample(["circles.png", "square.png"], 2)
                record["conversations"] += [
                    {"from": "human", "value": "<image>\n" + " ".join(rng.choices(_WORDS, k=rng.randint(2, 8)))},
                    {"from": "gpt", "value": " ".join(rng.choices(_WORDS, k=rng.randint(2, 12))) + "."}]
        records.append(record)
    bad = bad or {}
    for k in range(bad.get("unreadable_image", 0)):
        records.append({"id": f"bad-unreadable-{k}", "image": "broken.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]})
    for k in range(bad.get("missing_image", 0)):
        records.append({"id": f"bad-missing-{k}", "image": "nowhere.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A shape."}]})
    for k in range(bad.get("invalid_record", 0)):
        records.append({"id": f"bad-record-{k}", "conversations": [{"from": "gpt", "value": "no question"}]})
    rng.shuffle(records)
    path = directory / "data.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def tiny_run_config(checkpoint: str | Path, data: str | Path, output_dir: str | Path, overrides: list[str] = (),
                    **train) -> RunConfig:
    """A RunConfig starting from the tiny checkpoint: fp32, no workers, small batches; `train` sets train.* keys."""
    from vistune.model.checkpoint import read_config

    model = read_config(checkpoint)["model"]
    items = [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    items += [f"init_from={checkpoint}", f"output_dir={output_dir}", f"data.path={data}",
              f"data.image_folder={Path(data).parent / 'images'}", "data.num_workers=0", "data.max_length=256"]
    defaults = {"stage": 1, "global_batch_size": 4, "micro_batch_size": 2, "max_steps": 4, "lr": 1e-3,
                "precision": "fp32", "save_every": None, "warmup_ratio": 0.0, "seed": 0}
    defaults.update(train)
    items += [f"train.{k}={json.dumps(v)}" for k, v in defaults.items()]
    return load_run_config(None, [*items, *overrides], world_size=1)


def run_to_yaml(run: RunConfig, path: str | Path) -> Path:
    from vistune.config import dump_yaml

    Path(path).write_text(dump_yaml(run))
    return Path(path)

