"""`vistune demo`: build a visual assistant from scratch offline, the paper's way, and show that it learned to see.

synth (train + held-out worlds) -> stage-1 caption data -> stage 1 (projector only) -> symbolic-teacher
instruction data -> stage 2 (projector + LLM) -> exact-answer benchmark with controls -> sample chats.

Every step writes its outputs atomically and then a marker under `OUT/steps/`; a re-run skips steps whose
marker matches the plan (`--force` redoes them). A killed training step resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from vistune.config import PRECISIONS, ConfigError, RunConfig, apply_overrides, from_dict, load_yaml
from vistune.conversation import IMAGE_PLACEHOLDER
from vistune.data.synth import BENCH_FILE, BENCH_IN_DISTRIBUTION_FILE, render_world
from vistune.data.world import SHORT_ANSWER_INSTRUCTION, with_instruction
from vistune.eval.report import Chart, Report, Table, mean_std
from vistune.eval.report import write_report as write_any_report
from vistune.eval.scoring import CONTROLS, count_is_right, names_every_object, variants_report
from vistune.utils.io import atomic_write_json, atomic_write_text, read_json_or_jsonl

#: The demo's training recipes: `stage1.yaml`, `stage2.yaml` and their `_quick` variants. They ship inside the
#: package (so an installed vistune finds them); `configs/demo` in a source checkout links to this folder.
DEMO_CONFIGS = Path(__file__).resolve().parent / "configs" / "demo"


STAGE1_DATA = "captions"
"""Stage-1 captions: `captions` (one of the world's captions per image) or `grounded` (each image's grounded
caption: how many shapes, then each with its region, `vistune.datagen.pretrain.grounded_caption`)."""
STAGE2_MIX = {"short_fraction": 0.9, "min_turns": 3, "max_turns": 6, "single_turn": True,
              "detail_complex_ratio": 0.02}
"""Stage-2 data, by its `style` (default `single_turn`). `single_turn` (with `short_fraction`, `min_turns`,
`max_turns`, `single_turn`, `detail_complex_ratio`): the symbolic teacher's conversations of mostly one-word
answers, cut into single-turn questions (each asked with its image) unless `single_turn` is false, plus that ratio
of detailed descriptions and reasoning answers. `balanced` (with `describe_fraction`,
`single_turn`): per image one conversation of short-answer questions, one per question type, answers balanced
over the training world (`balanced_short_conversations`), a `describe_fraction` of them opening with a
brief-description request answered by the grounded caption; with `single_turn: true` each question asked alone
with its image and the short-answer instruction (measured in docs/recipe.md)."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run and its training recipes."""

    name: str
    train_images: int
    """Images in the training world."""
    heldout_images: int
    """Images never seen in training; the benchmark asks about these."""
    bench_questions: int
    """Held-out questions scored per variant (balanced over question types)."""
    stage1: str
    """Stage-1 run config, a file name in `DEMO_CONFIGS` (its paths are replaced by the demo's)."""
    stage2: str
    """Stage-2 run config, a file name in `DEMO_CONFIGS`."""
    max_objects: int = 3
    """Objects per image: 1 to this."""
    chats: int = 8
    """Sample chats on held-out images, written to chats.md and scored there."""
    chats_shown: int = 3
    """How many of them the terminal prints."""
    precision: str | None = None
    """Replaces both recipes' `train.precision` (`bf16` or `auto`: bf16 autocast, faster where the CPU has
    native bf16, figures within its noise); None keeps the recipes' `fp32` (every CPU; the same figures up to its
    matmul kernels' rounding)."""
    seed: int = 0
    """Added to both recipes' `train.seed` (data order, initialisations): seed k of a several-seed report."""
    stage2_steps: int | None = None
    """Replaces the stage-2 recipe's `train.max_steps` and scales its `train.max_minutes` (the safety stop) alike;
    None keeps the recipe's steps."""
    stage1_data: str = STAGE1_DATA
    """Stage-1 captions (see `STAGE1_DATA`)."""
    stage2_mix: dict = field(default_factory=lambda: dict(STAGE2_MIX))
    """Stage-2 data mix (see `STAGE2_MIX`)."""
    changes: dict = field(default_factory=dict)
    """Recipe changes per stage, applied after the recipe file is read: {1: {"train.max_steps": 40}, 2: {...}}
    (dotted keys; `benchmarks/learning_curve.py` measures recipes this way)."""

    def recipe(self, stage: int) -> dict:
        """The stage's run config as a mapping, read from `DEMO_CONFIGS` (with `precision` and `seed` applied)."""
        path = DEMO_CONFIGS / (self.stage1 if stage == 1 else self.stage2)
        if not path.is_file():
            raise FileNotFoundError(f"the demo's recipe {path} is missing; reinstall vistune")
        recipe = load_yaml(path)
        train = recipe.setdefault("train", {})
        if self.precision is not None:
            train["precision"] = self.precision
        train["seed"] = train.get("seed", 0) + self.seed
        if self.changes.get(stage):
            apply_overrides(recipe, [f"{k}={json.dumps(v)}" for k, v in self.changes[stage].items()])
            train = recipe["train"]
        if stage == 2 and self.stage2_steps is not None:
            scale = self.stage2_steps / train["max_steps"]
            train["max_steps"] = self.stage2_steps
            if train.get("max_minutes") is not None:
                train["max_minutes"] = train["max_minutes"] * scale
        return recipe


