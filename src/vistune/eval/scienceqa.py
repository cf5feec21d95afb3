"""`vistune eval scienceqa`: ScienceQA multiple-choice accuracy, with the paper's judge ensemble.

Extraction is the original release's rule, in order: the whole answer is an option letter; or it
starts with a letter followed by ". "; or `The answer is ([A-Z]).` matches exactly once; otherwise
the answer failed. A letter beyond the question's choices, a failure, or no answer at all, is
index -1 and counts as wrong.

Ensemble: a second model's answers (`--ensemble-answers`, or the judge answering each question
from its text alone, as the paper's text-only GPT-4). "complement" takes the second answer where it
gives a valid letter, else the first model's. With a judge, every question where the two
disagree is shown to the judge with both answers; its letter is final, and where its reply gives
no valid letter the first model's answer stands.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vistune.data.scienceqa import (
    OPTIONS,
    PromptFormat,
    build_input,
    context_text,
    image_path,
    load_problems,
    load_split,
    options_text,
)
from vistune.eval.controls import add_to_report, answer_with_controls, compare, fill_text_only, mean_statistic
from vistune.eval.judge import JudgeJob, JudgeOptions, JudgeStats, load_prompt, run_judge
from vistune.eval.report import Chart, Report, Table, bootstrap_ci, write_report
from vistune.utils.io import atomic_write_json
from vistune.utils.jsonl import RecordError, iter_records

if TYPE_CHECKING:
    from vistune.inference.batch import Answering

ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
COLUMN_MEANING = {
    "NAT": "natural science", "SOC": "social science", "LAN": "language science",
    "TXT": "questions with a text context (hint)", "IMG": "questions with an image",
    "NO": "questions with neither", "G1-6": "grades 1-6", "G7-12": "grades 7-12",
}
METHOD_MEANING = {
    "model": "the candidate model alone",
    "second": "the second model alone (its answers, or the judge answering from the text)",
    "complement": "the second model's answer where it gives a valid letter, else the candidate's",
    "judge_ensemble": "where the two disagree, the judge sees both answers and picks the letter "
                      "(its reply unreadable: the candidate's answer stands)",
}


# ----------------------------------------------------------------------------- the original's rules


def extract_letter(text: str) -> str | None:
    """The option letter an answer gives, by the original's rule; None when it gives none."""
    if len(text) == 1 and text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_PATTERN.findall(text)
    return found[0] if len(found) == 1 else None


def choice_index(text: str | None, n_choices: int) -> int:
    """The chosen option's index, or -1 (no answer, failed extraction, or a letter beyond the choices)."""
    letter = extract_letter(text) if text is not None else None
    if letter is None or letter not in OPTIONS[:n_choices]:
        return -1
    return OPTIONS.index(letter)


def columns_of(problem: dict) -> list[str]:
    """The report columns a problem counts in (subject, context kind, grade band)."""
    cols = []
    subject = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}.get(problem.get("subject"))
    if subject:
        cols.append(subject)
    hint, image = bool((problem.get("hint") or "").strip()), bool(problem.get("image"))
    cols += (["TXT"] if hint else []) + (["IMG"] if image else []) + ([] if hint or image else ["NO"])
    m = re.fullmatch(r"grade(\d+)", str(problem.get("grade", "")))
    if m:
        cols.append("G1-6" if int(m.group(1)) <= 6 else "G7-12")
    return cols


def score_choices(choices: dict[str, int], problems: dict[str, dict], pids: Sequence[str]) -> dict:
    """Accuracy (%) per column and on average, with a bootstrap 95 % interval of the average."""
    correct = np.array([choices.get(p, -1) == problems[p]["answer"] for p in pids], dtype=float)
    by_col, n_col = {}, {}
    for col in COLUMNS:
        mask = np.array([col in columns_of(problems[p]) for p in pids], dtype=bool)
        n_col[col] = int(mask.sum())
        by_col[col] = float(100 * correct[mask].mean()) if mask.any() else None
    ci = bootstrap_ci(len(pids), lambda idx: 100 * correct[idx].mean(1))
    return {"by_column": by_col, "n_by_column": n_col, "avg": float(100 * correct.mean()) if len(pids) else 0.0,
            "avg_ci95": list(ci) if ci else None, "correct": int(correct.sum()), "count": len(pids),
            "failed": sum(1 for p in pids if choices.get(p, -1) == -1)}


