"""`vistune eval vqa --format textvqa|vqav2|vizwiz`: open short answers scored by VQA accuracy.

Normalisation (the official evaluators' answer processor, as LLaVA's `m4c_evaluator.py` applies it to the
prediction and to every human answer alike), in order:

1. lower-case; delete "," and "?"; write "'s" as " 's"; newlines and tabs become spaces;
2. each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted where the original text has it next to a space
   (or has a comma between digits), else replaced by a space; then periods not followed by a digit are deleted
   (at most 32 of them: the original passes a flag where the count goes);
3. split on whitespace; number words none/zero..ten become digits; the articles a/an/the are dropped;
   apostrophe-less contractions get their apostrophes ("dont" -> "don't", "youll" -> "you'll").

Accuracy of a prediction against n human answers: for each human i, min(#other humans whose answer equals the
prediction / 3, 1), averaged over the n leave-one-out subsets; the benchmark's figure is the mean over questions,
in percent. VizWiz counts "unanswerable" as an answer like any other.

Questions: `textvqa` reads TextVQA's JSON (`{"data": [{"question_id", "image_id", "question", "answers",
"ocr_tokens"}]}`, images `IMAGE_ID.jpg`; `--ocr` adds the reference OCR tokens to the prompt as LLaVA-1.5 does);
`vqav2` reads the questions JSON (`{"data_subtype", "questions": [...]}`, images
`COCO_<subtype>_<image_id:012d>.jpg`) with `--annotations` (answers; absent for test-dev); `vizwiz` reads VizWiz's
JSON list (`{"image", "question", "answers"?}`). Any format also reads JSONL `{"question_id", "image", "text",
"answers"?: [...]}`. Without answers nothing is scored; `vqav2` and `vizwiz` always write the file their
evaluation servers take (`submission.json`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vistune.eval.benchmark import load_json, SHORT_ANSWER, Benchmark, BenchmarkOptions, Scored
from vistune.eval.controls import mean_statistic
from vistune.eval.report import Chart, Report, Table
from vistune.utils.io import atomic_write_json
from vistune.utils.jsonl import RecordError, iter_records

FORMATS = ("textvqa", "vqav2", "vizwiz")
UNANSWERABLE_HINT = "When the provided information is insufficient, respond with 'Unanswerable'."
"""LLaVA-1.5's extra instruction for VizWiz."""
OCR_PREFIX = "Reference OCR token: "

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
_WITH_APOSTROPHES = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll how's "
    "isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't should've "
    "shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd "
    "there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all "
    "you'd you'll you're you've couldn't've hadn't've he'd've it'd've mightn't've she'd've shouldn't've "
    "somebody'd've someone'd've something'd've there'd've they'd've we'd've who'd've wouldn't've you'd've "
    "y'all'll y'all'd've 'ow's'at").split()


def _contractions() -> dict[str, str]:
    """Apostrophe-less spelling -> the contraction: one apostrophe missing from a form with one or more (a form
    with one also matches with none)."""
    table = {}
    for form in _WITH_APOSTROPHES:
        spots = [i for i, ch in enumerate(form) if ch == "'"]
        for i in spots:
            table[form[:i] + form[i + 1:]] = form
    table["somebody'd"] = "somebodyd"  # the official table maps this one the other way
    return table


CONTRACTIONS = _contractions()