FULL = DemoPlan(name="full", train_images=1500, heldout_images=240, bench_questions=420,
                stage1="stage1.yaml", stage2="stage2.yaml")
"""Sized for 2 CPU cores (the README quotes its measured time). Each recipe fixes its steps
(`train.max_steps`); its `train.max_minutes` is only a safety stop, and a run it stops is reported as
"stopped early: figures not comparable"."""
LONG = replace(FULL, name="long", stage2_steps=360)
"""`vistune demo --long`: the full plan with four times the stage-2 steps (360, the same recipe otherwise): about
46 minutes on 2 AVX-512 cores (2.2-2.6x that on an older AVX2-only CPU), past the demo's 20-minute goal, and past
the accuracy the 90 steps reach (README: 'A longer run')."""
QUICK = DemoPlan(name="quick", train_images=64, heldout_images=24, bench_questions=36, chats=2, chats_shown=1,
                 stage1="stage1_quick.yaml", stage2="stage2_quick.yaml")
"""A smoke run of every step; it checks the pipeline, not the accuracy targets."""

BENCH_LAYOUT = "heldout-wording+in-distribution"
"""The benchmark files the held-out world carries: `bench.jsonl` in held-out wording (the primary score) and
`bench_in_distribution.jsonl` with the same questions in the teacher's wording (variant `full_in_distribution`)."""
CHAT_PROMPTS = ("Describe the image briefly.", "How many shapes are in the image?")
TARGET_OVERALL = 25.0
"""The demo's target: `full` at least this many points above each control (shuffled_images, answer_prior) overall,"""
TARGET_BY_TYPE = 10.0
"""... and at least this many points above `shuffled_images` on every question type."""
STOPPED_EARLY = "stopped early: figures not comparable"


@dataclass(frozen=True)
class Trained:
    """A demo's trained recipe: both stages' models and the step params that identify them."""

    world: dict
    stage1_params: dict
    stage1: str
    """The stage-1 model (a checkpoint directory)."""
    stage2_params: dict
    stage2: str
    """The stage-2 model: the full recipe's assistant."""


