"""`vistune eval llava-bench`: a text-only LLM judge scores a candidate's answers against reference answers.

Inputs follow the public LLaVA-Bench layout: questions `{"question_id", "image", "text", "category"}`
(category `conv`, `detail` or `complex`), a context file with the symbolic description of each image
(`caption` or `captions`, optional `instances: [{category, bbox}]`), reference answers and candidate
answers `{"question_id", "text"}`.

The judge sees the context, the question, the reference as Assistant 1 and the candidate as
Assistant 2, and writes two scores on its first line. Parsing is the original release's rule
(`parse_review`) and so is the summary (`summarize`):

- relative  = round(100 * m_candidate / m_reference, 1)
- reference = round(10 * m_reference, 1),  candidate = round(10 * m_candidate, 1)

where m is the mean score over the group's reviews, rounded to 3 decimals first; failed reviews
count as (-1, -1) and are averaged like any other.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vistune.eval.controls import add_to_report, answer_with_controls, compare
from vistune.eval.judge import JudgeJob, JudgeOptions, JudgeStats, load_prompt, run_judge
from vistune.eval.report import Chart, Report, Table, bootstrap_ci, fmt, mean_std, write_report
from vistune.utils.io import atomic_write_jsonl
from vistune.utils.jsonl import RecordError, iter_records

if TYPE_CHECKING:
    from vistune.inference.batch import Answering

CATEGORIES = ("conv", "detail", "complex")
CATEGORY_NAMES = {"conv": "conversation", "detail": "detail description", "complex": "complex reasoning"}
FAILED = [-1.0, -1.0]


# ----------------------------------------------------------------------------- the original's rules


def parse_review(text: str) -> list[float] | None:
    """The first line, commas turned into spaces, split on single spaces: exactly two numbers, else None.

    As in the original, "8 7" and "8,7" parse but "8, 7" does not (the split leaves an empty piece).
    """
    parts = text.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        return None


def _group_scores(reviews: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {"all": list(reviews)}
    cats = {r.get("category") for r in reviews if r.get("category")}
    for c in [c for c in CATEGORIES if c in cats] + sorted(c for c in cats if c not in CATEGORIES):
        groups[c] = [r for r in reviews if r.get("category") == c]
    return groups


def figures(scores: np.ndarray) -> dict[str, float]:
    """relative/reference/candidate from an (n, 2) array of [reference, candidate] scores, as the original."""
    m_ref, m_cand = (round(float(v), 3) for v in scores.mean(axis=0))
    return {"relative": round(m_cand / m_ref * 100, 1) if m_ref else float("nan"),
            "reference": round(m_ref * 10, 1), "candidate": round(m_cand * 10, 1)}


def summarize(reviews: Sequence[dict], resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """`{"all": {...}, "<category>": {...}}`; each `{"relative", "reference", "candidate", "n", "judge_failures"}`
    plus `relative_ci95` (bootstrap over questions) and, with several replicates (seeds x judge samples),
    `replicates`, `relative_mean` and `relative_std` over the replicates' relative scores."""
    out: dict[str, dict] = {}
    for name, group in _group_scores(reviews).items():
        if not group:
            continue
        scores = np.array([r["score"] for r in group], dtype=float)  # (n, 2)
        entry: dict[str, Any] = {**figures(scores), "n": len(group),
                                 "judge_failures": sum(1 for r in group if r["score"] == FAILED)}
        # per question: the mean over replicates, then the ratio of means over resampled questions
        by_q: dict[str, list] = {}
        for r in group:
            by_q.setdefault(str(r["question_id"]), []).append(r["score"])
        per_q = np.array([np.mean(v, axis=0) for v in by_q.values()])  # (questions, 2)
        ci = bootstrap_ci(len(per_q), lambda idx: 100 * per_q[idx, 1].mean(1) / per_q[idx, 0].mean(1),
                          resamples=resamples, seed=seed)
        entry["relative_ci95"] = [round(ci[0], 1), round(ci[1], 1)] if ci else None
        reps: dict[tuple, list] = {}
        for r in group:
            reps.setdefault((r.get("seed", 0), r.get("sample", 0)), []).append(r["score"])
        if len(reps) > 1:
            rel = [100 * np.mean(v, axis=0)[1] / np.mean(v, axis=0)[0] for v in reps.values()]
            m, s = mean_std(rel)
            entry.update(replicates=len(reps), relative_mean=round(m, 1), relative_std=round(s, 1))
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- inputs


