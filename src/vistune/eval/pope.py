"""`vistune eval pope`: POPE's yes/no object-existence questions, scored as LLaVA's `eval_pope.py` scores them.

Questions: POPE's files, one JSON object per line `{"question_id", "image", "text", "label": "yes"|"no"}`
(`coco_pope_random.json`, `coco_pope_popular.json`, `coco_pope_adversarial.json`), either one file (the split is
each line's `category` where given, else the file name's part after `pope_`) or a folder holding such files
(question ids are then prefixed with the split, since each split numbers its questions from 1).

Reading an answer (the original's rule): keep the text before its first ".", delete the commas, split on
single spaces; the answer is "no" when one of the pieces is exactly "No", "no" or "not", else "yes" (so "Nope",
"NO" or an empty answer read as "yes"). Per split: accuracy, precision, recall and F1 of "yes" as the positive
class, and the yes-ratio; the headline is the mean F1 over the splits (what LLaVA-1.5 reports), in percent.
Answers are matched to labels by question id (the original pairs them by file order).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vistune.eval.benchmark import SHORT_ANSWER, Benchmark, BenchmarkOptions, Scored, ratio
from vistune.eval.report import Chart, Report, Table
from vistune.utils.jsonl import RecordError, iter_records

SPLIT_ORDER = ("random", "popular", "adversarial")


def reads_no(text: str) -> bool:
    """Whether an answer reads as "no" by the original rule."""
    first = text.split(".", 1)[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "No" in words or "no" in words or "not" in words


def split_metrics(pred_yes: np.ndarray, label_yes: np.ndarray) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio (percent) of 0/1 arrays; 0 where a ratio is undefined."""
    tp = int((pred_yes & label_yes).sum())
    fp = int((pred_yes & ~label_yes).sum())
    tn = int((~pred_yes & ~label_yes).sum())
    fn = int((~pred_yes & label_yes).sum())
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": 100 * ratio(tp + tn, tp + tn + fp + fn), "precision": 100 * precision,
            "recall": 100 * recall, "f1": 100 * ratio(2 * precision * recall, precision + recall),
            "yes_ratio": 100 * ratio(int(pred_yes.sum()), len(pred_yes)), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "n": len(pred_yes)}


def mean_f1(a: np.ndarray) -> np.ndarray:
    """(B, n, 3) units [pred_yes, label_yes, split] -> (B,) mean F1 over the splits, percent (2TP / (2TP+FP+FN))."""
    pred, label, split = a[..., 0], a[..., 1], a[..., 2]
    f1s = []
    for s in np.unique(split):
        m = split == s
        tp = (pred * label * m).sum(-1)
        fp = (pred * (1 - label) * m).sum(-1)
        fn = ((1 - pred) * label * m).sum(-1)
        den = 2 * tp + fp + fn
        f1s.append(np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0))
    return 100 * np.mean(f1s, axis=0)


class Pope(Benchmark):
    name = "pope"
    title = "POPE (object hallucination)"
    max_new_tokens = 16

    def load(self, o: BenchmarkOptions) -> list[dict]:
        path = Path(o.questions)
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
        if not files:
            raise RecordError(f"{path}: no .json/.jsonl question files")
        questions, seen = [], set()
        for f in files:
            m = re.search(r"pope_([A-Za-z]+)", f.stem)
            for n, r in iter_records(f):
                missing = [k for k in ("question_id", "image", "text", "label") if k not in r]
                if missing:
                    raise RecordError(f"{f}:{n}: missing {', '.join(missing)}")
                if str(r["label"]).lower() not in ("yes", "no"):
                    raise RecordError(f"{f}:{n}: label must be yes or no, got {r['label']!r}")
                split = str(r.get("category") or (m.group(1) if m else "all"))
                qid = f"{split}/{r['question_id']}" if path.is_dir() else str(r["question_id"])
                if qid in seen:
                    raise RecordError(f"{f}:{n}: duplicate question_id {r['question_id']!r}")
                seen.add(qid)
                questions.append({"question_id": qid, "image": r["image"], "text": f"{r['text']}\n{SHORT_ANSWER}",
                                  "label": str(r["label"]).lower(), "split": split,
                                  **({} if path.is_dir() else {"original_id": r["question_id"]})})
        return questions

    def score(self, questions, answers, o) -> Scored:
        splits = [s for s in SPLIT_ORDER if any(q["split"] == s for q in questions)]
        splits += sorted({q["split"] for q in questions} - set(splits))
        label = np.array([q["label"] == "yes" for q in questions], dtype=bool)
        # an unanswered question counts as wrong: the opposite of its label
        pred = np.array([not reads_no(answers[q["question_id"]]) if q["question_id"] in answers else not lab
                         for q, lab in zip(questions, label)], dtype=bool)
        split = np.array([splits.index(q["split"]) for q in questions])
        per = {s: split_metrics(pred[split == i], label[split == i]) for i, s in enumerate(splits)}
        units = np.stack([pred, label, split], axis=1).astype(float)
        headline = float(mean_f1(units[None])[0])
        figures = {"f1_mean": headline, "by_split": per}
        cols = ["accuracy", "precision", "recall", "f1", "yes_ratio"]
        rows = [[s] + [per[s][c] for c in cols] + [per[s]["n"]] for s in splits]
        rows.append(["**mean over splits**"] + [float(np.mean([per[s][c] for s in splits])) for c in cols]
                    + [len(questions)])
        warnings = [f"{s}: yes-ratio {per[s]['yes_ratio']:.1f} % (the labels are half yes): the model leans to "
                    f"{'yes' if per[s]['yes_ratio'] > 50 else 'no'}" for s in splits
                    if abs(per[s]["yes_ratio"] - 50) > 20]
        report = Report(
            title=self.title, data={},
            tables=[Table(["split", "accuracy", "precision", "recall", "F1", "yes-ratio", "n"], rows)],
            notes=["answers read as the original eval_pope.py reads them: the text before the first '.', commas "
                   "removed, split on spaces; 'No', 'no' or 'not' among the pieces -> no, anything else -> yes",
                   "precision, recall and F1 take yes as the positive class; yes-ratio = the share of yes answers",
                   "headline: the mean F1 over the splits (LLaVA-1.5 reports it); chance (always yes) gives "
                   "F1 66.7 on POPE's balanced labels"],
            warnings=warnings,
            chart=Chart(splits, {c: [per[s][c] for s in splits] for c in ("accuracy", "f1", "yes_ratio")},
                        title="POPE by split", ylabel="%"))
        return Scored(figures, report, "F1 (mean over splits)", units, mean_f1, strata=split)