class Demo:
    def __init__(self, out: str | Path, plan: DemoPlan, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, feature_cache: str | Path | None = None) -> None:
        self.out = Path(out)
        self.plan = plan
        self.force = force
        self.progress = progress
        self.log = log
        self.world = self.out / "world"
        self.data = self.out / "data"
        self.feature_cache = Path(feature_cache) if feature_cache is not None else self.out / "feature-cache"
        """The tower's features, both stages (keyed by image content and tower settings, so runs whose worlds
        are rendered alike, such as the seeds of `vistune demo --seeds`, can share one)."""
        self.redo = force

    # ---------------------------------------------------------------------------------------------
    # step bookkeeping

    def _marker(self, name: str) -> Path:
        return self.out / "steps" / f"{name}.json"

    def step(self, name: str, fn: Callable[[], dict | None], params: dict) -> dict:
        """Run `fn` unless a marker with the same params says it is done; returns the step's result."""
        marker = self._marker(name)
        self.redo = self.force  # a finished step run again starts over instead of resuming
        if marker.exists():
            done = json.loads(marker.read_text())
            if not self.force and done.get("params") == params:
                self.log(f"[skip] {name}: done earlier ({done['seconds']:.0f} s)")
                return done.get("result") or {}
            self.redo = True
            marker.unlink()
        self.log(f"[run ] {name}")
        start = time.time()
        result = fn() or {}
        seconds = time.time() - start
        atomic_write_json(marker, {"params": params, "result": result, "seconds": seconds})
        self.log(f"[done] {name} in {seconds:.0f} s")
        return result

    # ---------------------------------------------------------------------------------------------
    # the pipeline

    def prepare_world(self) -> dict:
        """The steps every run shares: both worlds and the stage-1 data; returns the world's params."""
        p = self.plan
        # Each step's params include those of the steps it depends on, so a changed step redoes what follows.
        world = {"train": p.train_images, "heldout": p.heldout_images, "max_objects": p.max_objects}
        self.step("synth_train", lambda: self._synth("train", p.train_images, seed=1), world)
        # the held-out world also carries the bench files, so a new bench layout re-renders it (only it)
        self.step("synth_heldout", lambda: self._synth("heldout", p.heldout_images, seed=2),
                  {**world, "bench": BENCH_LAYOUT})
        self.step("stage1_data", self._stage1_data,
                  world if p.stage1_data == STAGE1_DATA else {**world, "captions": p.stage1_data})
        return world

    def stage1_params(self, world: dict) -> dict:
        """What identifies a trained stage 1: the world, its captions (where not the default) and the recipe."""
        captions = {} if self.plan.stage1_data == STAGE1_DATA else {"captions": self.plan.stage1_data}
        return {"world": world, **captions, "recipe": self.plan.recipe(1)}

    def train(self) -> Trained:
        """The worlds, the data and both stages of the recipe (each skipped when done)."""
        p = self.plan
        world = self.prepare_world()
        s1 = self.stage1_params(world)
        stage1 = self.step("stage1", lambda: self._train(1), s1)
        self.step("stage2_data", lambda: self._stage2_data(p.stage2_mix), {"world": world, "mix": p.stage2_mix})
        s2 = {"stage1": s1, "mix": p.stage2_mix, "recipe": p.recipe(2)}
        stage2 = self.step("stage2", lambda: self._train(2), s2)
        return Trained(world, s1, stage1["model"], s2, stage2["model"])

    def run(self) -> dict:
        start = time.time()
        t = self.train()
        report = self.step("benchmark", lambda: self._benchmark(t.stage1, t.stage2),
                           {"bench_questions": self.plan.bench_questions, "stage2": t.stage2_params,
                            "bench": BENCH_LAYOUT})
        self._chats(t.stage2)
        self.log(format_table(report["variants"]))
        for line in summary_lines(report):
            self.log(line)
        total = time.time() - start
        self.log(f"demo finished in {total / 60:.1f} min; report: {self.out / 'report.json'}")
        return report

    def _synth(self, split: str, n: int, seed: int) -> dict:
        return render_world(self.world / split, n, seed=seed, min_objects=1, max_objects=self.plan.max_objects,
                            progress=self.progress)

    def _stage1_data(self) -> dict:
        from vistune.datagen.pretrain import make_pretrain_data

        if self.plan.stage1_data not in ("captions", "grounded"):
            raise ConfigError(f"stage-1 data {self.plan.stage1_data!r}: expected 'captions' or 'grounded'")
        train = self.world / "train"
        grounded = train / "instances.json" if self.plan.stage1_data == "grounded" else None
        make_pretrain_data(train / "captions.json", self.data / "stage1.json", seed=0, grounded_from=grounded)
        return {"records": len(read_json_or_jsonl(self.data / "stage1.json"))}

    def _stage2_data(self, mix: dict = STAGE2_MIX, name: str = "stage2.json", answer_first: bool = False) -> dict:
        """The stage-2 data (`mix`: see STAGE2_MIX) as `data/<name>`; `answer_first` writes the reasoning
        answers conclusion first."""
        from vistune.data.annotations import load_coco
        from vistune.datagen.symbolic import generate_symbolic

        train = self.world / "train"
        contexts, skips = load_coco(train / "captions.json", train / "instances.json")
        m = mix
        style = m.get("style", "single_turn")
        if style == "balanced":
            mix = balanced_with_descriptions(contexts, m["describe_fraction"])
            if m.get("single_turn", False):
                mix = [one for r in mix for one in single_turns(r, short_instruction=True)]
        elif style == "single_turn":
            mix = self._single_turn_mix(contexts, m, answer_first)
        else:
            raise ConfigError(f"stage-2 mix style {style!r}: expected 'balanced' or 'single_turn'")
        atomic_write_json(self.data / name, mix, indent=None)
        return {"records": len(mix), "skipped": dict(skips)}

    @staticmethod
    def _single_turn_mix(contexts: list, m: dict, answer_first: bool) -> list[dict]:
        from vistune.datagen.symbolic import generate_symbolic

        # Conversations of mostly short answers: many supervised answers per image (25 image tokens each).
        records = generate_symbolic(contexts, types=("conversation", "detail", "complex"), seed=0,
                                    short_fraction=m["short_fraction"], min_turns=m["min_turns"],
                                    max_turns=m["max_turns"], answer_first=answer_first)
        # Short exact answers are what the benchmark checks: weight conversations over long descriptions.
        conversations = [r for r in records if r["metadata"]["type"] == "conversation"]
        if m.get("single_turn", True):
            conversations = [one for r in conversations for one in single_turns(r)]
        others = [r for r in records if r["metadata"]["type"] != "conversation"]
        rng = random.Random(0)
        k = min(len(others), int(len(conversations) * m["detail_complex_ratio"]))
        mix = conversations + rng.sample(others, k=k)
        rng.shuffle(mix)
        return mix

    def _run_config(self, stage: int, changes: dict | None = None) -> RunConfig:
        """The stage's recipe with the demo's paths, then `changes` (dotted keys: values)."""
        data = self.plan.recipe(stage)
        paths = {
            "data.path": str(self.data / f"stage{stage}.json"),
            "data.image_folder": str(self.world / "train" / "images"),
            "output_dir": str(self.out / f"stage{stage}"),
            "train.feature_cache_dir": str(self.feature_cache),  # both stages read the tower once per image
        }
        if data.get("train", {}).get("projector_init_captions") is not None:
            # the ridge warm start reads all of an image's captions, stage 1 trains on one per image
            paths["train.projector_init_captions"] = str(self.world / "train" / "captions.json")
        if stage == 2 and "init_from" not in (changes or {}):
            paths["init_from"] = str(self._final(1))
        paths.update(changes or {})
        apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in paths.items()])
        return from_dict(RunConfig, data)

    def _marker_result(self, name: str) -> dict:
        return json.loads(self._marker(name).read_text())["result"]

    def _final(self, stage: int) -> Path:
        return Path(self._marker_result(f"stage{stage}")["model"])

    def _train(self, stage: int) -> dict:
        return train_stage(self._run_config(stage), progress=self.progress, redo=self.redo)

    def _benchmark(self, stage1_model: str, stage2_model: str) -> dict:
        from vistune.eval.scoring import answer_prior, prior_predictions, score, write_report
        from vistune.eval.shapes import evaluate, load_bench
        from vistune.inference.engine import Engine

        heldout = self.world / "heldout"
        bench = self.bench()
        # the same questions (same ids and answers) in the teacher's training wording
        same = {q["id"] for q in bench}
        in_distribution = [q for q in load_bench(heldout / BENCH_IN_DISTRIBUTION_FILE) if q["id"] in same]
        images = heldout / "images"
        evals = self.out / "eval"
        variants = {}
        stage1 = stage1_engine(stage1_model, stage2_model)
        variants["stage1_only"] = evaluate(stage1, bench, images, evals / "stage1_only", progress=self.progress)
        del stage1
        full = Engine.from_checkpoint(stage2_model)
        variants["full"] = evaluate(full, bench, images, evals / "full", progress=self.progress)
        variants["full_in_distribution"] = evaluate(full, in_distribution, images, evals / "full_in_distribution",
                                                    progress=self.progress)
        variants["shuffled_images"] = evaluate(full, bench, images, evals / "shuffled_images", control="shuffled",
                                               progress=self.progress)
        prior = answer_prior(load_bench(self.world / "train" / "bench.jsonl"))
        variants["answer_prior"] = score(prior_predictions(prior, bench), bench)
        write_report(variants["answer_prior"], evals / "answer_prior")
        stages = {f"stage{k}": stage_outcome(self._marker_result(f"stage{k}"), self._run_config(k)) for k in (1, 2)}
        report = demo_report(variants, stages, cpu_description())
        write_any_report(report, self.out)
        return report.data

    def bench(self) -> list[dict]:
        """The held-out questions every variant is scored on (balanced over types)."""
        from vistune.eval.shapes import load_bench

        return balanced_subset(load_bench(self.world / "heldout" / BENCH_FILE), self.plan.bench_questions)

    def _chats(self, model_dir: str) -> dict:
        """Sample chats on held-out images, scored against the world's annotations: whether the description
        names every object with its colour (`names_every_object`) and whether the count is right."""
        from vistune.data.annotations import load_coco
        from vistune.data.image import load_image
        from vistune.data.world import parse_label
        from vistune.eval.shapes import load_bench
        from vistune.inference.engine import Engine, Request

        engine = Engine.from_checkpoint(model_dir)
        heldout = self.world / "heldout"
        bench = load_bench(heldout / "bench.jsonl")
        contexts, _ = load_coco(heldout / "captions.json", heldout / "instances.json")
        objects = {c.image: [parse_label(i.category) for i in c.instances] for c in contexts}
        images = sorted({q["image"] for q in bench})[: self.plan.chats]
        described = counted = 0
        body = []
        for k, name in enumerate(images):
            image = load_image(heldout / "images" / name)
            questions = list(CHAT_PROMPTS) + [next(q["question"] for q in bench if q["image"] == name)]
            answers = engine.generate_batch([Request.of(q, image, temperature=0.0, max_new_tokens=60)
                                             for q in questions])
            truth = ", ".join(f"{c} {s}" for c, s in objects[name])
            names_all = names_every_object(answers[0], objects[name])
            count_ok = count_is_right(answers[1], len(objects[name]))
            described += names_all
            counted += count_ok
            verdict = (f"description names every object with its colour: {'yes' if names_all else 'no'}; "
                       f"count ({len(objects[name])}) right: {'yes' if count_ok else 'no'}")
            if k < self.plan.chats_shown:
                self.log(f"\n--- {name} (truth: {truth})")
                for q, a in zip(questions, answers):
                    self.log(f"USER: {q}\nASSISTANT: {a}")
                self.log(verdict)
            body += [f"## {name}", f"truth: {truth}", ""]
            body += [line for q, a in zip(questions, answers) for line in (f"- **USER:** {q}", f"  **ASSISTANT:** {a}")]
            body += ["", verdict, ""]
        n = len(images)
        score_line = (f"Descriptions that name every object with its colour: {described} of {n}; "
                      f"counts right: {counted} of {n}.")
        atomic_write_text(self.out / "chats.md", "\n".join([
            "# Sample chats on held-out images", "", score_line, "",
            "Scored against the held-out world's annotations: a description counts when it names each object "
            "as its colour followed by its shape (\"a red circle\"); a count when the answer's first number is "
            "the number of objects. Greedy decoding.", ""] + body))
        self.log(score_line)
        return {"chats": n, "descriptions_naming_every_object": described, "counts_right": counted}


