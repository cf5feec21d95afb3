"""`vistune eval mmbench`: MMBench multiple choice with circular evaluation, from the TSV the benchmark ships.

Rows: `index, question, hint, A, B, C, D, answer, category, l2-category, image` (the image base64-encoded in the
row). A row has 2 to 4 options: they stop at the first empty one ("", "nan" or "none"). The prompt is LLaVA-1.5's:
the hint (where given) and the question, the options as `A. text` lines, then "Answer with the option's letter
from the given choices directly."

Circular evaluation: a question is asked once per rotation of its options (N options: N passes, option contents
shifted by one each time, the letters staying A, B, ...), and counts as right only when every pass picks the
right option. Rows whose `index` differ by multiples of 1,000,000 are one question's passes where the TSV ships
them itself; otherwise the rotations are made here. `single-pass` is the accuracy of the first pass alone.

Reading a letter (the rule): the one option letter that stands alone as a word once punctuation is removed
("B", "(B) cat", "The answer is B."; an "A" followed by a lower-case word is the article, not an option); else the one
option whose text appears in the answer; else none. With a judge (`--judge-base-url`), answers without a letter are
shown to it with the options and its letter is taken; otherwise they count as wrong.

Answers written elsewhere are read as LLaVA's MMBench answer files: `{"question_id": index, "round_id", "text"}`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from pathlib import Path

import numpy as np

from vistune.eval.benchmark import LETTER_ANSWER, Benchmark, Scored
from vistune.eval.controls import mean_statistic
from vistune.eval.report import Chart, Report, Table
from vistune.utils.jsonl import RecordError

LETTERS = ("A", "B", "C", "D")
CIRCULAR_STEP = 1_000_000
_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}\"'?]")


def is_empty(value) -> bool:
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def row_options(row: dict) -> list[str]:
    """The row's options in order, up to the first empty one."""
    options = []
    for letter in LETTERS:
        if is_empty(row.get(letter)):
            break
        options.append(str(row[letter]))
    return options


def parse_letter(answer: str, options: list[str]) -> str | None:
    """The option letter an answer picks by the rule (see the module docstring); None when it picks none."""
    letters = LETTERS[: len(options)]
    words = _SEPARATORS.sub(" ", answer).split()
    # "A" followed by a lower-case word is the article ("A dog is ..."), not option A
    found = {w for i, w in enumerate(words) if w in letters
             and not (w == "A" and i + 1 < len(words) and words[i + 1][:1].islower())}
    if len(found) == 1:
        return found.pop()
    text = answer.lower()
    named = [letters[i] for i, o in enumerate(options) if o.strip() and o.strip().lower() in text]
    return named[0] if len(named) == 1 else None


def prompt(row: dict, options: list[str]) -> str:
    question = str(row["question"]).strip()
    if not is_empty(row.get("hint")):
        question = f"{str(row['hint']).strip()}\n{question}"
    lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines + [LETTER_ANSWER])