def read_questions(path: str | Path) -> list[dict]:
    """Questions with `_line` (for messages); refuses a bad line, a duplicate id or an unknown category."""
    questions, seen = [], set()
    for n, q in iter_records(path):
        missing = [k for k in ("question_id", "image", "text", "category") if k not in q]
        if missing:
            raise RecordError(f"{path}:{n}: missing {', '.join(missing)}")
        if q["category"] not in CATEGORIES:
            raise RecordError(f"{path}:{n}: unknown category {q['category']!r} (expected one of {', '.join(CATEGORIES)})")
        if not isinstance(q["text"], str):
            raise RecordError(f"{path}:{n}: 'text' must be a string")
        if str(q["question_id"]) in seen:
            raise RecordError(f"{path}:{n}: duplicate question_id {q['question_id']!r}")
        seen.add(str(q["question_id"]))
        questions.append({**q, "_line": n})
    if not questions:
        raise RecordError(f"{path}: no questions")
    return questions


def read_texts(path: str | Path, what: str) -> dict[str, str]:
    """question_id (as text) -> text, from `{"question_id", "text"}` lines (answers or references)."""
    texts: dict[str, str] = {}
    for n, r in iter_records(path):
        if "question_id" not in r or not isinstance(r.get("text"), str):
            raise RecordError(f"{path}:{n}: a {what} needs 'question_id' and a string 'text'")
        if str(r["question_id"]) in texts:
            raise RecordError(f"{path}:{n}: a second {what} for question_id {r['question_id']!r}")
        texts[str(r["question_id"])] = r["text"]
    return texts


def format_context(record: dict) -> str:
    """Captions one per line, then `category: [x1, y1, x2, y2]` lines for the boxes."""
    captions = record.get("captions", record.get("caption", []))
    lines = [captions] if isinstance(captions, str) else [str(c) for c in captions]
    for inst in record.get("instances") or []:
        lines.append(f"{inst['category']}: [{', '.join(f'{float(v):.3f}' for v in inst['bbox'])}]")
    return "\n".join(lines)


def read_contexts(path: str | Path) -> dict[str, str]:
    """image -> symbolic context text."""
    contexts: dict[str, str] = {}
    for n, r in iter_records(path):
        if not isinstance(r.get("image"), str):
            raise RecordError(f"{path}:{n}: a context needs 'image'")
        if not isinstance(r.get("caption", r.get("captions")), (str, list)):
            raise RecordError(f"{path}:{n}: a context needs 'caption' (text) or 'captions' (list)")
        insts = r.get("instances") or []
        if not isinstance(insts, list) or not all(
                isinstance(i, dict) and "category" in i and isinstance(i.get("bbox"), list) and len(i["bbox"]) == 4
                for i in insts):
            raise RecordError(f"{path}:{n}: 'instances' must be a list of {{category, bbox: [4 numbers]}}")
        contexts[r["image"]] = format_context(r)
    return contexts


def _require(questions: list[dict], table: dict, qpath, tpath, what: str, key: str = "question_id") -> None:
    for q in questions:
        if str(q[key]) not in table:
            raise RecordError(f"{qpath}:{q['_line']}: {q[key]!r} has no {what} in {tpath}")


# ----------------------------------------------------------------------------- the run


@dataclass
class LlavaBenchOptions:
    """One `vistune eval llava-bench` run."""

    out: str
    """Output directory: answers, reviews.jsonl, summary.json/.md/.png."""
    questions: str | None = None
    """Questions JSONL (needed unless re-scoring `reviews`)."""
    context: str | None = None
    """Context JSONL (symbolic description per image)."""
    references: str | None = None
    """Reference answers JSONL (Assistant 1)."""
    images: str | None = None
    """Image folder (with `model`)."""
    model: str | None = None
    """vistune checkpoint that answers the questions."""
    answers: str | None = None
    """Candidate answers JSONL (instead of `model`)."""
    reviews: str | None = None
    """Re-score this review file (original format: `text` or `content`, optional `category`)."""
    judge: JudgeOptions | None = None
    """The judge endpoint (needed unless re-scoring)."""
    judge_samples: int = 1
    """Reviews per answer; several give mean ± std over replicates."""
    seeds: list[int] | None = None
    """Candidate sampling seeds (with `model` and temperature > 0): one answer file per seed."""
    answering: Answering | None = None
    """How `model` answers (sampling, batch size, device, dtype); `seeds` override its sampling seed.
    None: greedy, up to 512 new tokens, 8 questions per batch."""
    controls: Sequence[str] = ()
    """Image-reliance controls (`vistune.eval.controls`): `model` answers again, the judge reviews those answers
    too, and the report compares the relative scores."""
    control_seed: int = 0
    """Seed of the shuffled control's derangement."""
    progress: bool = True
    """Progress bars."""


