"""A demo recipe's learning curve on the frozen shapes benchmark, against training compute.

    .venv/bin/python benchmarks/learning_curve.py RECIPE.yaml [--out runs/curves/NAME] [--points 25,50,75]
        [--seed 0] [--precision fp32|auto|bf16] [--feature-cache DIR] [--bench-questions 420]

RECIPE is `demo` (the shipped recipe) or a YAML file of changes to it (every key optional;
`benchmarks/recipes/` holds the measured ones):

    stage1_data: grounded            # or captions (DemoPlan.stage1_data)
    stage2_mix: {style: balanced, describe_fraction: 0.25}   # DemoPlan.stage2_mix
    stage1: {train.max_steps: 32}    # dotted changes to configs/demo/stage1.yaml
    stage2: {train.global_batch_size: 8, model.image_position: learned_2d}

The recipe trains as `vistune demo` would (the same worlds, benchmark and controls). While stage 2 trains, the
model is saved each time the training compute (stage 1 + stage 2 model FLOPs, `vistune.train.flops`) passes a
point of `--points` (TFLOP); the final model is the last point. Each point is scored on the demo's held-out
questions (`full`) and on the same questions about another held-out image (`shuffled_images`); the curve is
the margin per question type against TFLOP. A point is a checkpoint of one run, so its learning rate is where
that run's schedule had it (not annealed as a run planned to end there would be). Finished steps, saved points
and scored points are skipped when the command is run again.

Writes OUT/curve.json, OUT/curve.md (a table per point: TFLOP, overall and per-type margins, accuracies) and
OUT/curve.png (margin over shuffled_images per type against TFLOP).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plan_of(recipe: dict, seed: int, precision: str | None):
    """The demo plan `recipe` describes (changes to the demo's)."""
    from vistune.demo import FULL as base

    known = {"stage1_data", "stage2_mix", "stage1", "stage2"}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise SystemExit(f"unknown recipe keys {unknown}; expected {sorted(known)}")
    changes = {k: {**base.changes.get(k, {}), **(recipe.get(f"stage{k}") or {})} for k in (1, 2)}
    return replace(base, name="curve", seed=seed, precision=precision,
                   stage1_data=recipe.get("stage1_data", base.stage1_data),
                   stage2_mix=recipe.get("stage2_mix", base.stage2_mix), changes=changes)


def train_stage1(demo) -> float:
    """The worlds, both stages' data and stage 1 (each skipped when done); the model FLOPs stage 1 spent."""
    from vistune.checkpoint_format import read_config

    plan = demo.plan
    world = demo.prepare_world()
    demo.step("stage1", lambda: demo._train(1), demo.stage1_params(world))
    demo.step("stage2_data", lambda: demo._stage2_data(plan.stage2_mix), {"world": world, "mix": plan.stage2_mix})
    return float((read_config(demo._final(1)).get("training") or {}).get("flops", 0.0))


def train_curve(demo, points_tflop: list[float]) -> list[dict]:
    """Stage 2 (after `train_stage1`), saving the model each time the compute passes a point; the saved points
    and the final model, with their total TFLOP and step."""
    from vistune.checkpoint_format import read_config
    from vistune.model.checkpoint import write_checkpoint_files
    from vistune.train.loop import TrainHooks, train
    from vistune.utils.io import commit_dir

    plan = demo.plan
    stage1_flops = train_stage1(demo)
    points_dir = demo.out / "points"
    pending = [p for p in sorted(points_tflop) if p * 1e12 > stage1_flops]

    def save_at(step: int, flops: float, model) -> None:
        total = stage1_flops + flops
        while pending and total >= pending[0] * 1e12:
            point = pending.pop(0)
            final = points_dir / f"tflop-{point:g}"
            if final.exists():
                continue
            tmp = points_dir / f".tflop-{point:g}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)  # a save a kill interrupted
            tmp.mkdir(parents=True)
            extra = {"training": {"stage": 2, "step": step, "flops": flops, "total_flops": total}}
            was_training = model.training
            model.eval()
            write_checkpoint_files(model, tmp, extra)
            model.train(was_training)
            commit_dir(tmp, final)

    def stage2() -> dict:
        run = demo._run_config(2)
        final = train(run, progress=demo.progress, resume=None, hooks=TrainHooks(at_compute=save_at))
        return {"model": str(final)}

    s2 = {"stage1": demo.stage1_params(demo.prepare_world()), "mix": plan.stage2_mix, "recipe": plan.recipe(2)}
    demo.step("stage2", stage2, s2)
    final = Path(demo._final(2))
    final_total = stage1_flops + float((read_config(final).get("training") or {}).get("flops", 0.0))
    saved = []
    for d in sorted(points_dir.glob("tflop-*"), key=lambda d: float(d.name.split("-", 1)[1])):
        cfg = read_config(d)["training"]
        saved.append({"model": str(d), "tflop": cfg["total_flops"] / 1e12, "step": cfg["step"]})
    saved.append({"model": str(final), "tflop": final_total / 1e12,
                  "step": read_config(final)["training"]["step"], "final": True})
    return saved


def score_point(demo, point: dict) -> dict:
    """The point's full and shuffled_images accuracies by type and the margins (skipped when scored before)."""
    from vistune.eval.shapes import evaluate
    from vistune.inference.engine import Engine

    out = Path(point["model"]) / "curve-score.json"
    if out.is_file():
        return json.loads(out.read_text())
    engine = Engine.from_checkpoint(point["model"])
    bench = demo.bench()
    images = demo.world / "heldout" / "images"
    full = evaluate(engine, bench, images, progress=demo.progress)
    shuffled = evaluate(engine, bench, images, control="shuffled", progress=demo.progress)
    types = list(full["by_type"])
    result = {**point, "full": full["overall"], "shuffled_images": shuffled["overall"],
              "margin": full["overall"] - shuffled["overall"],
              "by_type": {t: {"full": full["by_type"][t], "shuffled_images": shuffled["by_type"][t],
                              "margin": full["by_type"][t] - shuffled["by_type"][t]} for t in types}}
    from vistune.utils.io import atomic_write_json

    atomic_write_json(out, result)
    return result


def write_curve(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vistune.utils.io import atomic_path, atomic_write_json, atomic_write_text

    types = list(rows[0]["by_type"])
    atomic_write_json(out / "curve.json", {"title": title, "points": rows})
    head = ["TFLOP", "step", "full", "shuffled", "margin"] + types
    lines = [f"# {title}", "", "Margin over `shuffled_images` (points), by type.", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['tflop']:.1f}", str(r["step"]), f"{r['full']:.1f}", f"{r['shuffled_images']:.1f}",
                 f"{r['margin']:+.1f}"] + [f"{r['by_type'][t]['margin']:+.1f}" for t in types]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out / "curve.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = [r["tflop"] for r in rows]
    for t in types:
        ax.plot(x, [r["by_type"][t]["margin"] for r in rows], marker="o", label=t)
    ax.plot(x, [r["margin"] for r in rows], marker="s", color="black", linewidth=2, label="overall")
    ax.axhline(10, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("training compute (TFLOP, model FLOPs of both stages)")
    ax.set_ylabel("full - shuffled_images (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(out / "curve.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe YAML (see the module docstring); 'demo' for the shipped recipe")
    parser.add_argument("--out", help="run directory (default runs/curves/<recipe name>[-seedK])")
    parser.add_argument("--points", default="25,50,75", help="compute points in TFLOP, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                        help="replaces the recipes' train.precision (default: the recipes' fp32)")
    parser.add_argument("--feature-cache", help="the tower's feature cache (default OUT/feature-cache)")
    parser.add_argument("--bench-questions", type=int, default=None,
                        help="held-out questions scored per point (default: the demo's 420)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from vistune.config import load_yaml
    from vistune.demo import Demo

    name = "demo" if args.recipe == "demo" else Path(args.recipe).stem
    recipe = {} if args.recipe == "demo" else (load_yaml(args.recipe) or {})
    plan = plan_of(recipe, args.seed, args.precision)
    if args.bench_questions is not None:
        plan = replace(plan, bench_questions=args.bench_questions)
    out = Path(args.out or ROOT / "runs" / "curves" / (name + (f"-seed{args.seed}" if args.seed else "")))
    demo = Demo(out, plan, progress=not args.quiet,
                feature_cache=Path(args.feature_cache) if args.feature_cache else None)
    start = time.time()
    points = train_curve(demo, [float(p) for p in args.points.split(",") if p.strip()])
    rows = [score_point(demo, p) for p in points]
    write_curve(rows, out, f"{name}, seed {args.seed}")
    print(Path(out / "curve.md").read_text())
    print(f"learning curve in {(time.time() - start) / 60:.1f} min: {out / 'curve.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