def chance_row(problems: dict[str, dict], pids: Sequence[str]) -> dict:
    """Expected accuracy of uniform guessing: the mean of 100 / number of choices."""
    guess = np.array([100 / len(problems[p]["choices"]) for p in pids])
    by_col = {}
    for col in COLUMNS:
        mask = np.array([col in columns_of(problems[p]) for p in pids], dtype=bool)
        by_col[col] = float(guess[mask].mean()) if mask.any() else None
    return {"by_column": by_col, "avg": float(guess.mean()) if len(pids) else 0.0}


def results_json(choices: dict[str, int], texts: dict[str, str], problems: dict[str, dict], pids: Sequence[str]) -> dict:
    """The original's result shape: {"acc" (%), "correct", "count", "results": {pid: index}, "outputs": {pid: text}}."""
    correct = sum(1 for p in pids if choices.get(p, -1) == problems[p]["answer"])
    return {"acc": 100 * correct / len(pids) if pids else 0.0, "correct": correct, "count": len(pids),
            "results": {p: choices.get(p, -1) for p in pids}, "outputs": {p: texts.get(p, "FAILED") for p in pids}}


# ----------------------------------------------------------------------------- the run


@dataclass
class ScienceQAOptions:
    """One `vistune eval scienceqa` run."""

    problems: str
    """problems.json."""
    pid_splits: str
    """pid_splits.json."""
    out: str
    """Output directory."""
    split: str = "test"
    """Split to score."""
    images: str | None = None
    """Image folder, `<images>/<pid>/image.png` (with `model`)."""
    model: str | None = None
    """vistune checkpoint that answers the split."""
    answers: str | None = None
    """Answers JSONL `{"question_id", "text", "prompt"}` (instead of `model`)."""
    prompt_format: str = "QCM-A"
    """How `model` is asked (the input side of a `data scienceqa` prompt format)."""
    ensemble_answers: str | None = None
    """A second model's answers for the ensemble."""
    judge: JudgeOptions | None = None
    """Ensemble judge endpoint."""
    limit: int | None = None
    """Score only the split's first N questions."""
    answering: Answering | None = None
    """How `model` answers (sampling, batch size, device, dtype); None: greedy, up to 256 new tokens."""
    controls: Sequence[str] = ()
    """Image-reliance controls (`vistune.eval.controls`) answered by `model` beside the real answers."""
    control_seed: int = 0
    """Seed of the shuffled control's derangement."""
    progress: bool = True
    """Progress bars."""


@dataclass
class ScienceQAResult:
    methods: dict[str, dict]
    """Method name -> `score_choices` figures."""
    results: dict
    """results.json's content (the candidate alone)."""
    judge: JudgeStats | None = None
    """Judge counts (answering and arbitrating together)."""
    missing: int = 0
    """Judge requests that failed (a re-run asks them again)."""
    paths: dict = field(default_factory=dict)
    """Files written."""
    controls: dict | None = None
    """The controls' comparison of the candidate's accuracy (`vistune.eval.controls.compare`)."""


def read_answers(path: str | Path, problems: dict[str, dict]) -> dict[str, str]:
    """pid -> answer text; a pid that is not in problems.json is refused with its line."""
    answers: dict[str, str] = {}
    for n, r in iter_records(path):
        if "question_id" not in r or not isinstance(r.get("text"), str):
            raise RecordError(f"{path}:{n}: an answer needs 'question_id' and a string 'text'")
        pid = str(r["question_id"])
        if pid not in problems:
            raise RecordError(f"{path}:{n}: question_id {pid} is not in problems.json")
        answers[pid] = r["text"]
    return answers


