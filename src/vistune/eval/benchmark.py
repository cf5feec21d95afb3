"""What the question-file benchmarks (POPE, VQA, GQA, MME, MMBench, SEED-Bench) share: answering, controls, report.

A benchmark (one file each in `vistune.eval`) turns its own files into questions in LLaVA's evaluation shape
`{"question_id", "image", "text"}` (the text with LLaVA-1.5's prompt suffix; gold fields beside) and scores
answers `{question_id: text}` into a `Scored`: its figures, its report page and per-unit figures from which a
statistic recomputes the headline score (for the controls' paired bootstrap).

`run_benchmark` answers with the model (batched, greedy unless told otherwise, resumable: `answers.jsonl` is
appended one line per answer and a re-run asks only what is missing) or reads `--answers`, runs each control
into `answers-CONTROL.jsonl` the same way, scores, and writes `summary.json/.md/.png`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vistune.eval.controls import add_to_report, answer_with_controls, compare, fill_text_only, parse_controls
from vistune.eval.report import Report, write_report
from vistune.utils.jsonl import RecordError, iter_records

if TYPE_CHECKING:
    from vistune.eval.judge import JudgeOptions
    from vistune.inference.batch import Answering

SHORT_ANSWER = "Answer the question using a single word or phrase."
"""LLaVA-1.5's suffix for short-answer benchmarks (VQAv2, GQA, TextVQA, VizWiz, POPE, MME)."""
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
"""LLaVA-1.5's suffix for multiple-choice benchmarks (MMBench, SEED-Bench, ScienceQA)."""


@dataclass
class BenchmarkOptions:
    """One `vistune eval pope|vqa|gqa|mme|mmbench|seed` run."""

    questions: str
    """The benchmark's own question file (or folder, for MME)."""
    out: str
    """Output directory: answers*.jsonl, summary.json/.md/.png and the benchmark's own files."""
    images: str | None = None
    """Image folder (with `model`; MMBench carries its images)."""
    model: str | None = None
    """vistune checkpoint that answers every question."""
    answers: str | None = None
    """Answers `{"question_id", "text"}` written elsewhere (instead of `model`)."""
    annotations: str | None = None
    """A second file with the gold answers where the benchmark keeps them apart (VQAv2)."""
    format: str | None = None
    """The benchmark's variant (`vqa`: textvqa, vqav2 or vizwiz)."""
    ocr: bool = False
    """TextVQA: add the reference OCR tokens to the prompt (LLaVA-1.5's setting)."""
    controls: Sequence[str] = ()
    """Image-reliance controls to run beside the real answers (`vistune.eval.controls`)."""
    control_seed: int = 0
    """Seed of the shuffled control's derangement."""
    limit: int | None = None
    """Ask and score only the first N questions (MMBench: questions with all their passes; MME: images)."""
    answering: Answering | None = None
    """How `model` answers (None: greedy, up to 16 new tokens, 8 per batch)."""
    judge: JudgeOptions | None = None
    """MMBench: a judge that reads a letter from answers where the rule finds none."""
    progress: bool = True
    """Progress bars."""


@dataclass
class Scored:
    """A benchmark's scores of one answer set."""

    figures: dict
    """The benchmark's figures (summary.json holds them as `figures`)."""
    report: Report
    """The summary page (tables, notes, warnings, chart)."""
    metric: str
    """The headline figure's name (the controls compare it)."""
    units: np.ndarray | None = None
    """(n, k) per-unit figures; None when there is nothing to score (no gold answers)."""
    statistic: Callable[[np.ndarray], np.ndarray] | None = None
    """(B, n, k) -> B headline scores."""
    strata: np.ndarray | None = None
    """Per unit, the group the bootstrap resamples within (None: all units together)."""
    unit: str = "questions"
    """What a unit is, for the report."""


@dataclass
class BenchmarkResult:
    figures: dict
    """summary.json's `figures`."""
    controls: dict | None = None
    """The controls' comparison (`vistune.eval.controls.compare`), when controls ran."""
    failed: dict = field(default_factory=dict)
    """question_id -> why it could not be answered (scored wrong)."""
    paths: dict = field(default_factory=dict)
    """Files written."""


