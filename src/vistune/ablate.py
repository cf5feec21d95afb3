"""`vistune ablate`: the paper's ablations on the synthetic world, each against the full recipe (the demo's),
with the same steps and seeds, scored on the demo's held-out benchmark.

Every variant trains with the demo's recipes (`configs/demo/`); only what the ablation names changes. Seed k's
full recipe is the demo's seed k (`vistune demo --seeds`: OUT for seed 0, OUT/seeds/seed-k else), so a study and a
demo with the same OUT train it once. Shared between variants where identical: the worlds, the data and each
seed's stage 1 (full, no_instruction_tuning, conversation_only, answer_first and, for its feature statistics,
no_pretraining); one feature cache, OUT/feature-cache. Every step is a demo step (`vistune.demo.Demo.step`):
written atomically, skipped when done with the same params, a killed training resumed from its last checkpoint.

Writes `ablations.json`, `ablations.md` and `ablations.png` under OUT: per variant and seed the overall and
by-type accuracy; per variant the mean ± standard deviation over seeds, the difference to the full recipe
with a paired bootstrap 95 % interval over the same questions (per-question correctness averaged over seeds),
and whether the paper's sign (every ablation lowers accuracy) is reproduced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vistune.config import to_dict
from vistune.data.world import QUESTION_TYPES
from vistune.demo import FULL, QUICK, STAGE2_MIX, Demo, seed_demo, stage1_engine, train_stage
from vistune.errors import UserError
from vistune.eval.report import Chart, Report, Table, bootstrap_ci, mean_std, write_report
from vistune.eval.scoring import is_correct
from vistune.utils.io import read_json_or_jsonl


class AblationError(UserError, ValueError):
    """An ablation study that cannot run as asked (unknown name, seeds below 1)."""


@dataclass(frozen=True)
class Ablation:
    """One of the paper's ablations and what the paper measured for it."""

    meaning: str
    """What changes against the full recipe."""
    paper: str
    """The paper's figure for it."""


ABLATIONS: dict[str, Ablation] = {
    "no_instruction_tuning": Ablation(
        "stage 1 only: the stage-1 checkpoint (projector trained, LLM untouched), asked like the full model",
        "LLaVA-Bench (COCO) 85.1 -> 21.5 overall (-63.6)"),
    "no_pretraining": Ablation(
        "no stage 1: stage 2 starts from an untrained projector (freshly initialised linear layer; only the "
        "per-channel feature statistics, which nothing trains, are kept from stage 1)",
        "ScienceQA 90.92 -> 85.81 (-5.11)"),
    "last_layer": Ablation(
        "the tower's last layer (model.vision_layer=-1) instead of the chosen earlier layer (-4), in both stages",
        "ScienceQA 90.92 -> 89.96 (-0.96)"),
    "conversation_only": Ablation(
        "stage-2 data: conversations only, without the detailed descriptions and reasoning answers",
        "LLaVA-Bench (COCO) 85.1 -> 73.8 overall (-11.3)"),
    "answer_first": Ablation(
        "stage-2 reasoning answers written answer first (conclusion, then the steps) instead of reasoning "
        "first; the same questions and facts",
        "ScienceQA 90.92 -> 89.77 (-1.15)"),
}
"""The ablations, in the order they run."""
FULL_MEANING = "the full recipe: the demo's stage 1 and stage 2 (conversation + detail + complex reasoning data)"
NOTES = [
    "answer_first: the benchmark asks short-answer questions only (colour, shape, count, existence, positions); "
    "the reasoning answers are a fiftieth of the stage-2 data, so this measures what their order does to the "
    "short answers, not reasoning accuracy itself (the synthetic world has no scored reasoning benchmark)",
    "conversation_only vs the full data is the paper's Table 4 pair 'Conv only' vs 'Full data'; the paper also "
    "reports 'Detail + Complex' (not run here: the benchmark's questions are the conversations' kind)",
    "no_pretraining keeps the feature statistics of `model.feature_norm: channel` (measured, not trained) so "
    "that the architecture stays the same; everything the projector learns starts from scratch",
    "sign reproduced: 'yes' when the difference to full and its whole 95 % interval are below zero, 'same sign, "
    "not significant' when the difference is below zero but the interval reaches zero, else 'no'",
    "every variant reads the frozen tower's features from one feature cache under OUT (keyed by image and tower "
    "settings, so last_layer's features are its own)",
]


