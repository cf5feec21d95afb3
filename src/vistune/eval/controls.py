"""Image-reliance controls for every evaluation: the same questions asked again without the right image.

- `shuffled`: each question is asked about another image of the same set, by a fixed derangement of the set's
  images (`derangement`: sorted names, shuffled by the seed unless it is 0, each mapped to the next one, so no
  image keeps its place and the same seed gives the same pairs);
- `blank`: a blank image of the tower's input size, filled with the processor's mean colour (what the model
  sees of padding);
- `noimage`: the text prompt alone, no image at all.

A question without an image is asked the same way under every control, so its answer is the real one.

`compare` puts each control's score beside the real one with the paired difference and a bootstrap 95 %
interval over the same units (questions, or images where a score pairs questions), and `reliance_sentence`
says in one sentence how much of the score needs the image. `add_to_report` adds both to a `Report`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from vistune.errors import UserError
from vistune.eval.report import Report, Table

CONTROLS = ("shuffled", "blank", "noimage")
"""The controls, in report order."""
MEANING = {
    "shuffled": "each question asked about another image of the same set (a fixed derangement by seed)",
    "blank": "each question asked about a blank image of the tower's size in the processor's mean colour",
    "noimage": "each question asked with the text prompt only (no image)",
}
"""What each control means, for reports."""
BLANK_FILE = "blank.png"
"""The blank image, written once under the evaluation's output directory."""


class ControlsError(UserError, ValueError):
    """Controls that cannot be run as asked."""


def parse_controls(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """"shuffled,blank" -> ("shuffled", "blank") in report order; None or "" -> (); an unknown name is refused."""
    if not text:
        return ()
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in CONTROLS]
    if unknown:
        raise ControlsError(f"unknown control(s) {', '.join(unknown)}: expected some of {', '.join(CONTROLS)}")
    return tuple(c for c in CONTROLS if c in names)


def derangement(items: Iterable[str], seed: int = 0) -> dict[str, str]:
    """Each distinct item -> another one of the set: the sorted items (shuffled by `seed` unless it is 0), each
    mapped to the next, the last to the first. Seed 0 maps each item to the next one in sorted order."""
    order = sorted(set(items))
    if len(order) < 2:
        raise ControlsError("the shuffled control needs questions about at least two images")
    if seed:
        random.Random(seed).shuffle(order)
    return {im: order[(i + 1) % len(order)] for i, im in enumerate(order)}


def blank_image(processor) -> Image.Image:
    """A crop_size x crop_size RGB image in the processor's mean colour (the colour it pads with)."""
    c = processor.config
    return Image.new("RGB", (c.crop_size, c.crop_size), tuple(int(m * 255) for m in c.mean))


def write_blank(processor, out_dir: str | Path) -> Path:
    """`blank_image` saved as `out_dir/blank.png` (lossless); returns its absolute path."""
    from vistune.utils.io import atomic_path

    path = (Path(out_dir) / BLANK_FILE).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        blank_image(processor).save(tmp, format="PNG")
    return path


def controlled_questions(questions: Sequence[dict], control: str, seed: int = 0, blank: str | Path | None = None,
                         image_key: str = "image") -> list[dict]:
    """The questions that have an image, as asked under `control` (copies; questions without an image are left
    out: their answers are the real ones). `blank`: the blank image's absolute path (for "blank")."""
    asked = [q for q in questions if q.get(image_key)]
    if control == "shuffled":
        other = derangement((q[image_key] for q in asked), seed)
        return [{**q, image_key: other[q[image_key]]} for q in asked]
    if control == "blank":
        if blank is None:
            raise ValueError("the blank control needs the blank image's path")
        return [{**q, image_key: str(blank)} for q in asked]
    if control == "noimage":
        return [{k: v for k, v in q.items() if k != image_key} for q in asked]
    raise ControlsError(f"unknown control {control!r}")


def answer_with_controls(answering, model: str, questions: Sequence[dict], image_folder: str | Path | None,
                         out: str | Path, controls: Sequence[str], seed: int = 0, real_name: str = "answers.jsonl"
                         ) -> dict[str | None, tuple[Path, object]]:
    """Load `model` once and answer `questions` (`vistune infer`'s shape) into `out/real_name`, then each control
    into `out/answers-CONTROL.jsonl`, resumably. Returns {None or control: (answers file, InferSummary)}; a control
    file holds only the questions with an image (see `fill_text_only`)."""
    engine = answering.load(model)
    model_id = Path(model).resolve().name
    out = Path(out)
    done = {None: (out / real_name, answering.answer_with(engine, model_id, questions, image_folder,
                                                          out / real_name)[None])}
    blank = write_blank(engine.model.image_processor, out) if "blank" in controls else None
    for c in controls:
        path = out / f"answers-{c}.jsonl"
        asked = controlled_questions(questions, c, seed, blank)
        done[c] = (path, answering.answer_with(engine, model_id, asked, image_folder, path)[None])
    return done


