"""ScienceQA in its public layout, and its conversion into LLaVA training records.

`problems.json` maps a problem id (pid) to `{"question", "choices", "answer" (index), "hint"
(text context), "image" (file name or null), "subject", "grade", "lecture", "solution", ...}`;
`pid_splits.json` maps a split name to its pids; images are `<images>/<pid>/image.png`.

A prompt format `IN-OUT` names the parts of the question and of the answer, in order, as in the
original converter: input letters Q (question), C (context: the hint, "N/A" when empty),
M (options "(A) ... (B) ..."), L (lecture), E (explanation, the solution); output letters
A ("The answer is X."), L and E. `QCM-A` answers directly; `QCM-LEA` reasons first and answers
last; `QCM-ALE` answers first and explains after (the paper's ablation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vistune.utils.io import atomic_write_json
from vistune.utils.jsonl import RecordError

OPTIONS = "ABCDE"
"""Option letters; ScienceQA questions have 2 to 5 choices."""
INPUT_PARTS = "QCMLE"
OUTPUT_PARTS = "ALE"


class ScienceQAError(RecordError):
    """A problems/splits file or a prompt format that cannot be used; the message names the file."""


@dataclass(frozen=True)
class PromptFormat:
    """A parsed `IN-OUT` prompt format."""

    inputs: str
    """Input part letters in order (from QCMLE)."""
    outputs: str
    """Output part letters in order (from ALE)."""

    @classmethod
    def parse(cls, text: str) -> PromptFormat:
        inp, sep, out = text.partition("-")
        if not sep or not inp or not out or set(inp) - set(INPUT_PARTS) or set(out) - set(OUTPUT_PARTS) \
                or len(set(inp)) < len(inp) or len(set(out)) < len(out) or "A" not in out:
            raise ScienceQAError(f"prompt format {text!r}: expected IN-OUT with IN from {INPUT_PARTS} and OUT "
                                 f"from {OUTPUT_PARTS} including A, each letter at most once (e.g. QCM-LEA)")
        return cls(inp, out)

    def __str__(self) -> str:
        return f"{self.inputs}-{self.outputs}"


def load_problems(path: str | os.PathLike) -> dict[str, dict]:
    """problems.json, checked: every problem has a question, 2-5 choices and an answer index among them."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ScienceQAError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    except OSError as e:
        raise ScienceQAError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ScienceQAError(f"{path}: expected an object mapping problem ids to problems")
    for pid, p in data.items():
        if not isinstance(p, dict) or not isinstance(p.get("question"), str):
            raise ScienceQAError(f"{path}: problem {pid}: needs a 'question' text")
        choices = p.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(OPTIONS):
            raise ScienceQAError(f"{path}: problem {pid}: 'choices' must be a list of 2 to {len(OPTIONS)} options")
        ans = p.get("answer")
        if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise ScienceQAError(f"{path}: problem {pid}: 'answer' must be an index into its {len(choices)} choices")
    return data


def load_split(problems: dict[str, dict], splits_path: str | os.PathLike | None, split: str,
               problems_path: str | os.PathLike = "problems.json") -> list[str]:
    """The split's pids from pid_splits.json, each checked to be in problems.json; without a splits file,
    the problems whose own `split` field names the split."""
    if splits_path is None:
        pids = [pid for pid, p in problems.items() if p.get("split") == split]
        if not pids:
            raise ScienceQAError(f"{problems_path}: no problem has split {split!r} (give --pid-splits)")
        return pids
    try:
        with open(splits_path, encoding="utf-8") as f:
            splits = json.load(f)
    except json.JSONDecodeError as e:
        raise ScienceQAError(f"{splits_path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    except OSError as e:
        raise ScienceQAError(f"{splits_path}: cannot read ({e.strerror or e})") from None
    if not isinstance(splits, dict) or split not in splits:
        names = ", ".join(splits) if isinstance(splits, dict) else "none"
        raise ScienceQAError(f"{splits_path}: no split {split!r} (splits: {names})")
    pids = [str(p) for p in splits[split]]
    for pid in pids:
        if pid not in problems:
            raise ScienceQAError(f"{splits_path}: split {split!r} lists pid {pid} that is not in {problems_path}")
    return pids


def options_text(choices: list[str]) -> str:
    return " ".join(f"({OPTIONS[i]}) {c}" for i, c in enumerate(choices))


def context_text(problem: dict) -> str:
    return (problem.get("hint") or "").strip() or "N/A"


def build_input(problem: dict, fmt: PromptFormat) -> str:
    """The question side, one part per line (no image placeholder)."""
    parts = {
        "Q": f"Question: {problem['question'].strip()}",
        "C": f"Context: {context_text(problem)}",
        "M": f"Options: {options_text(problem['choices'])}",
        "L": f"Lecture: {(problem.get('lecture') or '').strip()}",
        "E": f"Solution: {(problem.get('solution') or '').strip()}",
    }
    return "\n".join(parts[c] for c in fmt.inputs)


def build_output(problem: dict, fmt: PromptFormat) -> str:
    """The answer side: "The answer is X." with the lecture and/or explanation in the format's order."""
    parts = {
        "A": f"The answer is {OPTIONS[problem['answer']]}.",
        "L": (problem.get("lecture") or "").strip(),
        "E": (problem.get("solution") or "").strip(),
    }
    return "\n".join(parts[c] for c in fmt.outputs if parts[c])


def image_path(pid: str, problem: dict) -> str | None:
    """The image's path relative to the image folder, or None for a text-only question."""
    return f"{pid}/image.png" if problem.get("image") else None


def to_record(pid: str, problem: dict, fmt: PromptFormat) -> dict:
    """One LLaVA record; image questions carry `<image>` at the start of the human turn."""
    image = image_path(pid, problem)
    question = build_input(problem, fmt)
    record: dict = {"id": pid}
    if image:
        record["image"] = image
        question = "<image>\n" + question
    record["conversations"] = [{"from": "human", "value": question},
                               {"from": "gpt", "value": build_output(problem, fmt)}]
    return record


def convert_scienceqa(problems_path: str | os.PathLike, splits_path: str | os.PathLike | None, split: str,
                      prompt_format: str, out: str | os.PathLike) -> dict[str, int]:
    """Write the split as a LLaVA JSON list; returns counts {"records", "with_image", "text_only"}."""
    fmt = PromptFormat.parse(prompt_format)
    problems = load_problems(problems_path)
    pids = load_split(problems, splits_path, split, problems_path)
    records = [to_record(pid, problems[pid], fmt) for pid in pids]
    atomic_write_json(Path(out), records)
    with_image = sum(1 for r in records if "image" in r)
    return {"records": len(records), "with_image": with_image, "text_only": len(records) - with_image}
