"""`vistune eval ...`: benchmarks."""

from __future__ import annotations

import argparse
import sys

from vistune.cli.common import UsageError, add_command, add_generation_flags, sampling_params
from vistune.cli.use import load_engine

EXIT_INCOMPLETE, EXIT_USAGE, EXIT_STOPPED = 1, 2, 3


def register(sub: argparse._SubParsersAction) -> None:
    ev = add_command(sub, "eval", "evaluate a model")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    _register_shapes(esub)


def _register_shapes(esub: argparse._SubParsersAction) -> None:
    shapes = add_command(esub, "shapes", "exact-answer benchmark on the synthetic world")
    shapes.add_argument("--model", required=True, help="vistune checkpoint directory")
    shapes.add_argument("--bench", required=True, help="bench.jsonl")
    shapes.add_argument("--images", required=True, help="image folder")
    shapes.add_argument("--out", required=True, help="output directory for report.json/.md/.png")
    shapes.add_argument("--batch-size", type=int, default=16, help="questions per batch")
    shapes.add_argument("--limit", type=int, default=None, help="score at most N questions")
    shapes.add_argument("--shuffle-images", action="store_true",
                        help="score only the shuffled control: ask each question about a different image")
    _add_controls_flags(shapes)
    add_generation_flags(shapes, max_new_tokens=8)
    shapes.set_defaults(func=shapes_command)
    _register_llava_bench(esub)
    _register_scienceqa(esub)
    _register_benchmarks(esub)


# ----------------------------------------------------------------------------- shared flags


def _add_judge_flags(p: argparse.ArgumentParser, prefix: str, what: str) -> None:
    p.add_argument(f"--{prefix}-base-url", help=f"{what}: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument(f"--{prefix}-model", help=f"{what}: model name on that server")
    p.add_argument(f"--{prefix}-api-key-env", default="OPENAI_API_KEY",
                   help=f"{what}: environment variable holding the API key (default: OPENAI_API_KEY)")
    p.add_argument(f"--{prefix}-retries", type=int, default=2,
                   help=f"{what}: re-asks when a reply cannot be parsed, then it counts as a failure (default: 2)")
    p.add_argument(f"--{prefix}-temperature", type=float, default=0.2, help=f"{what}: temperature (default: 0.2)")
    p.add_argument(f"--{prefix}-max-tokens", type=int, default=1024, help=f"{what}: completion limit (default: 1024)")
    p.add_argument("--concurrency", type=int, default=8, help="judge requests in flight (default: 8)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request (default: 120)")
    p.add_argument("--max-retries", type=int, default=6,
                   help="transport retries per request: 429, 5xx, timeouts (default: 6)")
    p.add_argument("--retry-base-delay", type=float, default=1.0,
                   help="first backoff wait in seconds; doubles per retry; Retry-After wins (default: 1)")
    p.add_argument("--retry-max-delay", type=float, default=60.0, help="longest backoff wait (default: 60)")
    p.add_argument("--price-in", type=float, default=None, help="price per million prompt tokens (cost line)")
    p.add_argument("--price-out", type=float, default=None, help="price per million completion tokens")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_controls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controls", default=None,
                   help="image-reliance controls, comma-separated: shuffled (another image of the set), blank (a "
                        "blank image), noimage (the text only); each scored beside the real answers")
    p.add_argument("--control-seed", type=int, default=0,
                   help="seed of the shuffled control's derangement (0: each image -> the next in sorted order)")


def _controls(args: argparse.Namespace) -> tuple[str, ...]:
    from vistune.eval.controls import ControlsError, parse_controls

    try:
        return parse_controls(args.controls)
    except ControlsError as e:
        raise UsageError(str(e)) from None


def _judge_options(args: argparse.Namespace, prefix: str):
    from vistune.eval.judge import JudgeOptions

    a = prefix.replace("-", "_")
    if not getattr(args, f"{a}_base_url") and not getattr(args, f"{a}_model"):
        return None
    if not getattr(args, f"{a}_base_url") or not getattr(args, f"{a}_model"):
        raise UsageError(f"give both --{prefix}-base-url and --{prefix}-model")
    return JudgeOptions(
        base_url=getattr(args, f"{a}_base_url"), model=getattr(args, f"{a}_model"),
        api_key_env=getattr(args, f"{a}_api_key_env"), concurrency=args.concurrency, timeout=args.timeout,
        max_retries=args.max_retries, retry_base_delay=args.retry_base_delay, retry_max_delay=args.retry_max_delay,
        retries=getattr(args, f"{a}_retries"), temperature=getattr(args, f"{a}_temperature"),
        max_tokens=getattr(args, f"{a}_max_tokens"), price_in=args.price_in, price_out=args.price_out,
        progress=not args.no_progress)


def _answering(args: argparse.Namespace):
    """How the candidate checkpoint answers, from the flags `_add_model_flags` declares."""
    from vistune.inference.batch import Answering

    return Answering(sampling_params(args), args.batch_size, args.device, args.dtype)


