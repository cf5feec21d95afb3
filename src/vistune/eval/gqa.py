"""`vistune eval gqa`: GQA exact match, as LLaVA-1.5 scores it with GQA's own evaluation.

The prediction is normalised as LLaVA's conversion for GQA's evaluator does it (trailing periods stripped, then
lower-cased) and must equal the gold answer exactly (GQA's evaluator compares the strings as they are). GQA's
evaluator counts only balanced questions (`isBalanced`); accuracy is also given per structural and per semantic
question type where the file has them.

Questions: GQA's questions JSON (`{qid: {"imageId", "question", "answer", "types": {"structural", "semantic"},
"isBalanced"}}`, e.g. `testdev_balanced_questions.json`; images `IMAGE_ID.jpg`) or JSONL `{"question_id",
"image", "text", "answer", "type"?}`. `predictions.json` is written in the shape GQA's evaluator reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistune.eval.benchmark import load_json, SHORT_ANSWER, Benchmark, Scored
from vistune.eval.controls import mean_statistic
from vistune.eval.report import Chart, Report, Table
from vistune.utils.io import atomic_write_json
from vistune.utils.jsonl import RecordError, iter_records


def normalize(prediction: str) -> str:
    """Trailing periods stripped, lower-cased (LLaVA's conversion for GQA's evaluator)."""
    return prediction.rstrip(".").lower()


class Gqa(Benchmark):
    name = "gqa"
    title = "GQA (exact match)"
    max_new_tokens = 16

    def load(self, o) -> list[dict]:
        path = Path(o.questions)
        rows = []
        if path.suffix == ".jsonl":
            for n, r in iter_records(path):
                if not {"question_id", "image", "answer"} <= set(r) or not isinstance(r.get("text"), str):
                    raise RecordError(f"{path}:{n}: a question needs 'question_id', 'image', 'text' and 'answer'")
                rows.append({"question_id": str(r["question_id"]), "image": r["image"], "question": r["text"],
                             "answer": r["answer"], "structural": r.get("type"), "semantic": None})
        else:
            data = load_json(path)
            if not isinstance(data, dict):
                raise RecordError(f"{path}: expected GQA's {{question id: question}} mapping")
            for qid, r in data.items():
                if not r.get("isBalanced", True):
                    continue  # GQA's evaluator scores balanced questions only
                types = r.get("types") or {}
                rows.append({"question_id": str(qid), "image": f"{r['imageId']}.jpg", "question": r["question"],
                             "answer": r["answer"], "structural": types.get("structural"),
                             "semantic": types.get("semantic")})
        return [{**r, "text": f"{r.pop('question')}\n{SHORT_ANSWER}"} for r in rows]

    def score(self, questions, answers, o) -> Scored:
        right = np.array([[qid in answers and normalize(answers[qid]) == q["answer"]]
                          for q in questions for qid in [q["question_id"]]], dtype=float)
        overall = 100 * float(right.mean())
        tables, figures = [], {"accuracy": overall, "n": len(questions)}
        for kind in ("structural", "semantic"):
            types = sorted({q[kind] for q in questions if q.get(kind)})
            if not types:
                continue
            acc = {t: 100 * float(np.mean([r[0] for r, q in zip(right, questions) if q.get(kind) == t])) for t in types}
            figures[f"by_{kind}"] = acc
            tables.append(Table([f"{kind} type", "accuracy", "n"],
                                [[t, acc[t], sum(q.get(kind) == t for q in questions)] for t in types]))
        tables.insert(0, Table(["", "accuracy", "n"], [["**overall**", overall, len(questions)]]))
        chart_types = figures.get("by_structural", {})
        report = Report(
            title=self.title, data={}, tables=tables,
            notes=["a prediction is right when, trailing periods stripped and lower-cased, it equals the gold "
                   "answer exactly (GQA's evaluator on LLaVA's converted predictions); balanced questions only"],
            chart=Chart(list(chart_types) + ["overall"], {"accuracy": list(chart_types.values()) + [overall]},
                        title=f"GQA accuracy (n={len(questions)})", ylabel="accuracy (%)"))
        return Scored(figures, report, "accuracy", right, mean_statistic())

    def write_extra(self, out, questions, answers, scored, o) -> dict[str, Path]:
        rows = [{"questionId": q["question_id"], "prediction": normalize(answers.get(q["question_id"], ""))}
                for q in questions]
        atomic_write_json(out / "predictions.json", rows, indent=None)
        return {"predictions": out / "predictions.json"}