@dataclass
class LlavaBenchResult:
    summary: dict
    """summary.json's content."""
    judge: JudgeStats | None = None
    """Judge counts, tokens and cost (None when re-scoring)."""
    missing: int = 0
    """Reviews still missing (failed requests; a re-run asks them again)."""
    paths: dict = field(default_factory=dict)
    """Files written."""
    controls: dict | None = None
    """The controls' comparison of the relative score (`vistune.eval.controls.compare`)."""


def judge_messages(prompts: dict, category: str, context: str, question: str, reference: str, candidate: str) -> list[dict]:
    user = prompts["template"].format(context=context, question=question, answer1=reference, answer2=candidate,
                                      instruction=prompts["instructions"][category].strip())
    return [{"role": "system", "content": prompts["system"].strip()}, {"role": "user", "content": user}]


def _candidate_answers(o: LlavaBenchOptions, questions: list[dict]
                       ) -> tuple[dict[int, dict[str, str]], dict[str, dict[str, str]]]:
    """seed -> {question_id: answer}, generated with the model (resumable) or read from `answers`; and control ->
    {question_id: answer} for each control."""
    if o.answers:
        answers = read_texts(o.answers, "answer")
        _require(questions, answers, o.questions, o.answers, "answer")
        return {0: answers}, {}
    asked = [{"question_id": q["question_id"], "image": q["image"], "text": q["text"]} for q in questions]
    from vistune.inference.batch import Answering
    from vistune.inference.generate import SamplingParams

    answering = o.answering or Answering(SamplingParams(max_new_tokens=512))
    if o.controls:  # one candidate run (no --seeds) and its controls, from one loaded model
        done = answer_with_controls(answering, o.model, asked, o.images, o.out, o.controls, o.control_seed)
        summaries, path = {None: done[None][1]}, done[None][0]
    else:
        seeds = o.seeds or [None]
        path = Path(o.out) / ("answers-seed{seed}.jsonl" if o.seeds else "answers.jsonl")
        summaries, done = answering.answer(o.model, asked, o.images, path, seeds), {}
    for summary in [*summaries.values(), *(d[1] for d in done.values())]:
        if summary.failed:
            qid, reason = next(iter(summary.failed.items()))
            raise RecordError(f"{len(summary.failed)} questions could not be answered; first: {qid}: {reason}")
    out = {seed or 0: read_texts(str(path).replace("{seed}", str(seed)), "answer")  # 0 names the single run
           for seed in summaries}
    controls = {c: read_texts(p, "answer") for c, (p, _) in done.items() if c is not None}
    return out, controls


def check_options(o: LlavaBenchOptions) -> None:
    """Refuse contradictory or missing options before any work."""
    if o.reviews:
        return
    for name in ("questions", "context", "references"):
        if not getattr(o, name):
            raise RecordError(f"llava-bench needs --{name} (or --reviews FILE to re-score reviews)")
    if bool(o.model) == bool(o.answers):
        raise RecordError("give exactly one of --model CK or --answers FILE")
    if o.model and not o.images:
        raise RecordError("--model needs --images DIR")
    if o.judge is None:
        raise RecordError("llava-bench needs a judge: --judge-base-url and --judge-model")
    if o.judge_samples < 1:
        raise RecordError(f"--judge-samples must be >= 1, got {o.judge_samples}")
    if o.seeds and (not o.model or o.answering is None or o.answering.sampling.temperature <= 0):
        raise RecordError("--seeds repeats sampling: it needs --model and --temperature > 0")
    if o.controls and (not o.model or o.seeds):
        raise RecordError("--controls asks the model again: it needs --model (and one run, without --seeds)")