def stage1_engine(stage1_model: str | Path, stage2_model: str | Path):
    """An engine for the stage-1 checkpoint that asks it the way the stage-2 model is asked (stage 1 trains
    with the plain template)."""
    from vistune.checkpoint_format import read_config
    from vistune.inference.engine import Engine
    from vistune.model.checkpoint import load_checkpoint

    asked = read_config(stage2_model)["model"]
    model = load_checkpoint(stage1_model)
    model.set_conversation(asked["template"], asked["system_prompt"])
    return Engine(model)


def train_stage(run: RunConfig, progress: bool = True, redo: bool = False) -> dict:
    """Train one planned stage (its recipe fixes `train.max_steps`); the step's result: the final model and the
    precision it trained in (see `stage_outcome` for the steps it reached)."""
    import torch

    from vistune.train.distributed import resolve_precision
    from vistune.train.loop import train

    if run.train.max_steps is None:
        raise ConfigError(f"{run.output_dir}: a planned run fixes its steps (train.max_steps)")
    device = torch.device("cuda" if run.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    bf16 = resolve_precision(run.train.precision, device)
    final = train(run, progress=progress, resume=False if redo else None)
    return {"model": str(final), "precision": "bf16 autocast" if bf16 else "fp32"}


def stage_outcome(result: dict, run: RunConfig) -> dict:
    """How far a trained stage got: {"model", "steps" (reached, from its final checkpoint), "planned_steps",
    "flops" (model FLOPs, `vistune.train.flops`; None for a checkpoint that does not record them), "stopped_early",
    "precision"}; a stage stopped by its safety time budget (`train.max_minutes`) has fewer
    steps than planned."""
    from vistune.checkpoint_format import read_config

    training = read_config(result["model"]).get("training") or {}
    steps = training.get("step")
    planned = run.train.max_steps
    return {"model": result["model"], "steps": steps, "planned_steps": planned, "flops": training.get("flops"),
            "stopped_early": steps is not None and planned is not None and steps < planned,
            "precision": result.get("precision", "not recorded"), "max_minutes": run.train.max_minutes}


def cpu_description() -> str:
    """The CPU's model name and the instruction sets that decide its speed and precision (avx2, avx512f,
    avx512_bf16, amx_bf16); "unknown CPU" where /proc/cpuinfo cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & flags else "no native bf16"
    return f"{fields.get('model name', 'unknown CPU')} ({', '.join(shown) or 'none of avx2/avx512'}; {bf16})"


def target_check(variants: dict) -> dict:
    """Whether `full` meets the demo's target: `TARGET_OVERALL` points above each control overall and
    `TARGET_BY_TYPE` above shuffled_images on every type; with each margin and the types short of it."""
    full = variants["full"]
    overall = {c: full["overall"] - variants[c]["overall"] for c in CONTROLS if c in variants}
    shuffled = variants.get("shuffled_images", {}).get("by_type", {})
    by_type = {t: v - shuffled[t] for t, v in full["by_type"].items() if t in shuffled}
    short = [t for t, d in by_type.items() if d < TARGET_BY_TYPE]
    met = len(overall) == len(CONTROLS) and all(d >= TARGET_OVERALL for d in overall.values()) and not short
    return {"met": met, "overall_margin": overall, "margin_over_shuffled_by_type": by_type,
            "types_below_target": short, "required_overall": TARGET_OVERALL, "required_by_type": TARGET_BY_TYPE}


def demo_report(variants: dict, stages: dict[str, dict], cpu: str) -> Report:
    """The demo's report: the variants side by side (`variants_report`), plus how each stage trained (steps
    reached of planned, precision), the CPU, the target and whether it is met. A stage that its safety time
    budget stopped makes the title, the chart and the first warning say `STOPPED_EARLY`."""
    target = target_check(variants)
    report = variants_report(variants)
    stopped = {name: o for name, o in stages.items() if o["stopped_early"]}
    flops = [o.get("flops") for o in stages.values()]
    tflop = sum(flops) / 1e12 if flops and None not in flops else None
    report.data.update({"stopped_early": bool(stopped), "training": stages, "training_tflop": tflop, "cpu": cpu,
                        "target": target})
    verdict = "met" if target["met"] else "NOT met"
    report.tables.append(Table(
        ["target", "margin (points)", "required", "met"],
        [[f"full - {c}, overall", d, TARGET_OVERALL, "yes" if d >= TARGET_OVERALL else "NO"]
         for c, d in target["overall_margin"].items()]
        + [[f"full - shuffled_images, {t}", d, TARGET_BY_TYPE, "yes" if d >= TARGET_BY_TYPE else "NO"]
           for t, d in target["margin_over_shuffled_by_type"].items()],
        caption=f"Target: {verdict}."))
    report.tables.append(Table(
        ["stage", "steps reached", "planned steps", "TFLOP", "precision", "safety stop (min)"],
        [[name, o["steps"], o["planned_steps"], "?" if o.get("flops") is None else round(o["flops"] / 1e12, 1),
          o["precision"], o["max_minutes"]] for name, o in stages.items()],
        caption=(f"Training compute: {'not recorded' if tflop is None else f'{tflop:.1f} TFLOP'} (model FLOPs of "
                 f"both stages, vistune.train.flops). Training on {cpu}; evaluation in fp32.")))
    if not target["met"]:
        short = ", ".join(target["types_below_target"]) or "none"
        report.warnings.insert(0, f"target not met (types less than {TARGET_BY_TYPE:g} points above "
                                  f"shuffled_images: {short})")
    if stopped:
        reached = "; ".join(f"{name} ran {o['steps']} of {o['planned_steps']} planned steps (train.max_minutes="
                            f"{o['max_minutes']:g} reached)" for name, o in stopped.items())
        report.warnings.insert(0, f"**{STOPPED_EARLY.upper()}**: {reached}; these figures are not those of the "
                                  "planned recipe")
        report.title += f" ({STOPPED_EARLY.upper()})"
        report.chart.title = f"{STOPPED_EARLY.upper()}\n{report.chart.title}"
    report.notes += [
        "precision: the recipes train in fp32 on every CPU, so a seed gives the same figures up to the rounding of "
        "the CPU's matmul kernels (a few answers); with `--precision auto` training runs in bf16 autocast where the "
        "CPU has native bf16 (avx512_bf16 or amx_bf16), figures within the noise of bf16 vs fp32; evaluation always "
        "in fp32",
        f"target: full at least {TARGET_OVERALL:g} points above both controls overall and at least "
        f"{TARGET_BY_TYPE:g} points above shuffled_images on every type",
        "each stage runs the steps its recipe plans (train.max_steps); train.max_minutes is only a safety stop"]
    return report


def summary_lines(data: dict) -> list[str]:
    """What the terminal shows after the table: a stopped-early banner, the precision and the target."""
    lines = []
    for name, o in data.get("training", {}).items():
        lines.append(f"{name}: {o['steps']} of {o['planned_steps']} planned steps, {o['precision']}")
        if o["stopped_early"]:
            lines.insert(0, f"!!! {STOPPED_EARLY.upper()}: {name} stopped at step {o['steps']} of "
                            f"{o['planned_steps']} (train.max_minutes={o['max_minutes']:g}) !!!")
    if data.get("training_tflop") is not None:
        lines.append(f"training compute: {data['training_tflop']:.1f} TFLOP (model FLOPs, both stages)")
    if "cpu" in data:
        lines.append(f"CPU: {data['cpu']}")
    target = data.get("target")
    if target:
        margins = ", ".join(f"{c} +{d:.1f}" for c, d in target["overall_margin"].items())
        lines.append(f"target {'met' if target['met'] else 'NOT met'}: full vs {margins} overall (need "
                     f"+{TARGET_OVERALL:g}); types under +{TARGET_BY_TYPE:g} over shuffled_images: "
                     f"{', '.join(target['types_below_target']) or 'none'}")
    return lines


def balanced_with_descriptions(contexts: list, describe_fraction: float, seed: int = 0) -> list[dict]:
    """`balanced_short_conversations`, a `describe_fraction` of them opening with a brief-description request
    answered by the image's grounded caption; shuffled."""
    from vistune.datagen.pretrain import BRIEF_INSTRUCTIONS, grounded_caption
    from vistune.datagen.symbolic import balanced_short_conversations

    captions = {c.image: grounded_caption(c) for c in contexts}
    records = balanced_short_conversations(contexts, seed=seed)
    rng = random.Random(seed)
    for r in records:
        caption = captions.get(r["image"])
        if caption is not None and rng.random() < describe_fraction:
            first = r["conversations"][0]
            r["conversations"] = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{rng.choice(BRIEF_INSTRUCTIONS)}"},
                                  {"from": "gpt", "value": caption},
                                  {**first, "value": first["value"].replace(IMAGE_PLACEHOLDER, "").strip()},
                                  *r["conversations"][1:]]
            r["metadata"]["described"] = True
    rng.shuffle(records)
    return records