def check_request(seeds: int, only: Sequence[str] | None) -> list[str]:
    """The ablations to run; AblationError for seeds below 1 or a name that is not an ablation."""
    if seeds < 1:
        raise AblationError(f"--seeds must be at least 1, got {seeds}")
    unknown = [n for n in only or () if n not in ABLATIONS]
    if unknown:
        raise AblationError(f"unknown ablation {', '.join(map(repr, unknown))}; choose from "
                            f"{', '.join(ABLATIONS)}")
    return [n for n in ABLATIONS if not only or n in only]


def paired_difference(full: np.ndarray, ablated: np.ndarray, resamples: int = 2000, seed: int = 0
                      ) -> tuple[float, tuple[float, float] | None]:
    """Accuracy of `ablated` minus `full` in points, and its paired bootstrap 95 % interval over questions.

    full, ablated: (seeds, questions) correctness (0/1), the same questions in the same order; each question's
    correctness is averaged over seeds, then questions are resampled with replacement."""
    full, ablated = np.atleast_2d(np.asarray(full, float)), np.atleast_2d(np.asarray(ablated, float))
    if full.shape != ablated.shape:
        raise ValueError(f"paired scores need the same shape, got {full.shape} and {ablated.shape}")
    d = 100.0 * (ablated - full).mean(0)  # (Q,) per-question difference in points
    ci = bootstrap_ci(d.size, lambda idx: d[idx].mean(1), resamples=resamples, seed=seed)
    return float(d.mean()), ci


def sign_reproduced(diff: float, ci: tuple[float, float] | None) -> str:
    """The paper's sign is 'lower': see NOTES."""
    if diff < 0 and ci is not None and ci[1] < 0:
        return "yes"
    if diff < 0:
        return "same sign, not significant"
    return "no"