class Benchmark:
    """One benchmark's formats and rules; subclasses override `load` and `score` (and `write_extra`)."""

    name = ""
    title = ""
    max_new_tokens = 16
    """Default answer length limit."""

    def load(self, o: BenchmarkOptions) -> list[dict]:
        """Questions `{"question_id" (str), "image", "text", ...gold}` in the benchmark's order."""
        raise NotImplementedError

    def score(self, questions: list[dict], answers: dict[str, str], o: BenchmarkOptions) -> Scored:
        raise NotImplementedError

    def take(self, questions: list[dict], n: int) -> list[dict]:
        """The first `n` units of the benchmark (`--limit`): questions, or whole groups where questions carry a
        `group` (an MMBench question's passes, an MME image's pair)."""
        groups = list(dict.fromkeys(q.get("group", q["question_id"]) for q in questions))[:n]
        keep = set(groups)
        return [q for q in questions if q.get("group", q["question_id"]) in keep]

    def answer_key(self, record: dict) -> str:
        """The question an answer record answers (`question_id` as text)."""
        return str(record["question_id"])

    def image_folder(self, o: BenchmarkOptions) -> str:
        return o.images or ""

    def check(self, o: BenchmarkOptions) -> None:
        if bool(o.model) == bool(o.answers):
            raise RecordError("give exactly one of --model CK or --answers FILE")
        if o.model and not o.images and self.needs_images:
            raise RecordError("--model needs --images DIR")
        if o.controls and not o.model:
            raise RecordError("--controls asks the model again: it needs --model")
        if o.limit is not None and o.limit < 1:
            raise RecordError(f"--limit must be >= 1, got {o.limit}")

    needs_images = True

    def write_extra(self, out: Path, questions: list[dict], answers: dict[str, str], scored: Scored,
                    o: BenchmarkOptions) -> dict[str, Path]:
        """Files in the benchmark's own output shapes (submission files); their paths."""
        return {}


def read_answers(path: str | Path, bench: Benchmark) -> dict[str, str]:
    """question key -> answer text from `{"question_id", "text"}` lines; a line without them is refused, naming
    the line."""
    answers: dict[str, str] = {}
    for n, r in iter_records(path):
        if "question_id" not in r or not isinstance(r.get("text"), str):
            raise RecordError(f"{path}:{n}: an answer needs 'question_id' and a string 'text'")
        answers[bench.answer_key(r)] = r["text"]
    return answers


def _answer(o: BenchmarkOptions, bench: Benchmark, questions: list[dict], out: Path
            ) -> tuple[dict[str, str], dict[str, dict[str, str]], dict]:
    """The model's answers (real and per control), resumably; questions it could not answer are left out."""
    from vistune.inference.batch import Answering
    from vistune.inference.generate import SamplingParams

    answering = o.answering or Answering(SamplingParams(max_new_tokens=bench.max_new_tokens))
    # the answers file names each question as the benchmark's own file does (an integer stays an integer)
    asked = [{"question_id": q.get("original_id", q["question_id"]), "text": q["text"],
              **({"image": q["image"]} if q.get("image") else {})} for q in questions]
    done = answer_with_controls(answering, o.model, asked, bench.image_folder(o), out, o.controls, o.control_seed)
    real = read_answers(done[None][0], bench)
    failed = {}
    per_control = {}
    for c, (path, summary) in done.items():
        failed.update({f"{k} ({c})" if c else str(k): v for k, v in summary.failed.items()})
        if c is not None:
            per_control[c] = fill_text_only(asked, real, read_answers(path, bench))
    return real, per_control, failed


def run_benchmark(bench: Benchmark, o: BenchmarkOptions) -> BenchmarkResult:
    """Answer (or read answers), score, compare with the controls, write the summary and the benchmark's files."""
    o.controls = parse_controls(o.controls)
    bench.check(o)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    questions = bench.load(o)
    if o.limit:
        questions = bench.take(questions, o.limit)
    if not questions:
        raise RecordError(f"{o.questions}: no questions")
    keys = [str(q["question_id"]) for q in questions]
    if o.answers:
        real, per_control, failed = read_answers(o.answers, bench), {}, {}
    else:
        real, per_control, failed = _answer(o, bench, questions, out)
    scored = bench.score(questions, real, o)
    report = scored.report
    missing = sum(1 for k in keys if k not in real)
    if missing:
        report.warnings.append(f"{missing} of {len(keys)} questions have no answer; they count as wrong")
    comparison = None
    if per_control and scored.units is not None:
        comparison = compare(scored.units, {c: bench.score(questions, a, o).units for c, a in per_control.items()},
                             scored.statistic, strata=scored.strata)
        comparison["metric"] = scored.metric
        add_to_report(report, comparison, metric=scored.metric, unit=scored.unit)
    others = len(set(real) - set(keys))
    if others:
        report.notes.append(f"{others} answers to questions outside this set (other splits, --limit) were ignored")
    source = f"answers from {o.answers}" if o.answers else f"{o.model} (greedy unless sampling flags say otherwise)"
    report.notes.append(f"candidate: {source}; questions: {o.questions}")
    report.data = {"benchmark": bench.name, "figures": scored.figures, "n": len(keys), "missing": missing,
                   **({"controls": comparison} if comparison else {})}
    paths = write_report(report, out, json_name="summary.json", md_name="summary.md", png_name="summary.png")
    paths.update(bench.write_extra(out, questions, real, scored, o))
    for qid, reason in list(failed.items())[:5]:
        print(f"not answered {qid}: {reason} (counted wrong)", file=sys.stderr)
    return BenchmarkResult(scored.figures, comparison, failed, paths)


def load_json(path: str | Path):
    """A whole JSON file; `RecordError` when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: cannot read as JSON ({e})") from None


def ratio(num: float, den: float) -> float:
    """num / den, 0 when den is 0."""
    return num / den if den else 0.0