def single_turns(record: dict, short_instruction: bool = False) -> list[dict]:
    """One record per question of a conversation, each asked with the image (LLaVA-1.5's short-answer VQA
    style): questions about many images instead of many questions about a few. `short_instruction`: every
    one-word answer's question ends with `SHORT_ANSWER_INSTRUCTION`, as the benchmark asks (a balanced
    conversation carries it on its first question only)."""
    turns = record["conversations"]
    out = []
    for k in range(0, len(turns) - 1, 2):
        question = turns[k]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        if short_instruction and " " not in turns[k + 1]["value"].strip() and not question.endswith(
                SHORT_ANSWER_INSTRUCTION):
            question = with_instruction(question)
        out.append({**record, "id": f"{record['id']}-{k // 2}",
                    "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"}, turns[k + 1]]})
    return out


def balanced_subset(bench: list[dict], n: int, seed: int = 0) -> list[dict]:
    """About n questions, the same number per type (round robin over shuffled per-type lists)."""
    by_type: dict[str, list[dict]] = {}
    for q in bench:
        by_type.setdefault(q["type"], []).append(q)
    rng = random.Random(seed)
    for qs in by_type.values():
        rng.shuffle(qs)
    out: list[dict] = []
    while len(out) < n and any(by_type.values()):
        for t in sorted(by_type):
            if by_type[t] and len(out) < n:
                out.append(by_type[t].pop())
    return out