def read_tsv(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, r in enumerate(rows, 2):
        missing = [k for k in ("index", "question", "A", "B", "answer") if k not in r]
        if missing:
            raise RecordError(f"{path}: no column(s) {', '.join(missing)}")
        if not str(r["index"]).strip().lstrip("-").isdigit():
            raise RecordError(f"{path}:{n}: index {r['index']!r} is not an integer")
    return rows


class MMBench(Benchmark):
    name = "mmbench"
    title = "MMBench (circular evaluation)"
    max_new_tokens = 16
    needs_images = False

    def answer_key(self, record: dict) -> str:
        qid = str(record["question_id"])
        if "round_id" in record:
            return f"{qid}-{record['round_id']}"
        return f"{qid}-0" if qid.lstrip("-").isdigit() else qid

    def load(self, o) -> list[dict]:
        path = Path(o.questions)
        rows = read_tsv(path)
        image_dir = (Path(o.out) / "images").resolve()
        image_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[int, list[dict]] = {}
        for r in rows:
            groups.setdefault(int(r["index"]) % CIRCULAR_STEP, []).append(r)
        questions = []
        for g, members in groups.items():
            members.sort(key=lambda r: int(r["index"]))
            base = members[0]
            options = row_options(base)
            if not 2 <= len(options) <= 4:
                raise RecordError(f"{path}: question {base['index']} has {len(options)} options (2 to 4 expected)")
            if base["answer"].strip() not in LETTERS[: len(options)]:
                raise RecordError(f"{path}: question {base['index']}: answer {base['answer']!r} is not an option")
            image = self._image(base, image_dir, path)
            if len(members) > 1:  # the TSV ships the passes itself
                passes = [(row_options(m), m["answer"].strip(), m) for m in members]
            else:
                gold = LETTERS.index(base["answer"].strip())
                n = len(options)
                passes = [(options[r:] + options[:r], LETTERS[(gold - r) % n], base) for r in range(n)]
            for r, (opts, answer, row) in enumerate(passes):
                questions.append({"question_id": f"{base['index']}-{r}", "group": str(g), "round": r,
                                  "image": image, "text": prompt(row, opts), "options": opts, "answer": answer,
                                  "category": base.get("category") or "", "l2": base.get("l2-category") or "",
                                  "question": str(row["question"]).strip()})
        return questions

    @staticmethod
    def _image(row: dict, image_dir: Path, path: Path) -> str | None:
        data = row.get("image")
        if is_empty(data):
            return None
        target = image_dir / f"{row['index']}.img"
        if not target.exists():
            try:
                raw = base64.b64decode(str(data), validate=False)
            except (binascii.Error, ValueError):
                raise RecordError(f"{path}: question {row['index']}: the image is not base64") from None
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(raw)
            tmp.replace(target)
        return str(target)

    def image_folder(self, o) -> str:
        return ""

    def letters(self, questions, answers, o) -> dict[str, str | None]:
        """question_id -> the letter each answer picks (the rule, then the judge where configured)."""
        picked = {q["question_id"]: parse_letter(answers[q["question_id"]], q["options"])
                  for q in questions if q["question_id"] in answers}
        unread = [q for q in questions if q["question_id"] in answers and picked[q["question_id"]] is None]
        if unread and o.judge is not None:
            picked.update(self._judge(unread, answers, o))
        return picked

    def _judge(self, unread, answers, o) -> dict[str, str | None]:
        from vistune.eval.judge import JudgeJob, load_prompt, run_judge
        from vistune.utils.jsonl import iter_records

        prompts = load_prompt("mmbench_choice")
        jobs = []
        for q in unread:
            fields = {"question": q["question"], "answer": answers[q["question_id"]],
                      "options": "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(q["options"]))}
            # the answer text is part of the id: a control's different answer is asked about separately
            jid = f"{q['question_id']}:{answers[q['question_id']]}"
            jobs.append(JudgeJob(jid, [{"role": "system", "content": prompts["system"].strip()},
                                       {"role": "user", "content": prompts["match"].format(**fields)}],
                                 {"question_id": q["question_id"]}))
        path = Path(o.out) / "judge_letters.jsonl"

        def parse(text: str):
            t = text.strip().strip(".").strip()
            return t if t in LETTERS + ("Z",) else None

        run_judge(jobs, path, o.judge, parse, lambda job, text, parsed: {**job.record, "text": text,
                                                                         "letter": parsed}, desc="mmbench judge")
        wanted = {j.id: j.record["question_id"] for j in jobs}
        out = {}
        for _, r in iter_records(path):
            if r.get("id") in wanted and r.get("letter") in LETTERS:
                out[wanted[r["id"]]] = r["letter"]
        return out

    def score(self, questions, answers, o) -> Scored:
        picked = self.letters(questions, answers, o)
        groups: dict[str, list[dict]] = {}
        for q in questions:
            groups.setdefault(q["group"], []).append(q)
        right = {g: [picked.get(q["question_id"]) == q["answer"] for q in qs] for g, qs in groups.items()}
        circular = np.array([[all(r)] for r in right.values()], dtype=float)
        first = np.array([r[0] for r in right.values()], dtype=float)
        info = {g: qs[0] for g, qs in groups.items()}
        figures = {"circular": 100 * float(circular.mean()), "single_pass": 100 * float(first.mean()),
                   "questions": len(groups), "passes": len(questions),
                   "no_letter": sum(1 for q in questions if q["question_id"] in answers
                                    and picked.get(q["question_id"]) is None)}
        tables = [Table(["", "circular", "single pass", "questions"],
                        [["**overall**", figures["circular"], figures["single_pass"], len(groups)]])]
        for key, label in (("category", "category"), ("l2", "l2-category")):
            cats = sorted({info[g][key] for g in groups if info[g][key]})
            if not cats:
                continue
            acc = {c: 100 * float(np.mean([circular[i, 0] for i, g in enumerate(groups) if info[g][key] == c]))
                   for c in cats}
            figures[f"by_{key}"] = acc
            tables.append(Table([label, "circular", "questions"],
                                [[c, acc[c], sum(info[g][key] == c for g in groups)] for c in cats]))
        chance = 100 * float(np.mean([np.prod([1 / len(q["options"])] * len(qs)) for qs in groups.values()
                                      for q in qs[:1]]))
        warnings = ([f"{figures['no_letter']} of {len(questions)} answers name no option letter; they count as wrong"
                     + ("" if o.judge else " (a judge, --judge-base-url, can read them)")]
                    if figures["no_letter"] else [])
        cats = figures.get("by_l2", figures.get("by_category", {}))
        report = Report(
            title=self.title, data={}, tables=tables, warnings=warnings,
            notes=["circular: a question counts only when every rotation of its options is answered right; "
                   "single pass: the first pass alone",
                   "a letter is read by rule (a lone option letter, else the one option whose text the answer "
                   "contains)" + (f"; answers without one were read by the judge {o.judge.model}" if o.judge else ""),
                   f"chance under circular evaluation (guessing every pass) is {chance:.1f} %"],
            chart=Chart(list(cats) + ["overall"], {"circular": list(cats.values()) + [figures["circular"]]},
                        title=f"MMBench circular accuracy ({len(groups)} questions)", ylabel="accuracy (%)"))
        return Scored(figures, report, "circular accuracy", circular, mean_statistic())
