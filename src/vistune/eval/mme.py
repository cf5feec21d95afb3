"""`vistune eval mme`: MME's perception and cognition scores, as MME's own calculation computes them.

Questions: the released benchmark folder (`MME_Benchmark_release_version`), one folder per subtask. Each image
has a text file of its questions, one `question<TAB>answer` line each (two per image: one "Yes", one "No"): in
`SUBTASK/questions_answers_YN/NAME.txt` with the image in `SUBTASK/images/` (artwork, celebrity, landmark,
posters, scene), or beside the image in `SUBTASK/` (the others). Images are read from `--images` (default: the
same folder).

Reading an answer (MME's rule): lower-cased; exactly "yes" or "no", else "yes" among its first four characters
-> yes, else "no" among them -> no, else "other" (wrong). Per subtask: acc = the share of questions right,
acc+ = the share of images whose questions are all right, score = 100 x acc + 100 x acc+ (at most 200).
Perception = the sum over its ten subtasks (at most 2000), cognition over its four (at most 800); the headline
is perception where its subtasks are present, else cognition. `mme_results/SUBTASK.txt` are written in the
shape MME's calculation script reads (`image<TAB>question<TAB>gold<TAB>prediction`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from vistune.eval.benchmark import SHORT_ANSWER, Benchmark, Scored
from vistune.eval.report import Chart, Report, Table
from vistune.utils.io import atomic_write_text
from vistune.utils.jsonl import RecordError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def read_yes_no(answer: str) -> str:
    """"yes", "no" or "other" by MME's rule."""
    a = answer.lower()
    if a in ("yes", "no"):
        return a
    return "yes" if "yes" in a[:4] else "no" if "no" in a[:4] else "other"


def mme_statistic(subtasks: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """(B, n, 3) image units [subtask, right, asked] -> (B,) sum over `subtasks` of 100 acc + 100 acc+."""
    def stat(a: np.ndarray) -> np.ndarray:
        sub, right, asked = a[..., 0], a[..., 1], a[..., 2]
        total = np.zeros(a.shape[0])
        for s in subtasks:
            m = sub == s
            n_img = m.sum(-1)
            acc = (right * m).sum(-1) / np.maximum((asked * m).sum(-1), 1)
            plus = ((right == asked) * m).sum(-1) / np.maximum(n_img, 1)
            total += 100 * acc + 100 * plus
        return total
    return stat


class Mme(Benchmark):
    name = "mme"
    title = "MME"
    max_new_tokens = 16

    def image_folder(self, o) -> str:
        return o.images or o.questions

    def check(self, o) -> None:
        o.images = o.images or o.questions
        super().check(o)

    def load(self, o) -> list[dict]:
        root = Path(o.questions)
        if not root.is_dir():
            raise RecordError(f"{root}: expected MME's benchmark folder (one folder per subtask)")
        known = [s for s in PERCEPTION + COGNITION if (root / s).is_dir()]
        if not known:
            raise RecordError(f"{root}: none of MME's subtask folders ({', '.join(PERCEPTION + COGNITION)})")
        questions = []
        for sub in known:
            qa_dir = root / sub / "questions_answers_YN"
            img_dir = root / sub / "images" if qa_dir.is_dir() else root / sub
            qa_dir = qa_dir if qa_dir.is_dir() else root / sub
            for txt in sorted(qa_dir.glob("*.txt")):
                image = next((img_dir / (txt.stem + s) for s in IMAGE_SUFFIXES if (img_dir / (txt.stem + s)).exists()),
                             None)
                if image is None:
                    raise RecordError(f"{txt}: no image {txt.stem}.jpg/.png in {img_dir}")
                lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for k, line in enumerate(lines):
                    parts = line.split("\t")
                    if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                        raise RecordError(f"{txt}:{k + 1}: expected 'question<TAB>Yes|No'")
                    questions.append({"question_id": f"{sub}/{txt.stem}/{k}", "image": str(image.relative_to(root)),
                                      "text": f"{parts[0].strip()}\n{SHORT_ANSWER}", "question": parts[0],
                                      "answer": parts[1].strip(), "subtask": sub, "image_name": image.name,
                                      "group": f"{sub}/{image.name}"})
        return questions

    def score(self, questions, answers, o) -> Scored:
        subtasks = [s for s in PERCEPTION + COGNITION if any(q["subtask"] == s for q in questions)]
        images: dict[tuple, list[int]] = {}
        for q in questions:
            got = read_yes_no(answers[q["question_id"]]) if q["question_id"] in answers else "other"
            images.setdefault((q["subtask"], q["image"]), []).append(got == q["answer"].lower())
        units = np.array([[subtasks.index(s), sum(r), len(r)] for (s, _), r in images.items()], dtype=float)
        per = {}
        for i, s in enumerate(subtasks):
            u = units[units[:, 0] == i]
            acc, plus = 100 * u[:, 1].sum() / u[:, 2].sum(), 100 * float(np.mean(u[:, 1] == u[:, 2]))
            per[s] = {"acc": float(acc), "acc_plus": plus, "score": float(acc) + plus, "images": len(u)}
        groups = {"perception": [s for s in subtasks if s in PERCEPTION],
                  "cognition": [s for s in subtasks if s in COGNITION]}
        totals = {g: sum(per[s]["score"] for s in subs) for g, subs in groups.items() if subs}
        head = "perception" if groups["perception"] else "cognition"
        figures = {**totals, "by_subtask": per, "headline": head}
        rows = [[s, per[s]["acc"], per[s]["acc_plus"], per[s]["score"], per[s]["images"]] for s in subtasks]
        rows += [[f"**{g}**", None, None, t, None] for g, t in totals.items()]
        report = Report(
            title=self.title, data={},
            tables=[Table(["subtask", "acc", "acc+", "score (max 200)", "images"], rows)],
            notes=["answer read by MME's rule: lower-cased 'yes'/'no', else 'yes' or else 'no' within its first four "
                   "characters, else 'other' (wrong)",
                   "acc = questions right (%); acc+ = images with both questions right (%); score = acc + acc+",
                   "perception = the sum over existence, count, position, color, posters, celebrity, scene, "
                   "landmark, artwork and OCR (max 2000); cognition over commonsense_reasoning, "
                   "numerical_calculation, text_translation and code_reasoning (max 800)",
                   "chance (answering at random) is about 50 acc and 25 acc+ per subtask: 75 per subtask"],
            chart=Chart(subtasks, {"score": [per[s]["score"] for s in subtasks]}, title="MME score by subtask",
                        ylabel="score (max 200)", ylim=(0.0, 210.0)))
        stat = mme_statistic([subtasks.index(s) for s in groups[head]])
        return Scored(figures, report, f"{head} score", units, stat, strata=units[:, 0], unit="images")

    def write_extra(self, out, questions, answers, scored, o) -> dict[str, Path]:
        lines: dict[str, list[str]] = {}
        for q in questions:
            pred = " ".join(answers.get(q["question_id"], "").split())
            lines.setdefault(q["subtask"], []).append(
                "\t".join([q["image_name"], q["question"].strip(), q["answer"], pred]))
        paths = {}
        for sub, rows in lines.items():
            paths[f"mme_{sub}"] = out / "mme_results" / f"{sub}.txt"
            paths[f"mme_{sub}"].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(paths[f"mme_{sub}"], "\n".join(rows) + "\n")
        return paths