def format_table(variants: dict) -> str:
    types = list(next(iter(variants.values()))["by_type"])
    names = list(variants)
    head = f"{'':<18}" + "".join(f"{n:>17}" for n in names)
    rows = [head, f"{'overall':<18}" + "".join(f"{variants[n]['overall']:>16.1f}%" for n in names)]
    for t in types:
        rows.append(f"{t:<18}" + "".join(f"{variants[n]['by_type'].get(t, 0.0):>16.1f}%" for n in names))
    rows.append(f"{'questions':<18}" + "".join(f"{variants[n]['n']:>17}" for n in names))
    return "\n".join(rows)


def seed_dir(out: str | Path, seed: int) -> Path:
    """Where `vistune demo --seeds N` runs seed k: OUT itself for seed 0 (the plain demo), else OUT/seeds/seed-k."""
    return Path(out) if seed == 0 else Path(out) / "seeds" / f"seed-{seed}"


def seed_demo(out: str | Path, plan: DemoPlan, seed: int, force: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> Demo:
    """Seed k of a several-seed run under `out` (in `seed_dir(out, k)`); every seed reads the tower's features
    from `out/feature-cache` (the seeds' worlds are rendered alike, so the cache is shared)."""
    return Demo(seed_dir(out, seed), replace(plan, seed=seed), force=force, progress=progress, log=log,
                feature_cache=Path(out) / "feature-cache")


def seeds_report(reports: list[dict]) -> Report:
    """Several seeds' demo reports (`report.json` data, the same plan) as one: per variant and type the mean ±
    sample standard deviation, the margins over the controls likewise, and the target checked on the means."""
    if not reports:
        raise ValueError("no demo reports to combine")
    names = list(reports[0]["variants"])
    types = list(reports[0]["variants"]["full"]["by_type"])
    rows_of = types + ["overall"]

    def value(r: dict, v: str, t: str) -> float:
        return r["variants"][v]["overall"] if t == "overall" else r["variants"][v]["by_type"][t]

    def spread(fn: Callable[[dict], float]) -> dict:
        m, sd = mean_std([fn(r) for r in reports])
        return {"mean": m, "std": sd}

    stats = {v: {t: spread(lambda r, v=v, t=t: value(r, v, t)) for t in rows_of} for v in names}
    margins = {c: {t: spread(lambda r, c=c, t=t: value(r, "full", t) - value(r, c, t)) for t in rows_of}
               for c in CONTROLS if c in names}
    means = {v: {"overall": stats[v]["overall"]["mean"], "by_type": {t: stats[v][t]["mean"] for t in types}}
             for v in names}
    target = target_check(means)

    def cell(d: dict) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}"

    table = Table(["type"] + names + [f"full - {c}" for c in margins],
                  [[t] + [cell(stats[v][t]) for v in names] + [cell(margins[c][t]) for c in margins]
                   for t in rows_of],
                  caption=f"Accuracy (%), mean ± sample standard deviation over {len(reports)} seeds.")
    stopped = [k for k, r in enumerate(reports) if r.get("stopped_early")]
    report = Report(
        title=f"Shapes benchmark: {len(reports)} seeds",
        data={"seeds": len(reports), "variants": stats, "margins": margins, "target": target,
              "stopped_early": bool(stopped), "cpu": reports[0].get("cpu"),
              "per_seed": [{v: r["variants"][v]["overall"] for v in names} for r in reports]},
        tables=[table],
        notes=[(f"target ({'met' if target['met'] else 'NOT met'} on the means): full at least {TARGET_OVERALL:g} "
                f"points above both controls overall and at least {TARGET_BY_TYPE:g} above shuffled_images on "
                "every type"), "seed k adds k to both stages' train.seed; worlds, data and questions are the same"],
        chart=Chart(rows_of, {v: [stats[v][t]["mean"] for t in rows_of] for v in names},
                    title=f"accuracy by question type, mean of {len(reports)} seeds (bars: ± one std)",
                    ylabel="accuracy (%)",
                    intervals={v: [(stats[v][t]["mean"] - stats[v][t]["std"], stats[v][t]["mean"] + stats[v][t]["std"])
                                   for t in rows_of] for v in names}))
    if stopped:
        report.warnings.append(f"{STOPPED_EARLY}: seed(s) {', '.join(map(str, stopped))}")
    return report


