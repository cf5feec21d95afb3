"""`vistune eval shapes`: the exact-answer benchmark of the synthetic world.

Answers are generated greedily in batches; scoring (normalisation, per-type accuracy, reports) lives in
`vistune.eval.scoring`. The controls (`vistune.eval.controls`) ask every question again about another
image of the bench, a blank image or no image, which shows whether the model looks at the image at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vistune.data.image import ImageLoadError, load_image
from vistune.errors import UserError
from vistune.eval.controls import CONTROLS, add_to_report, blank_image, compare, derangement, mean_statistic
from vistune.eval.report import write_report as write_any
from vistune.eval.scoring import is_correct, score, single_report, write_report
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


def answer_bench(engine, bench: Sequence[dict], images: str | Path, control: str | None = None, seed: int = 0,
                 batch_size: int = 16, max_new_tokens: int = 8, progress: bool = True,
                 params: SamplingParams | None = None) -> dict[str, str]:
    """Answers {question id: text}, greedy unless `params` say otherwise; questions whose image cannot be read
    get no answer (scored wrong). `control` (see `vistune.eval.controls`): "shuffled" asks each question about
    another image of the bench (the derangement of `seed`), "blank" about a blank image, "noimage" without one."""
    params = params or SamplingParams(max_new_tokens=max_new_tokens)
    if control not in (None, *CONTROLS):
        raise ValueError(f"unknown control {control!r}")
    image_of = derangement((q["image"] for q in bench), seed) if control == "shuffled" else {}
    blank = blank_image(engine.model.image_processor) if control == "blank" else None
    answers: dict[str, str] = {}
    cache: dict[str, object] = {}
    bar = tqdm(total=len(bench), desc="answering" + (f" ({control})" if control else ""), unit="q",
               disable=not progress)
    for start in range(0, len(bench), batch_size):
        chunk, requests = [], []
        for q in bench[start:start + batch_size]:
            name = image_of.get(q["image"], q["image"])
            try:
                if control in ("blank", "noimage"):
                    image = blank
                else:
                    if name not in cache:
                        cache[name] = load_image(Path(images) / name)
                    image = cache[name]
            except ImageLoadError as e:
                log.warning("question %s: %s", q["id"], e)
                continue
            chunk.append(q)
            requests.append(Request.of(q["question"], image, params=params))
        for q, text in zip(chunk, engine.generate_batch(requests, batch_size=batch_size)):
            answers[q["id"]] = text
        bar.update(len(bench[start:start + batch_size]))
    bar.close()
    return answers


VARIANT_OF = {None: "full", "shuffled": "shuffled_images", "blank": "blank_image", "noimage": "no_image"}
"""The report variant each control writes (the demo's names)."""


def evaluate(engine, bench: Sequence[dict], images: str | Path, out: str | Path | None = None,
             control: str | None = None, seed: int = 0, batch_size: int = 16, progress: bool = True,
             params: SamplingParams | None = None) -> dict:
    """Answer (as `control` says; None: each question about its own image) and score the bench; with `out`, write
    report.json/.md/.png and answers.jsonl there."""
    answers = answer_bench(engine, bench, images, control=control, seed=seed, batch_size=batch_size,
                           progress=progress, params=params)
    report = score(answers, bench)
    if out is not None:
        write_report(report, out, variant=VARIANT_OF[control])
        write_answers(Path(out) / "answers.jsonl", bench, answers)
    return report


def write_answers(path: Path, bench: Sequence[dict], answers: dict[str, str]) -> None:
    atomic_write_jsonl(path, [{"id": q["id"], "type": q["type"], "question": q["question"], "answer": q["answer"],
                               "prediction": answers.get(q["id"])} for q in bench])


def evaluate_controls(engine, bench: Sequence[dict], images: str | Path, out: str | Path, controls: Sequence[str],
                      seed: int = 0, batch_size: int = 16, progress: bool = True,
                      params: SamplingParams | None = None) -> dict:
    """The real run and each control (`vistune.eval.controls`): out/report.* for the real answers with the controls
    beside them (paired differences, bootstrap intervals, the reliance sentence); each control's own report and
    answers under out/controls/NAME/. Returns the real report with `controls` added."""
    def correct(answers: dict[str, str]) -> np.ndarray:  # (n, 1)
        return np.array([[is_correct(answers.get(q["id"]), q["answer"])] for q in bench], dtype=float)

    real = answer_bench(engine, bench, images, batch_size=batch_size, progress=progress, params=params)
    per_control = {}
    for c in controls:
        answers = answer_bench(engine, bench, images, control=c, seed=seed, batch_size=batch_size, progress=progress,
                               params=params)
        write_report(score(answers, bench), Path(out) / "controls" / c, variant=VARIANT_OF[c])
        write_answers(Path(out) / "controls" / c / "answers.jsonl", bench, answers)
        per_control[c] = correct(answers)
    report = score(real, bench)
    comparison = compare(correct(real), per_control, mean_statistic())
    page = single_report(report, "full", [])
    add_to_report(page, comparison, metric="accuracy (%)")
    write_any(page, out)
    write_answers(Path(out) / "answers.jsonl", bench, real)
    return page.data