def evaluate_llava_bench(o: LlavaBenchOptions) -> LlavaBenchResult:
    """Answer (or read answers), judge, summarise and write the report; resumable."""
    check_options(o)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    if o.reviews:
        return rescore_reviews(o.reviews, o.out, o.questions)
    questions = read_questions(o.questions)
    contexts = read_contexts(o.context)
    references = read_texts(o.references, "reference")
    _require(questions, references, o.questions, o.references, "reference answer")
    _require(questions, contexts, o.questions, o.context, "context", key="image")
    candidates, control_answers = _candidate_answers(o, questions)
    prompts = load_prompt("llava_bench")
    jobs = []
    runs = [(seed, None, answers) for seed, answers in candidates.items()]
    runs += [(0, c, answers) for c, answers in control_answers.items()]
    for seed, control, answers in runs:
        for k in range(o.judge_samples):
            for q in questions:
                qid = str(q["question_id"])
                rid = (qid + (f"#seed{seed}" if o.seeds else "") + (f"#control={control}" if control else "")
                       + (f"#sample{k}" if o.judge_samples > 1 else ""))
                record = {"question_id": q["question_id"], "category": q["category"], "seed": seed, "sample": k,
                          **({"control": control} if control else {})}
                jobs.append(JudgeJob(rid, judge_messages(prompts, q["category"], contexts[q["image"]], q["text"],
                                                         references[qid], answers[qid]), record))
    stats = run_judge(jobs, out / "reviews.jsonl", o.judge, parse_review,
                      lambda job, text, parsed: {**job.record, "text": text, "score": parsed or FAILED},
                      desc="llava-bench judge")
    reviews = [r for _, r in iter_records(out / "reviews.jsonl")]
    wanted = {j.id for j in jobs}
    reviews = [r for r in reviews if r.get("id") in wanted]
    real = [r for r in reviews if not r.get("control")]
    comparison = control_comparison(real, {c: [r for r in reviews if r.get("control") == c]
                                           for c in control_answers}) if control_answers else None
    result = _finish(real, out, judge=o.judge.model, samples=o.judge_samples, seeds=o.seeds, controls=comparison)
    result.judge = stats
    result.missing = len(wanted) - len(reviews)
    return result


def read_review_file(path: str | Path, questions: str | None = None) -> list[dict]:
    """Reviews in the original's format, parsed again: `text` (or the original's `content`), optional
    `category` (`llava_bench_conv` is read as `conv`), other fields ignored."""
    cats = {str(q["question_id"]): q["category"] for q in read_questions(questions)} if questions else {}
    reviews = []
    for n, r in iter_records(path):
        text = r.get("text", r.get("content"))
        if not isinstance(text, str):
            raise RecordError(f"{path}:{n}: a review needs its judge's reply in 'text' (or 'content')")
        qid = r.get("question_id", n)
        category = r.get("category") or cats.get(str(qid))
        if isinstance(category, str) and category.startswith("llava_bench_"):
            category = category[len("llava_bench_"):]
        score = parse_review(text)
        reviews.append({"question_id": qid, "category": category, "text": text, "score": score or FAILED})
    if not reviews:
        raise RecordError(f"{path}: no reviews")
    return reviews


def rescore_reviews(path: str | Path, out_dir: str | Path, questions: str | None = None) -> LlavaBenchResult:
    """Parse every review of `path` again; write reviews.jsonl and the summary in `out_dir`."""
    reviews = read_review_file(path, questions)
    out = Path(out_dir)
    atomic_write_jsonl(out / "reviews.jsonl", reviews)
    return _finish(reviews, out, judge=f"reviews re-scored from {path}")


def control_comparison(real: list[dict], controls: dict[str, list[dict]]) -> dict:
    """The relative score with the image against each control's, paired over the questions reviewed in every run
    (scores averaged over judge samples per question)."""
    def per_question(reviews: list[dict]) -> dict[str, np.ndarray]:
        by_q: dict[str, list] = {}
        for r in reviews:
            by_q.setdefault(str(r["question_id"]), []).append(r["score"])
        return {q: np.mean(v, axis=0) for q, v in by_q.items()}  # [reference, candidate]

    runs = {None: per_question(real), **{c: per_question(v) for c, v in controls.items()}}
    common = sorted(set.intersection(*(set(r) for r in runs.values())))
    units = {c: np.array([r[q] for q in common]).reshape(len(common), 2) for c, r in runs.items()}
    comparison = compare(units.pop(None), units, lambda a: 100 * a[..., 1].mean(-1) / a[..., 0].mean(-1))
    comparison["metric"] = "relative score"
    return comparison