def run_demo(out: str | Path = "runs/demo", quick: bool = False, force: bool = False,
             precision: str | None = None, seed: int = 0, seeds: int = 1, long: bool = False) -> None:
    """`vistune demo`: every step of the offline demo under `out` (`quick`: the smoke-test plan, `long`: 360
    stage-2 steps instead of 90; finished steps are skipped unless `force`;
    `precision` replaces the recipes' `train.precision` and `seed` is added to their `train.seed`; a changed
    one retrains). With `seeds` N > 1: seeds 0..N-1, each in `seed_dir(out, k)`, then `out/seeds.{json,md,png}`
    with the mean ± standard deviation over them."""
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: expected 'auto', 'bf16' or 'fp32'")
    if seed < 0 or seeds < 1:
        raise ConfigError(f"seed={seed}, seeds={seeds}: expected a seed of 0 or more and at least 1 seed")
    if seeds > 1 and seed:
        raise ConfigError("give either --seed (one run) or --seeds (seeds 0..N-1), not both")
    if quick and long:
        raise ConfigError("give either --quick or --long, not both")
    plan = replace(QUICK if quick else LONG if long else FULL, precision=precision)
    if seeds == 1:
        Demo(out, replace(plan, seed=seed), force=force).run()
        return
    reports = [seed_demo(out, plan, k, force=force).run() for k in range(seeds)]
    report = seeds_report(reports)
    paths = write_any_report(report, out, json_name="seeds.json", md_name="seeds.md", png_name="seeds.png")
    table = report.tables[0]
    shown = [table.header.index(h) for h in ("full", "full - shuffled_images") if h in table.header]
    print(table.caption)
    for row in [table.header] + table.rows:
        print(f"{row[0]:<18}" + "".join(f"{row[i]:>26}" for i in shown))
    print(f"seeds report: {paths['md']}")