def fill_text_only(questions: Sequence[dict], real: Mapping[str, str], control: Mapping[str, str],
                   image_key: str = "image") -> dict[str, str]:
    """A control's answers (by question id as text) with the real answers of the questions without an image (asked
    alike under every control)."""
    same = {str(q["question_id"]): real[str(q["question_id"])] for q in questions
            if not q.get(image_key) and str(q["question_id"]) in real}
    return {**same, **control}


# ----------------------------------------------------------------------------- the comparison


def resample(n: int, resamples: int, rng: np.random.Generator, strata: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap index arrays (resamples, n): units drawn with replacement (within each stratum when given)."""
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    parts = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def mean_statistic(column: int = 0, scale: float = 100.0) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic for `compare`: `scale` x the mean of one per-unit column ((B, n, k) -> (B,))."""
    return lambda a: scale * a[..., column].mean(-1)


def compare(real: np.ndarray, controls: Mapping[str, np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
            strata: np.ndarray | None = None, resamples: int = 2000, seed: int = 0) -> dict:
    """Each control's score beside the real one, paired over the same units.

    `real` and each control: (n, k) per-unit figures aligned by unit; `statistic` maps (B, n, k) to B scores (the
    benchmark's headline figure from those units). Returns {"real": score, "n": units, "controls": {name:
    {"score", "difference" (real - control), "difference_ci95" [low, high] or None}}}: the interval is a
    percentile bootstrap of the difference, resampling units (within `strata` where given) for both at once.
    """
    real = np.asarray(real, dtype=float)
    n = len(real)
    out: dict = {"real": float(statistic(real[None])[0]), "n": n, "controls": {}}
    rng = np.random.default_rng(seed)
    idx = resample(n, resamples, rng, strata) if n >= 2 else None
    for name, values in controls.items():
        values = np.asarray(values, dtype=float)
        if values.shape != real.shape:
            raise ValueError(f"control {name}: {values.shape} figures against {real.shape} real ones")
        score = float(statistic(values[None])[0])
        ci = None
        if idx is not None:
            diffs = np.concatenate([statistic(real[idx[i:i + 250]]) - statistic(values[idx[i:i + 250]])
                                    for i in range(0, len(idx), 250)])
            diffs = diffs[np.isfinite(diffs)]
            if diffs.size:
                ci = [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]
        out["controls"][name] = {"score": score, "difference": out["real"] - score, "difference_ci95": ci}
    return out


def reliance_sentence(comparison: dict, metric: str = "score") -> str:
    """One sentence: the real score, each control's, and how much of the score needs the image."""
    real, ctrl = comparison["real"], comparison["controls"]
    if not ctrl:
        return ""
    words = {"shuffled": "with another image", "blank": "with a blank image", "noimage": "with no image"}
    parts = ", ".join(f"{c['score']:.1f} {words.get(name, name)}" for name, c in ctrl.items())
    best_name, best = max(ctrl.items(), key=lambda kv: kv[1]["score"])
    gap = real - best["score"]
    ci = best["difference_ci95"]
    sure = (f"; 95 % interval of the difference {ci[0]:+.1f} to {ci[1]:+.1f}"
            + (", above 0" if ci[0] > 0 else ", which includes 0: no clear evidence that it uses the image")
            ) if ci else ""
    if gap <= 0:
        need = "none of it needs the right image"
    elif real > 0:
        need = f"{gap:.1f} points of it ({100 * gap / real:.0f} %) need the right image"
    else:
        need = f"{gap:.1f} points of it need the right image"
    return f"The model's {metric} is {real:.1f} with the image and {parts}: {need} (best control: {best_name}{sure})."


def controls_table(comparison: dict, metric: str = "score") -> Table:
    """Real and control scores with the paired differences and their intervals."""
    rows = [["real (its own image)", comparison["real"], None, None]]
    for name, c in comparison["controls"].items():
        ci = c["difference_ci95"]
        rows.append([name, c["score"], c["difference"], f"{ci[0]:+.1f} to {ci[1]:+.1f}" if ci else None])
    return Table(["answered with", metric, "real - control", "95 % CI of the difference"], rows,
                 caption=f"Image-reliance controls ({comparison['n']} paired units).")


def add_to_report(report: Report, comparison: dict | None, metric: str = "score", unit: str = "questions") -> None:
    """Add the controls' table, the sentence (first note and first warning when a control is not below the real
    score) and `data["controls"]` to a report; nothing when `comparison` is None or has no control."""
    if not comparison or not comparison["controls"]:
        return
    report.data["controls"] = comparison
    report.tables.append(controls_table(comparison, metric))
    sentence = reliance_sentence(comparison, metric)
    report.notes.insert(0, sentence)
    report.notes += [f"control `{n}`: {MEANING[n]}" for n in comparison["controls"] if n in MEANING]
    report.notes.append(f"real - control: the paired difference over the same {unit}; its 95 % interval is a "
                        f"percentile bootstrap over {unit} (2000 resamples)")
    lost = [n for n, c in comparison["controls"].items() if c["difference"] <= 0]
    if lost:
        report.warnings.insert(0, f"the real {metric} is not above control(s) {', '.join(lost)} (see the controls "
                                  "table): the score does not show that the model uses the image")