def _add_model_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--batch-size", type=int, default=8, help="questions per batch with --model")
    add_generation_flags(p, max_new_tokens)


def _run(fn, args: argparse.Namespace) -> int:
    """Call a command body; user errors print one line and exit 2, a refused judge key exits 3."""
    from vistune.eval.judge import JudgeConfigError, JudgeStopped
    from vistune.inference.generate import SamplingError
    from vistune.utils.jsonl import OutputLockedError, RecordError

    try:
        return fn(args)
    except (UsageError, RecordError, JudgeConfigError, OutputLockedError, SamplingError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except JudgeStopped as e:
        print(f"stopped: the judge refused the key: {e}; the work done so far is kept, re-run to resume",
              file=sys.stderr)
        return EXIT_STOPPED


# ----------------------------------------------------------------------------- llava-bench


def _register_llava_bench(esub: argparse._SubParsersAction) -> None:
    p = add_command(esub, "llava-bench", "LLaVA-Bench: an LLM judge scores answers against reference answers")
    p.add_argument("--questions", help="questions JSONL {question_id, image, text, category: conv|detail|complex}")
    p.add_argument("--context", help="context JSONL {image, caption|captions, instances?: [{category, bbox}]}")
    p.add_argument("--references", help="reference answers JSONL {question_id, text} (Assistant 1)")
    p.add_argument("--images", help="image folder (with --model)")
    p.add_argument("--model", help="vistune checkpoint that answers the questions")
    p.add_argument("--answers", help="candidate answers JSONL {question_id, text} (instead of --model)")
    p.add_argument("--reviews", help="re-score this review file (original format) instead of judging")
    p.add_argument("--out", required=True, help="output directory (answers, reviews.jsonl, summary.json/.md/.png)")
    p.add_argument("--judge-samples", type=int, default=1, help="reviews per answer (default: 1)")
    p.add_argument("--seeds", help="comma-separated candidate sampling seeds (with --model, --temperature > 0)")
    _add_controls_flags(p)
    _add_model_flags(p, 512)
    _add_judge_flags(p, "judge", "judge")
    p.set_defaults(func=llava_bench_command)


def llava_bench_command(args: argparse.Namespace) -> int:
    return _run(_llava_bench, args)


def _llava_bench(args: argparse.Namespace) -> int:
    from vistune.eval.llava_bench import LlavaBenchOptions, evaluate_llava_bench, print_result

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    judge = None if args.reviews else _judge_options(args, "judge")
    options = LlavaBenchOptions(
        out=args.out, questions=args.questions, context=args.context, references=args.references,
        images=args.images, model=args.model, answers=args.answers, reviews=args.reviews, judge=judge,
        judge_samples=args.judge_samples, seeds=seeds, answering=_answering(args) if args.model else None,
        controls=_controls(args), control_seed=args.control_seed, progress=not args.no_progress)
    result = evaluate_llava_bench(options)
    print_result(result, judge)
    if result.missing:
        print(f"{result.missing} reviews are missing (failed requests); re-run the same command to ask them",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


# ----------------------------------------------------------------------------- scienceqa


def _register_scienceqa(esub: argparse._SubParsersAction) -> None:
    p = add_command(esub, "scienceqa", "ScienceQA multiple choice, with the optional judge ensemble")
    p.add_argument("--problems", required=True, help="ScienceQA problems.json")
    p.add_argument("--pid-splits", required=True, help="ScienceQA pid_splits.json")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--images", help="image folder: DIR/<pid>/image.png (with --model)")
    p.add_argument("--model", help="vistune checkpoint that answers every question of the split")
    p.add_argument("--answers", help="answers JSONL {question_id, text, prompt} (instead of --model)")
    p.add_argument("--prompt-format", default="QCM-A",
                   help="with --model: how questions are asked, as in `data scienceqa` (default: QCM-A)")
    p.add_argument("--out", required=True, help="output directory (results.json, report.md/.png)")
    p.add_argument("--ensemble-answers", help="a second model's answers JSONL for the ensemble")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions of the split")
    _add_controls_flags(p)
    _add_model_flags(p, 256)
    _add_judge_flags(p, "ensemble-judge", "ensemble judge")
    p.set_defaults(func=scienceqa_command)


def scienceqa_command(args: argparse.Namespace) -> int:
    return _run(_scienceqa, args)


def _scienceqa(args: argparse.Namespace) -> int:
    from vistune.eval.scienceqa import ScienceQAOptions, evaluate_scienceqa, print_result

    judge = _judge_options(args, "ensemble-judge")
    options = ScienceQAOptions(
        problems=args.problems, pid_splits=args.pid_splits, split=args.split, out=args.out, images=args.images,
        model=args.model, answers=args.answers, prompt_format=args.prompt_format,
        ensemble_answers=args.ensemble_answers, judge=judge, limit=args.limit,
        answering=_answering(args) if args.model else None, controls=_controls(args),
        control_seed=args.control_seed, progress=not args.no_progress)
    result = evaluate_scienceqa(options)
    print_result(result, judge)
    if result.missing:
        print(f"{result.missing} judge answers are missing (failed requests); re-run the same command",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def shapes_command(args: argparse.Namespace) -> int:
    return _run(_shapes, args)


def _shapes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vistune.eval.controls import reliance_sentence
    from vistune.eval.shapes import evaluate, evaluate_controls, load_bench

    params = sampling_params(args)
    controls = _controls(args)
    if controls and args.shuffle_images:
        raise UsageError("give either --shuffle-images (the shuffled control alone) or --controls, not both")
    bench = load_bench(args.bench, args.limit)
    engine = load_engine(args)
    if controls:
        report = evaluate_controls(engine, bench, args.images, args.out, controls, seed=args.control_seed,
                                   batch_size=args.batch_size, params=params)
    else:
        report = evaluate(engine, bench, args.images, args.out, control="shuffled" if args.shuffle_images else None,
                          seed=args.control_seed, batch_size=args.batch_size, params=params)
    print(f"overall {report['overall']:.1f}% on {report['n']} questions")
    for t, v in report["by_type"].items():
        print(f"  {t:<18} {v:5.1f}%")
    if "controls" in report:
        print(reliance_sentence(report["controls"], "accuracy"))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


# ----------------------------------------------------------------------------- LLaVA-1.5's benchmarks

BENCHMARKS = {
    "pope": ("POPE yes/no object existence: accuracy, precision, recall, F1, yes-ratio per split",
             "POPE question file(s) {question_id, image, text, label} (one file, or a folder of coco_pope_*.json)"),
    "vqa": ("VQA accuracy (TextVQA, VQAv2, VizWiz) with the official answer normalisation",
            "TextVQA JSON, VQAv2 questions JSON, VizWiz JSON, or JSONL {question_id, image, text, answers}"),
    "gqa": ("GQA exact match, per question type", "GQA questions JSON (e.g. testdev_balanced_questions.json) "
                                                  "or JSONL {question_id, image, text, answer}"),
    "mme": ("MME perception and cognition (acc + acc+ per subtask)", "MME_Benchmark_release_version folder"),
    "mmbench": ("MMBench multiple choice, circular evaluation", "MMBench TSV (images inside)"),
    "seed": ("SEED-Bench multiple-choice accuracy per dimension (image questions)", "SEED-Bench.json"),
}


def _register_benchmarks(esub: argparse._SubParsersAction) -> None:
    for name, (what, questions) in BENCHMARKS.items():
        p = add_command(esub, name, what)
        p.add_argument("--questions", required=True, help=questions)
        p.add_argument("--images", help="image folder (with --model)" + (
            "; default: the --questions folder" if name == "mme" else ""))
        p.add_argument("--model", help="vistune checkpoint that answers every question")
        p.add_argument("--answers", help="answers JSONL {question_id, text} written elsewhere (instead of --model)")
        p.add_argument("--out", required=True, help="output directory (answers*.jsonl, summary.json/.md/.png)")
        p.add_argument("--limit", type=int, default=None, help="ask and score only the first N questions")
        if name == "vqa":
            p.add_argument("--format", required=True, choices=["textvqa", "vqav2", "vizwiz"], help="the benchmark")
            p.add_argument("--annotations", help="VQAv2: the annotations JSON with the human answers")
            p.add_argument("--ocr", action="store_true", help="TextVQA: add the reference OCR tokens to the prompt")
        _add_controls_flags(p)
        _add_model_flags(p, 16)
        if name == "mmbench":
            _add_judge_flags(p, "judge", "judge reading a letter where the rule finds none (optional)")
        else:
            p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=benchmark_command, benchmark=name)


def benchmark_command(args: argparse.Namespace) -> int:
    return _run(_benchmark, args)


def _benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vistune.eval.benchmark import BenchmarkOptions, run_benchmark
    from vistune.eval.benchmarks import BENCHMARKS as CLASSES
    from vistune.eval.controls import reliance_sentence

    bench = CLASSES[args.benchmark]()
    options = BenchmarkOptions(
        questions=args.questions, out=args.out, images=args.images, model=args.model, answers=args.answers,
        annotations=getattr(args, "annotations", None), format=getattr(args, "format", None),
        ocr=getattr(args, "ocr", False), controls=_controls(args), control_seed=args.control_seed, limit=args.limit,
        answering=_answering(args) if args.model else None,
        judge=_judge_options(args, "judge") if args.benchmark == "mmbench" else None,
        progress=not args.no_progress)
    result = run_benchmark(bench, options)
    for key, value in result.figures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            print(f"{key:<16} {value:.1f}" if isinstance(value, float) else f"{key:<16} {value}")
    if result.controls:
        print(reliance_sentence(result.controls, result.controls.get("metric", "score")))
    if result.failed:
        print(f"{len(result.failed)} questions could not be answered (counted wrong); a re-run asks them again",
              file=sys.stderr)
    print(f"report: {Path(args.out) / 'summary.md'}")
    return 0
