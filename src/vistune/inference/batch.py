"""`vistune infer`: answer a JSONL of questions in batches, resumably.

Questions follow LLaVA's evaluation shape, one object per line: `{"question_id", "image", "text"}` (`image`
relative to the image folder; absent or empty for a text-only question; a list of paths for several images,
which lead the question in that order); `vistune synth`'s bench records
(`{"id", "image", "question", ...}`) are read as well. Answers are appended one JSON line
per question, flushed as each is written: `{"question_id", "prompt", "text", "model_id"}`. A re-run skips
questions already answered; a torn last line (a crash mid-write) is cut off first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from vistune.conversation import conversation_messages
from vistune.data.dataset import BadRecord, record_images
from vistune.data.image import ImageLoadError, load_image
from vistune.errors import UserError
from vistune.inference.engine import Engine, Request, RequestError
from vistune.inference.generate import SamplingParams
from vistune.utils.io import repair_jsonl_tail
from vistune.utils.jsonl import RecordError, iter_records


LENGTH_WINDOW = 8
"""`infer` hands the engine this many batches of questions at a time, so that it batches prompts of similar length
(less padding); answers are written, in the file's order, after each window."""


class QuestionsError(UserError, ValueError):
    """A questions file that cannot be used as given."""


@dataclass
class InferSummary:
    answered: int = 0
    """Questions answered in this run."""
    already: int = 0
    """Questions found answered in the output file (skipped)."""
    failed: dict = field(default_factory=dict)
    """question_id -> reason, for questions that could not be answered (unreadable image, too long)."""


def read_questions(path: str | os.PathLike) -> list[dict]:
    """Questions from a JSONL file; raises QuestionsError naming the line of any bad record."""
    questions, seen = [], set()
    try:
        for n, q in iter_records(path):
            if "question_id" not in q and "id" in q and "question" in q:
                q = {**q, "question_id": q["id"], "text": q["question"]}  # the shape of `vistune synth`'s bench
            if "question_id" not in q or not isinstance(q.get("text"), str):
                raise QuestionsError(f"{path}:{n}: expected an object with 'question_id' and 'text'")
            if q["question_id"] in seen:
                raise QuestionsError(f"{path}:{n}: duplicate question_id {q['question_id']!r}")
            try:
                record_images(q)
            except BadRecord:
                raise QuestionsError(f"{path}:{n}: 'image' must be a path string or a list of path strings") from None
            seen.add(q["question_id"])
            questions.append(q)
    except RecordError as e:
        raise QuestionsError(str(e)) from None
    return questions


def answered_ids(path: str | os.PathLike) -> set:
    """question_ids already in an answers file, after cutting off a torn last line."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_jsonl_tail(path)
    lines = path.read_bytes().splitlines()
    done = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["question_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise QuestionsError(f"{path}:{n}: not an answer record; refusing to append to this file") from None
    return done


def infer(engine: Engine, questions: Sequence[dict], image_folder: str | os.PathLike, out_path: str | os.PathLike,
          params: SamplingParams, batch_size: int = 8, model_id: str = "vistune") -> InferSummary:
    """Answer `questions` in order, appending to `out_path` (skipping those already there); `batch_size` questions
    are answered together, out of windows of `LENGTH_WINDOW` batches grouped by prompt length."""
    summary = InferSummary()
    done = answered_ids(out_path)
    todo = [q for q in questions if q["question_id"] not in done]
    summary.already = len(questions) - len(todo)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    window = batch_size * LENGTH_WINDOW  # questions handed to the engine at once: it batches similar lengths
    with open(out_path, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), window):
            chunk, requests = [], []
            for q in todo[start:start + window]:
                try:
                    images = [load_image(Path(image_folder) / p) for p in record_images(q)]
                    request = Request(conversation_messages(q["text"], image_turns=[0] * len(images)), images, params)
                    engine.render(request)
                except (ImageLoadError, RequestError) as e:
                    summary.failed[q["question_id"]] = str(e)
                    continue
                chunk.append(q)
                requests.append(request)
            if not requests:
                continue
            for q, answer in zip(chunk, engine.generate_batch(requests, batch_size=batch_size)):
                record = {"question_id": q["question_id"], "prompt": q["text"], "text": answer, "model_id": model_id}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                summary.answered += 1
            os.fsync(out.fileno())
    return summary


@dataclass
class Answering:
    """How a checkpoint answers a question file (an evaluation's candidate)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Decoding of each answer (greedy by default)."""
    batch_size: int = 8
    """Questions per batch."""
    device: str = "auto"
    """Device for the checkpoint."""
    dtype: str = "auto"
    """Weights dtype for the checkpoint."""

    def load(self, model: str) -> Engine:
        """The engine for `model` on this device and dtype."""
        return Engine.load(model, self.device, self.dtype, max_batch_size=self.batch_size)

    def answer(self, model: str, questions: Sequence[dict], image_folder: str | os.PathLike | None,
               out_path: str | os.PathLike, seeds: Sequence[int | None] = (None,)) -> dict[int | None, InferSummary]:
        """Load `model` once and answer `questions` into `out_path` per seed (None: `sampling`'s own seed; a
        `{seed}` in `out_path` names each seed's file). Resumable like `infer`."""
        return self.answer_with(self.load(model), Path(model).resolve().name, questions, image_folder, out_path, seeds)

    def answer_with(self, engine: Engine, model_id: str, questions: Sequence[dict],
                    image_folder: str | os.PathLike | None, out_path: str | os.PathLike,
                    seeds: Sequence[int | None] = (None,)) -> dict[int | None, InferSummary]:
        """`answer` with an engine already loaded (several answer files from one model)."""
        summaries = {}
        for seed in seeds:
            params = self.sampling if seed is None else replace(self.sampling, seed=seed)
            path = str(out_path).replace("{seed}", str(seed))
            summaries[seed] = infer(engine, questions, image_folder or "", path, params, self.batch_size, model_id)
        return summaries