def _finish(reviews: list[dict], out: Path, judge: str, samples: int = 1, seeds: list[int] | None = None,
            controls: dict | None = None) -> LlavaBenchResult:
    summary = summarize(reviews)
    report = summary_report(summary, judge, samples, seeds)
    report.data = dict(summary)  # summary.json gains `controls`; the result's summary keeps one entry per category
    add_to_report(report, controls, metric="relative score")
    paths = write_report(report, out, json_name="summary.json", md_name="summary.md", png_name="summary.png")
    return LlavaBenchResult(summary, paths=paths, controls=controls)


def summary_report(summary: dict, judge: str, samples: int = 1, seeds: list[int] | None = None) -> Report:
    names = [c for c in summary if c != "all"] + ["all"]
    spread = any("relative_std" in summary[c] for c in names)
    header = ["category", "relative (%)", "95 % CI", "reference", "candidate", "n", "judge failures"]
    header += ["mean ± std"] if spread else []
    rows = []
    for c in names:
        e = summary[c]
        ci = e.get("relative_ci95")
        row = [CATEGORY_NAMES.get(c, c), e["relative"], f"{ci[0]:.1f}–{ci[1]:.1f}" if ci else None,
               e["reference"], e["candidate"], e["n"], e["judge_failures"]]
        if spread:
            row.append(f"{e['relative_mean']:.1f} ± {e['relative_std']:.1f} ({e['replicates']})"
                       if "relative_std" in e else None)
        rows.append(row)
    failures = summary["all"]["judge_failures"]
    warnings = [f"{failures} of {summary['all']['n']} reviews could not be parsed; each counts as scores "
                f"(-1, -1) and lowers both means, as in the original summary"] if failures else []
    notes = [
        f"judge: {judge}; Assistant 1 = the reference answer, Assistant 2 = the candidate; each review's first "
        "line holds the two scores (1-10)",
        "reference / candidate = 10 × the mean judge score of that answer (means rounded to 3 decimals first)",
        "relative = 100 × mean(candidate score) / mean(reference score), rounded to one decimal: the "
        "original release's LLaVA-Bench figure; 100 means as good as the reference by this judge",
        "judge failures = reviews whose first line is not exactly two numbers (after commas become spaces, "
        "split on single spaces), still averaged as (-1, -1)",
        "95 % CI = percentile bootstrap over questions (2000 resamples) of the relative score",
        "there is no chance level for a judged score; compare with the relative score of a baseline judged by "
        "the same judge",
    ]
    if spread:
        notes.append(f"mean ± std = over replicates (candidate seeds {seeds or [0]} × {samples} judge samples)")
    return Report(
        title="LLaVA-Bench (LLM judge)",
        data=summary,
        tables=[Table(header, rows)],
        notes=notes,
        warnings=warnings,
        chart=Chart([CATEGORY_NAMES.get(c, c) for c in names], {"relative score": [summary[c]["relative"] for c in names]},
                    title="LLaVA-Bench relative score (candidate / reference)", ylabel="relative score (%)",
                    ylim=None, intervals={"relative score": [tuple(summary[c]["relative_ci95"])
                                                             if summary[c].get("relative_ci95") else None
                                                             for c in names]}),
    )


def print_result(result: LlavaBenchResult, judge: JudgeOptions | None, stream=None) -> None:
    stream = stream or sys.stdout
    for c, e in result.summary.items():
        print(f"{c:<8} relative {fmt(e['relative'])}  reference {fmt(e['reference'])}  candidate "
              f"{fmt(e['candidate'])}  n {e['n']}  judge failures {e['judge_failures']}", file=stream)
    if result.judge is not None and judge is not None:
        print("\n".join(result.judge.lines(judge)), file=sys.stderr)
    print(f"report: {result.paths.get('md')}", file=stream)
