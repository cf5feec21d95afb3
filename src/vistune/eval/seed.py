"""`vistune eval seed`: SEED-Bench multiple-choice accuracy per evaluation dimension (image questions).

Questions: SEED-Bench's JSON (`{"questions": [{"question_id", "question", "choice_a".."choice_d", "answer",
"data_type", "data_id", "question_type_id"}], "question_type": {name: id}}`); only `data_type` "image" questions
are asked, the image is `data_id` under `--images`. The prompt is LLaVA-1.5's: the question, `A. text` lines, then
"Answer with the option's letter from the given choices directly."

Scoring is LLaVA's for SEED-Bench: an answer is right when its text, stripped of surrounding whitespace, is exactly
the gold letter ("A" is right, "A." and "(A)" are not). Accuracy per dimension and over all image questions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistune.eval.benchmark import load_json, LETTER_ANSWER, Benchmark, Scored
from vistune.eval.controls import mean_statistic
from vistune.eval.report import Chart, Report, Table
from vistune.utils.jsonl import RecordError

LETTERS = ("A", "B", "C", "D")


class Seed(Benchmark):
    name = "seed"
    title = "SEED-Bench (image questions)"
    max_new_tokens = 16

    def load(self, o) -> list[dict]:
        path = Path(o.questions)
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise RecordError(f"{path}: expected SEED-Bench's {{'questions': [...], 'question_type': {{...}}}}")
        names = {str(v): k for k, v in (data.get("question_type") or {}).items()}
        questions = []
        for i, r in enumerate(data["questions"]):
            if r.get("data_type", "image") != "image":
                continue
            missing = [k for k in ("question_id", "question", "answer", "data_id") if k not in r]
            if missing:
                raise RecordError(f"{path}: question {i} lacks {', '.join(missing)}")
            options = [str(r[f"choice_{c}"]) for c in "abcd" if f"choice_{c}" in r]
            lines = [str(r["question"]).strip()] + [f"{LETTERS[k]}. {o}" for k, o in enumerate(options)]
            dim = r.get("question_type_id")
            questions.append({"question_id": str(r["question_id"]), "image": r["data_id"],
                              "text": "\n".join(lines + [LETTER_ANSWER]), "answer": str(r["answer"]).strip(),
                              "dimension": names.get(str(dim), str(dim) if dim is not None else "all")})
        return questions

    def score(self, questions, answers, o) -> Scored:
        right = np.array([[q["question_id"] in answers and answers[q["question_id"]].strip() == q["answer"]]
                          for q in questions], dtype=float)
        dims = sorted({q["dimension"] for q in questions})
        acc = {d: 100 * float(np.mean([r[0] for r, q in zip(right, questions) if q["dimension"] == d])) for d in dims}
        overall = 100 * float(right.mean())
        figures = {"image_accuracy": overall, "by_dimension": acc, "n": len(questions)}
        rows = [[d, acc[d], sum(q["dimension"] == d for q in questions)] for d in dims]
        rows.append(["**image questions**", overall, len(questions)])
        report = Report(
            title=self.title, data={}, tables=[Table(["dimension", "accuracy", "n"], rows)],
            notes=["right = the answer, stripped, is exactly the gold letter (LLaVA's SEED-Bench scoring)",
                   "chance is 25 % (four options)"],
            chart=Chart(dims + ["image"], {"accuracy": [acc[d] for d in dims] + [overall]},
                        title=f"SEED-Bench image accuracy (n={len(questions)})", ylabel="accuracy (%)",
                        chance=[25.0] * (len(dims) + 1)))
        return Scored(figures, report, "image accuracy", right, mean_statistic())