class Study:
    """The ablation study under `out`. Seed k's full recipe is the demo's seed k (`vistune.demo.seed_demo`: `out`
    itself for seed 0, `out/seeds/seed-k` else), so a study and `vistune demo [--seeds N]` with the same `--out`
    share the worlds, the data, both stages of the full recipe and the feature cache."""

    def __init__(self, out: str | Path, seeds: int, names: list[str], quick: bool, force: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.out = Path(out)
        self.seeds = seeds
        self.names = names
        self.plan = QUICK if quick else FULL
        self.force = force
        self.progress = progress
        self.log = log

    def demo(self, k: int) -> Demo:
        return seed_demo(self.out, self.plan, k, force=self.force, progress=self.progress, log=self.log)

    # ---------------------------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.time()
        evals: dict[str, dict[int, dict]] = {}
        for k in range(self.seeds):
            for variant, result in self._seed(k).items():
                evals.setdefault(variant, {})[k] = result
        summary = summarise(evals, self.demo(0).bench(), self.plan.name)
        write_report(ablation_report(summary), self.out, json_name="ablations.json", md_name="ablations.md",
                     png_name="ablations.png")
        self.log(format_summary(summary))
        self.log(f"ablations finished in {(time.time() - start) / 60:.1f} min; report: {self.out / 'ablations.md'}")
        return summary

    def _seed(self, k: int) -> dict[str, dict]:
        """Train and evaluate every variant for seed k; {variant: evaluation result}."""
        demo, runs = self.demo(k), self.out / "runs" / f"seed{k}"
        full = demo.train()  # the demo's seed k: its worlds, data and both stages
        data = {"full": {"world": full.world, "mix": STAGE2_MIX}}
        for variant, (mix, answer_first) in DATA_VARIANTS.items():
            if variant in self.names:
                params = {"world": full.world, "mix": mix, "answer_first": answer_first}
                demo.step(f"data-{variant}", lambda m=mix, v=variant, a=answer_first:
                          demo._stage2_data(m, _data_file(v), a), params)
                data[variant] = params
        results = {}

        def stage(name: str, n: int, changes: dict, params: dict) -> tuple[str, dict]:
            run = demo._run_config(n, changes)
            p = {**params, "run": to_dict(run)}
            result = demo.step(name, lambda: train_stage(run, progress=self.progress, redo=demo.redo), p)
            return result["model"], p

        def evaluate(variant: str, model_fn: Callable, params: dict) -> None:
            results[variant] = demo.step(f"ablate-{variant}-eval", lambda: self._evaluate(demo, variant, k, model_fn()),
                                         {"model": params, "bench_questions": demo.plan.bench_questions})

        def stage2(variant: str, init_from: str, init_params: dict, data_variant: str = "full",
                   extra: dict | None = None) -> tuple[str, dict]:
            changes = {"init_from": init_from, "output_dir": str(runs / variant),
                       "data.path": str(demo.data / _data_file(data_variant)), **(extra or {})}
            return stage(f"ablate-{variant}", 2, changes, {"start": init_params, "data": data[data_variant]})

        evaluate("full", lambda: full.stage2, full.stage2_params)
        if "no_instruction_tuning" in self.names:
            evaluate("no_instruction_tuning", lambda: stage1_engine(full.stage1, full.stage2),
                     {"stage1": full.stage1_params, "asked_as": full.stage2_params})
        if "no_pretraining" in self.names:
            start_dir = runs / "no_pretraining_start"
            seed2 = demo.plan.recipe(2)["train"]["seed"]
            startp = {"from": full.stage1_params, "reset_seed": seed2}
            demo.step("ablate-no_pretraining-start", lambda: untrained_projector(full.stage1, start_dir, seed2), startp)
            model, p = stage2("no_pretraining", str(start_dir), startp)
            evaluate("no_pretraining", lambda: model, p)
        if "last_layer" in self.names:
            last = {"model.vision_layer": -1}
            l1, l1p = stage("ablate-last_layer-stage1", 1, {**last, "output_dir": str(runs / "last_layer_stage1")},
                            full.world)
            model, p = stage2("last_layer", l1, l1p, extra=last)
            evaluate("last_layer", lambda: model, p)
        for variant in DATA_VARIANTS:
            if variant in self.names:
                model, p = stage2(variant, full.stage1, full.stage1_params, data_variant=variant)
                evaluate(variant, lambda m=model: m, p)
        return results

    def _evaluate(self, demo: Demo, variant: str, k: int, model) -> dict:
        """Score a model (a checkpoint path or an engine) on the bench; keeps each question's correctness."""
        from vistune.eval.shapes import evaluate
        from vistune.inference.engine import Engine

        engine = Engine.from_checkpoint(model) if isinstance(model, str) else model
        bench = demo.bench()
        out = self.out / "eval" / f"seed{k}" / variant
        report = evaluate(engine, bench, demo.world / "heldout" / "images", out, progress=self.progress)
        answers = {a["id"]: a["prediction"] for a in read_json_or_jsonl(out / "answers.jsonl")}
        return {"overall": report["overall"], "by_type": report["by_type"], "n": report["n"],
                "correct": [int(is_correct(answers.get(q["id"]), q["answer"])) for q in bench]}


DATA_VARIANTS = {"conversation_only": ({**STAGE2_MIX, "detail_complex_ratio": 0}, False),
                 "answer_first": (STAGE2_MIX, True)}
"""The ablations that change only the stage-2 data: (the mix, reasoning answers conclusion first)."""


def _data_file(variant: str) -> str:
    return "stage2.json" if variant == "full" else f"stage2_{variant}.json"


def untrained_projector(stage1: str | Path, out: str | Path, seed: int) -> dict:
    """A copy of the stage-1 checkpoint whose projector's linear layers are freshly initialised (seeded); its
    buffers (feature statistics, output scale) stay. The start of the no_pretraining ablation."""
    import torch

    from vistune.model.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(stage1)
    torch.manual_seed(seed)
    reset = 0
    for module in model.projector.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
            reset += 1
    save_checkpoint(model, out)
    return {"model": str(out), "linear_layers_reset": reset}


def summarise(evals: dict[str, dict[int, dict]], bench: list[dict], plan: str) -> dict:
    """ablations.json's content: per variant the seeds' scores, mean ± std, and (ablations) the paired
    difference to full with its interval and whether the paper's sign is reproduced."""
    full = np.array([evals["full"][k]["correct"] for k in sorted(evals["full"])])
    variants = {}
    for name, seeds in evals.items():
        ks = sorted(seeds)
        overall = mean_std([seeds[k]["overall"] for k in ks])
        types = [t for t in QUESTION_TYPES if t in seeds[ks[0]]["by_type"]]
        entry = {
            "meaning": FULL_MEANING if name == "full" else ABLATIONS[name].meaning,
            "seeds": {str(k): {"overall": seeds[k]["overall"], "by_type": seeds[k]["by_type"]} for k in ks},
            "overall": {"mean": overall[0], "std": overall[1]},
            "by_type": {t: dict(zip(("mean", "std"), mean_std([seeds[k]["by_type"][t] for k in ks]))) for t in types},
        }
        if name != "full":
            diff, ci = paired_difference(full[: len(ks)], np.array([seeds[k]["correct"] for k in ks]))
            entry.update({"difference_to_full": diff, "ci95": list(ci) if ci else None,
                          "paper": ABLATIONS[name].paper, "paper_sign": "lower",
                          "sign_reproduced": sign_reproduced(diff, ci)})
        variants[name] = entry
    return {"plan": plan, "seeds": len(evals["full"]), "questions": len(bench), "variants": variants,
            "notes": NOTES}


def ablation_report(summary: dict) -> Report:
    variants = summary["variants"]
    names = list(variants)
    types = list(variants["full"]["by_type"])

    def ms(d: dict) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}"

    main = Table(["variant", "overall (mean ± std)", "difference to full", "95 % interval", "paper", "sign reproduced"],
                 [[n, ms(v["overall"]), v.get("difference_to_full"),
                   "–" if not v.get("ci95") else f"[{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]",
                   v.get("paper", "–"), v.get("sign_reproduced", "–")] for n, v in variants.items()],
                 caption=f"{summary['seeds']} seed(s), {summary['questions']} held-out questions, "
                         f"plan '{summary['plan']}'.")
    by_type = Table(["type"] + names, [[t] + [ms(variants[n]["by_type"][t]) for n in names] for t in types],
                    caption="Accuracy (%) by question type, mean ± std over seeds.")
    per_seed = Table(["variant", "seed", "overall"] + types,
                     [[n, k, s["overall"]] + [s["by_type"][t] for t in types]
                      for n, v in variants.items() for k, s in v["seeds"].items()],
                     caption="Each run.")
    not_reproduced = [f"{n}: the paper's sign (lower than full) is not reproduced ({v['sign_reproduced']}; "
                      f"{v['difference_to_full']:+.1f} points)" for n, v in variants.items()
                      if v.get("sign_reproduced") not in (None, "yes")]
    means = [variants[n]["overall"]["mean"] for n in names]
    return Report(
        title="The paper's ablations on the synthetic world",
        data=summary,
        tables=[main, by_type, per_seed],
        notes=[f"`{n}`: {v['meaning']}" for n, v in variants.items()]
        + ["difference to full: accuracy of the variant minus that of full in points; its 95 % interval is a paired "
           "bootstrap over the same questions (each question's correctness averaged over seeds)"] + summary["notes"],
        warnings=not_reproduced,
        chart=Chart(names, {"overall": means}, title="overall accuracy, mean ± std over seeds",
                    ylabel="accuracy (%)",
                    intervals={"overall": [(m - variants[n]["overall"]["std"], m + variants[n]["overall"]["std"])
                                           for n, m in zip(names, means)]}),
    )


def format_summary(summary: dict) -> str:
    lines = [f"{'variant':<24}{'overall':>16}{'vs full':>10}  95 % interval      sign reproduced"]
    for n, v in summary["variants"].items():
        ci = v.get("ci95")
        lines.append(f"{n:<24}{v['overall']['mean']:>9.1f} ± {v['overall']['std']:<4.1f}"
                     + (f"{v['difference_to_full']:>+10.1f}  " + (f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "–")
                        + f"  {v['sign_reproduced']}" if "difference_to_full" in v else ""))
    return "\n".join(lines)


def run_ablations(out: str | Path = "runs/demo", seeds: int = 3, only: Sequence[str] | None = None,
                  quick: bool = False, force: bool = False, progress: bool = True) -> dict:
    """`vistune ablate`: the full recipe and each ablation in `only` (default: all of `ABLATIONS`) for `seeds`
    seeds under `out`; returns ablations.json's content. Finished steps are skipped unless `force`."""
    names = check_request(seeds, only)
    return Study(out, seeds, names, quick, force=force, progress=progress).run()