def normalize(answer: str) -> str:
    """The official VQA answer processing (see the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCTUATION:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or digit_comma) else " ")
    out = _PERIOD.sub("", out, count=32)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, humans: list[str]) -> float:
    """min(#other humans agreeing / 3, 1) averaged over the leave-one-out subsets, in [0, 1] (normalised both sides)."""
    if not humans:
        return 0.0
    pred = normalize(prediction)
    agree = sum(normalize(h) == pred for h in humans)
    n = len(humans)
    return (agree * min(1.0, (agree - 1) / 3) + (n - agree) * min(1.0, agree / 3)) / n


def _answer_texts(answers) -> list[str]:
    return [a["answer"] if isinstance(a, dict) else str(a) for a in answers or []]


class Vqa(Benchmark):
    name = "vqa"
    max_new_tokens = 16

    @property
    def title(self) -> str:  # type: ignore[override]
        return "VQA accuracy"

    def check(self, o: BenchmarkOptions) -> None:
        if o.format not in FORMATS:
            raise RecordError(f"--format must be one of {', '.join(FORMATS)}, got {o.format!r}")
        if o.ocr and o.format != "textvqa":
            raise RecordError("--ocr is TextVQA's prompt option (--format textvqa)")
        super().check(o)

    def _prompt(self, question: str, o: BenchmarkOptions, ocr_tokens=None) -> str:
        lines = [question.strip()]
        if o.ocr and ocr_tokens:
            lines.append(OCR_PREFIX + ", ".join(ocr_tokens))
        if o.format == "vizwiz":
            lines.append(UNANSWERABLE_HINT)
        return "\n".join(lines + [SHORT_ANSWER])

    def load(self, o: BenchmarkOptions) -> list[dict]:
        path = Path(o.questions)
        if path.suffix == ".jsonl":
            rows = []
            for n, r in iter_records(path):
                if not {"question_id", "image"} <= set(r) or not isinstance(r.get("text", r.get("question")), str):
                    raise RecordError(f"{path}:{n}: a question needs 'question_id', 'image' and 'text'")
                rows.append({"question_id": r["question_id"], "image": r["image"],
                             "question": r.get("text", r.get("question")), "answers": r.get("answers"),
                             "answer_type": r.get("answer_type"), "ocr_tokens": r.get("ocr_tokens")})
        else:
            rows = self._official(path, o)
        questions, seen = [], set()
        for r in rows:
            qid = str(r["question_id"])
            if qid in seen:
                raise RecordError(f"{path}: duplicate question_id {r['question_id']!r}")
            seen.add(qid)
            answers = _answer_texts(r.get("answers"))
            questions.append({"question_id": qid, "image": r["image"], "original_id": r["question_id"],
                              "text": self._prompt(r["question"], o, r.get("ocr_tokens")),
                              "answers": answers, "answer_type": r.get("answer_type")})
        return questions

    def _official(self, path: Path, o: BenchmarkOptions) -> list[dict]:
        data = load_json(path)
        if o.format == "textvqa":
            if not isinstance(data, dict) or "data" not in data:
                raise RecordError(f"{path}: expected TextVQA's {{'data': [...]}}")
            return [{"question_id": r["question_id"], "image": f"{r['image_id']}.jpg", "question": r["question"],
                     "answers": r.get("answers"), "ocr_tokens": r.get("ocr_tokens")} for r in data["data"]]
        if o.format == "vqav2":
            if not isinstance(data, dict) or "questions" not in data:
                raise RecordError(f"{path}: expected VQAv2's {{'questions': [...]}}")
            subtype = data.get("data_subtype", "")
            gold = {}
            if o.annotations:
                ann = load_json(o.annotations)
                gold = {a["question_id"]: a for a in ann.get("annotations", [])}
            return [{"question_id": r["question_id"], "image": f"COCO_{subtype}_{int(r['image_id']):012d}.jpg",
                     "question": r["question"], "answers": gold.get(r["question_id"], {}).get("answers"),
                     "answer_type": gold.get(r["question_id"], {}).get("answer_type")} for r in data["questions"]]
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected VizWiz's list of {{image, question, answers}}")
        return [{"question_id": r["image"], "image": r["image"], "question": r["question"], "answers": r.get("answers"),
                 "answer_type": r.get("answer_type")} for r in data]

    def score(self, questions, answers, o) -> Scored:
        scored = [q for q in questions if q["answers"]]
        acc = np.array([[vqa_accuracy(answers.get(q["question_id"], ""), q["answers"])] for q in scored])
        overall = 100 * float(acc.mean()) if len(scored) else None
        types = sorted({q["answer_type"] for q in scored if q.get("answer_type")})
        by_type = {t: 100 * float(np.mean([a[0] for a, q in zip(acc, scored) if q.get("answer_type") == t]))
                   for t in types}
        figures = {"format": o.format, "accuracy": overall, "by_answer_type": by_type, "scored": len(scored),
                   "unscored": len(questions) - len(scored), "ocr_prompt": o.ocr}
        rows = [[t, by_type[t], sum(q.get("answer_type") == t for q in scored)] for t in types]
        rows.append(["**overall**", overall, len(scored)])
        warnings = [] if scored else [
            "these questions carry no human answers (a test split): nothing is scored here; send "
            "submission.json to the benchmark's evaluation server" if o.format in ("vqav2", "vizwiz") else
            "these questions carry no human answers: nothing is scored"]
        report = Report(
            title=f"{o.format}: VQA accuracy", data={}, tables=[Table(["answer type", "VQA accuracy", "n"], rows)],
            notes=["VQA accuracy = min(#humans who gave the answer / 3, 1), averaged over the leave-one-out subsets "
                   "of the human answers, then over questions (percent)",
                   "answers and human answers normalised as the official evaluator does: punctuation, periods, "
                   "number words to digits, articles dropped, contractions restored"]
            + (["prompt with the reference OCR tokens (LLaVA-1.5's TextVQA setting)"] if o.ocr else []),
            warnings=warnings,
            chart=Chart(types + ["overall"], {"VQA accuracy": [by_type[t] for t in types] + [overall]},
                        title=f"{o.format} VQA accuracy (n={len(scored)})", ylabel="%") if scored else None)
        if not scored:
            return Scored(figures, report, "VQA accuracy")
        return Scored(figures, report, "VQA accuracy", acc, mean_statistic())

    def write_extra(self, out, questions, answers, scored, o) -> dict[str, Path]:
        if o.format == "vqav2":
            rows = [{"question_id": q["original_id"], "answer": normalize(answers[q["question_id"]])
                     if q["question_id"] in answers else ""} for q in questions]
        elif o.format == "vizwiz":
            rows = [{"image": q["image"], "answer": normalize(answers.get(q["question_id"], ""))} for q in questions]
        else:
            return {}
        atomic_write_json(out / "submission.json", rows, indent=None)
        return {"submission": out / "submission.json"}
