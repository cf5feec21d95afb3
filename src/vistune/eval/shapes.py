"""`vistune eval shapes`: the exact-answer benchmark of the synthetic world.

Answers are generated greedily in batches; scoring (normalisation, per-type accuracy, reports) lives in
`vistune.eval.scoring`. The `shuffle_images` control asks every question about a different held-out image
than the one it was written for, which shows whether the model looks at the image at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from vistune.data.image import ImageLoadError, load_image
from vistune.errors import UserError
from vistune.eval.scoring import score, write_report
from vistune.inference.engine import Request
from vistune.inference.generate import SamplingParams
from vistune.utils.io import atomic_write_jsonl, read_json_or_jsonl

log = logging.getLogger(__name__)


def load_bench(path: str | Path, limit: int | None = None) -> list[dict]:
    bench = read_json_or_jsonl(path)
    for i, q in enumerate(bench):
        missing = {"id", "image", "question", "answer", "type"} - set(q)
        if missing:
            raise UserError(f"{path}: question {i} lacks {sorted(missing)}")
    return bench[:limit] if limit else bench


def shuffled_images(bench: Sequence[dict]) -> dict[str, str]:
    """Each image -> a different image of the same bench (the next one in sorted order)."""
    images = sorted({q["image"] for q in bench})
    if len(images) < 2:
        raise ValueError("the shuffled-image control needs questions about at least two images")
    return {im: images[(i + 1) % len(images)] for i, im in enumerate(images)}


def answer_bench(engine, bench: Sequence[dict], images: str | Path, shuffle: bool = False, batch_size: int = 16,
                 max_new_tokens: int = 8, progress: bool = True, params: SamplingParams | None = None
                 ) -> dict[str, str]:
    """Answers {question id: text}, greedy unless `params` say otherwise; questions whose image cannot be read
    get no answer (scored wrong)."""
    params = params or SamplingParams(max_new_tokens=max_new_tokens)

    image_of = shuffled_images(bench) if shuffle else {}
    answers: dict[str, str] = {}
    cache: dict[str, object] = {}
    bar = tqdm(total=len(bench), desc="answering" + (" (shuffled images)" if shuffle else ""), unit="q",
               disable=not progress)
    for start in range(0, len(bench), batch_size):
        chunk, requests = [], []
        for q in bench[start:start + batch_size]:
            name = image_of.get(q["image"], q["image"])
            try:
                if name not in cache:
                    cache[name] = load_image(Path(images) / name)
            except ImageLoadError as e:
                log.warning("question %s: %s", q["id"], e)
                continue
            chunk.append(q)
            requests.append(Request.of(q["question"], cache[name], params=params))
        for q, text in zip(chunk, engine.generate_batch(requests, batch_size=batch_size)):
            answers[q["id"]] = text
        bar.update(len(bench[start:start + batch_size]))
    bar.close()
    return answers


def evaluate(engine, bench: Sequence[dict], images: str | Path, out: str | Path | None = None, shuffle: bool = False,
             batch_size: int = 16, progress: bool = True, params: SamplingParams | None = None) -> dict:
    """Answer and score the bench; with `out`, write report.json/.md/.png and answers.jsonl there."""
    answers = answer_bench(engine, bench, images, shuffle=shuffle, batch_size=batch_size, progress=progress,
                           params=params)
    report = score(answers, bench)
    if out is not None:
        write_report(report, out, variant="shuffled_images" if shuffle else "full")
        atomic_write_jsonl(Path(out) / "answers.jsonl",
                           [{"id": q["id"], "type": q["type"], "question": q["question"], "answer": q["answer"],
                             "prediction": answers.get(q["id"])} for q in bench])
    return report