def _model_answers(o: ScienceQAOptions, problems: dict, pids: list[str]
                   ) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The candidate's answers, and each control's (questions without an image keep their real answer)."""
    fmt = PromptFormat.parse(o.prompt_format)
    questions = [{"question_id": p, "text": build_input(problems[p], fmt),
                  **({"image": image_path(p, problems[p])} if image_path(p, problems[p]) else {})} for p in pids]
    from vistune.inference.batch import Answering

    done = answer_with_controls(o.answering or Answering(), o.model, questions, o.images, o.out, o.controls,
                                o.control_seed)
    for c, (_, summary) in done.items():
        for pid, reason in summary.failed.items():
            print(f"not answered {pid}{f' ({c})' if c else ''}: {reason} (counted wrong)", file=sys.stderr)
    real = read_answers(done[None][0], problems)
    return real, {c: fill_text_only(questions, real, read_answers(path, problems))
                  for c, (path, _) in done.items() if c is not None}


def _qa_fields(problem: dict) -> dict[str, str]:
    return {"question": problem["question"].strip(), "context": context_text(problem),
            "options": options_text(problem["choices"])}


def _judge_jobs(prompts: dict, kind: str, problems: dict, pids: list[str], first: dict[str, str] | None = None,
                second: dict[str, str] | None = None) -> list[JudgeJob]:
    jobs = []
    for p in pids:
        fields = _qa_fields(problems[p])
        if kind == "arbitrate":
            fields.update(answer1=(first or {}).get(p, "(no answer)"), answer2=(second or {}).get(p, "(no answer)"))
        messages = [{"role": "system", "content": prompts["system"].strip()},
                    {"role": "user", "content": prompts[kind].format(**fields)}]
        jobs.append(JudgeJob(p, messages, {"question_id": p}))
    return jobs


def _option_letter(text: str) -> str | None:
    letter = extract_letter(text)
    return letter if letter is not None and letter in OPTIONS else None


def _run_judge(jobs: list[JudgeJob], path: Path, judge: JudgeOptions, desc: str) -> tuple[dict, JudgeStats]:
    """Judge replies pid -> text; a reply without an option letter is re-asked, then kept as a failure."""
    stats = run_judge(jobs, path, judge, _option_letter,
                      lambda job, text, parsed: {**job.record, "text": text, "parsed": parsed is not None},
                      desc=desc)
    wanted = {j.id for j in jobs}
    return {r["question_id"]: r["text"] for _, r in iter_records(path) if r.get("id") in wanted}, stats


def check_options(o: ScienceQAOptions) -> None:
    if bool(o.model) == bool(o.answers):
        raise RecordError("give exactly one of --model CK or --answers FILE")
    if o.model and not o.images:
        raise RecordError("--model needs --images DIR")
    if o.limit is not None and o.limit < 1:
        raise RecordError(f"--limit must be >= 1, got {o.limit}")
    if o.controls and not o.model:
        raise RecordError("--controls asks the model again: it needs --model")
    PromptFormat.parse(o.prompt_format)


def evaluate_scienceqa(o: ScienceQAOptions) -> ScienceQAResult:
    """Answer (or read answers), extract, ensemble, score and write results.json and the report."""
    check_options(o)
    problems = load_problems(o.problems)
    pids = load_split(problems, o.pid_splits, o.split, o.problems)[: o.limit]
    ensemble = read_answers(o.ensemble_answers, problems) if o.ensemble_answers else None
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    texts, control_texts = (read_answers(o.answers, problems), {}) if o.answers else _model_answers(o, problems, pids)
    n = {p: len(problems[p]["choices"]) for p in pids}
    first = {p: choice_index(texts.get(p), n[p]) for p in pids}
    methods = {"model": score_choices(first, problems, pids)}
    result = ScienceQAResult(methods, results_json(first, texts, problems, pids))
    atomic_write_json(out / "results.json", result.results)
    stats_all: list[JudgeStats] = []
    if ensemble is None and o.judge is not None:  # the judge answers from the text, as the paper's GPT-4
        prompts = load_prompt("scienceqa_ensemble")
        ensemble, stats = _run_judge(_judge_jobs(prompts, "answer", problems, pids), out / "judge_answers.jsonl",
                                     o.judge, "judge answers")
        stats_all.append(stats)
    if ensemble is not None:
        second = {p: choice_index(ensemble.get(p), n[p]) for p in pids}
        complement = {p: second[p] if second[p] != -1 else first[p] for p in pids}
        methods["second"] = score_choices(second, problems, pids)
        methods["complement"] = score_choices(complement, problems, pids)
        atomic_write_json(out / "results_complement.json",
                          results_json(complement, {p: ensemble.get(p, "FAILED") for p in pids}, problems, pids))
        if o.judge is not None:
            prompts = load_prompt("scienceqa_ensemble")
            disagree = [p for p in pids if first[p] != second[p]]
            verdicts, stats = _run_judge(_judge_jobs(prompts, "arbitrate", problems, disagree, texts, ensemble),
                                         out / "judge_arbitration.jsonl", o.judge, "judge arbitration")
            stats_all.append(stats)
            final = dict(first)
            for p in disagree:
                picked = choice_index(verdicts.get(p), n[p])
                final[p] = picked if picked != -1 else first[p]
            methods["judge_ensemble"] = score_choices(final, problems, pids)
            methods["judge_ensemble"]["arbitrated"] = len(disagree)
            atomic_write_json(out / "results_judge_ensemble.json",
                              results_json(final, {p: verdicts.get(p, texts.get(p, "FAILED")) for p in pids},
                                           problems, pids))
    if stats_all:
        total = JudgeStats()
        for s in stats_all:
            for k in ("total", "skipped", "written", "parse_failures", "request_failures", "prompt_tokens",
                      "completion_tokens", "requests", "retries"):
                setattr(total, k, getattr(total, k) + getattr(s, k))
        result.judge = total
        result.missing = total.request_failures
    chance = chance_row(problems, pids)
    report = scienceqa_report(methods, chance, o)
    if control_texts:
        def right(texts_: dict[str, str]) -> np.ndarray:  # (n, 1)
            return np.array([[choice_index(texts_.get(p), n[p]) == problems[p]["answer"]] for p in pids], dtype=float)

        result.controls = compare(right(texts), {c: right(t) for c, t in control_texts.items()}, mean_statistic())
        add_to_report(report, result.controls, metric="accuracy (%)")
    result.paths = write_report(report, out)
    result.paths["results"] = out / "results.json"
    return result


def scienceqa_report(methods: dict[str, dict], chance: dict, o: ScienceQAOptions) -> Report:
    header = ["method"] + list(COLUMNS) + ["avg", "95 % CI", "failed", "n"]
    rows = []
    for name, m in methods.items():
        ci = m.get("avg_ci95")
        rows.append([name] + [m["by_column"][c] for c in COLUMNS]
                    + [m["avg"], f"{ci[0]:.1f}–{ci[1]:.1f}" if ci else None, m["failed"], m["count"]])
    rows.append(["chance"] + [chance["by_column"][c] for c in COLUMNS] + [chance["avg"], None, None, None])
    model = methods["model"]
    warnings = [f"{c}: the model's {model['by_column'][c]:.1f} % is not above chance ({chance['by_column'][c]:.1f} %)"
                for c in COLUMNS if model["by_column"][c] is not None and model["by_column"][c] <= chance["by_column"][c]]
    if model["avg"] <= chance["avg"]:
        warnings.append(f"average: the model's {model['avg']:.1f} % is not above chance ({chance['avg']:.1f} %)")
    if model["failed"]:
        warnings.append(f"{model['failed']} of {model['count']} answers give no valid option letter "
                        "(or are missing); they count as wrong")
    n_by = model["n_by_column"]
    notes = [f"`{k}`: {METHOD_MEANING[k]}" for k in methods]
    notes += [f"{c} = {COLUMN_MEANING[c]} (n = {n_by[c]})" for c in COLUMNS]
    notes += [
        f"split `{o.split}`; candidate: " + (f"answers from {o.answers}" if o.answers else
                                             f"{o.model} asked in format {o.prompt_format}"),
        "answer extraction (the original release's rule): the whole answer is a letter; else it starts with "
        "\"X. \"; else \"The answer is X.\" occurs exactly once; else failed. A failure or a letter beyond the "
        "question's choices counts as wrong",
        "avg = accuracy over every question of the split (%); 95 % CI = percentile bootstrap over questions "
        "(2000 resamples)",
        "chance = the mean over questions of 100 / number of choices (uniform guessing); a column where the "
        "model is not above it is listed under Attention",
        "failed = answers without a valid letter, or missing",
    ]
    if "judge_ensemble" in methods:
        notes.append(f"judge: {o.judge.model if o.judge else '?'}; questions arbitrated (the two answers "
                     f"disagree): {methods['judge_ensemble']['arbitrated']}")
    groups = list(COLUMNS) + ["avg"]
    return Report(
        title=f"ScienceQA ({o.split})",
        data={"methods": methods, "chance": chance, "columns": COLUMN_MEANING, "split": o.split},
        tables=[Table(header, rows)],
        notes=notes,
        warnings=warnings,
        chart=Chart(groups, {k: [m["by_column"][c] for c in COLUMNS] + [m["avg"]] for k, m in methods.items()},
                    title=f"ScienceQA accuracy ({o.split}, n={model['count']})", ylabel="accuracy (%)",
                    intervals={k: [None] * len(COLUMNS) + [tuple(m["avg_ci95"]) if m.get("avg_ci95") else None]
                               for k, m in methods.items()},
                    chance=[chance["by_column"][c] for c in COLUMNS] + [chance["avg"]]),
    )


def print_result(result: ScienceQAResult, judge: JudgeOptions | None, stream=None) -> None:
    stream = stream or sys.stdout
    print("method           " + " ".join(f"{c:>6}" for c in COLUMNS) + "    avg", file=stream)
    for name, m in result.methods.items():
        cells = " ".join(f"{m['by_column'][c]:6.1f}" if m["by_column"][c] is not None else "     –" for c in COLUMNS)
        print(f"{name:<16} {cells} {m['avg']:6.2f}", file=stream)
    if result.judge is not None and judge is not None:
        print("\n".join(result.judge.lines(judge)), file=sys.stderr)
    print(f"results: {result.paths.get('results')}  report: {result.paths.get('md')}", file=stream)
