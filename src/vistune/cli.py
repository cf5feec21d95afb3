"""Command line: each subcommand maps its flags onto one function; no logic lives here."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence


def _handler(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Resolve "module:function" lazily so `vistune --help` stays fast."""

    def run(args: argparse.Namespace) -> int | None:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect and validate LLaVA-format datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    show = dsub.add_parser("show", help="print one rendered sample with its supervised tokens marked")
    show.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    show.add_argument("--index", type=int, default=0, help="record index (0-based)")
    show.add_argument("--llm", default="smollm2-135m-instruct", help="LLM whose tokenizer renders the sample")
    show.add_argument("--template", default="chat_template", help="conversation template")
    show.add_argument("--num-image-tokens", type=int, default=None,
                      help="image positions per image (default: from --vision-tower)")
    show.add_argument("--vision-tower", default="efficientnet-lite0", help="tower that fixes the image token count")
    show.add_argument("--seed", type=int, default=0, help="seed for the random image placement")
    show.add_argument("--inference", action="store_true", help="render as at inference (fixed image placement)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_handler("vistune.data.inspect:show_command"))

    check = dsub.add_parser("check", help="list every bad record; exit 1 if any")
    check.add_argument("--data", required=True, help="LLaVA JSON list or JSONL file")
    check.add_argument("--images", default=None, help="image folder (image paths are relative to it)")
    check.add_argument("--llm", default=None, help="render with this LLM's tokenizer to check lengths")
    check.add_argument("--template", default="chat_template", help="conversation template (with --llm)")
    check.add_argument("--max-length", type=int, default=2048, help="longest allowed rendered sample")
    check.add_argument("--vision-tower", default="efficientnet-lite0", help="tower that fixes the image token count")
    check.add_argument("--num-image-tokens", type=int, default=None, help="override the image token count")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_handler("vistune.data.inspect:check_command"))


def _add_model_io(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a checkpoint to another format")
    export.add_argument("--model", required=True, help="vistune checkpoint directory")
    export.add_argument("--to", required=True, choices=["hf-llava"], help="target format")
    export.add_argument("--out", required=True, help="output directory")
    export.set_defaults(func=_handler("vistune.model.export:export_command"))

    merge = sub.add_parser("merge-lora", help="merge LoRA adapters into a plain checkpoint")
    merge.add_argument("--model", required=True, help="checkpoint directory with LoRA adapters")
    merge.add_argument("--out", required=True, help="output directory for the merged checkpoint")
    merge.set_defaults(func=_handler("vistune.train.lora:merge_command"))


class _HelpConfig(argparse.Action):
    """`vistune train --help-config`: print every RunConfig key and exit (like --help, needs no --config)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from vistune.config import RunConfig, describe

        print("\n".join(describe(RunConfig)))
        parser.exit()


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train stage 1 or stage 2 from a YAML config")
    train.add_argument("--config", required=True, help="YAML run config (see configs/)")
    train.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in output_dir")
    train.add_argument("--no-resume", action="store_true", help="start over even if output_dir has checkpoints")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    train.add_argument("--help-config", action=_HelpConfig, help="list every config key with its default and meaning")
    train.set_defaults(func=_handler("vistune.train.loop:train_command"))


def _add_datagen(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser("synth", help="render a synthetic visual world with COCO-format annotations")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--min-objects", type=int, default=1, help="fewest objects per image")
    synth.add_argument("--max-objects", type=int, default=5, help="most objects per image")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels")
    synth.add_argument("--min-object-size", type=float, default=None,
                       help="smallest object (longest side / image side; default depends on --max-objects)")
    synth.add_argument("--max-object-size", type=float, default=None,
                       help="largest object (longest side / image side; default depends on --max-objects)")
    synth.set_defaults(func=_handler("vistune.data.synth:synth_command"))

    gen = sub.add_parser("generate", help="write LLaVA instruction data from captions + boxes with a teacher")
    gen.add_argument("--teacher", required=True, choices=["symbolic", "openai"], help="who writes the data")
    gen.add_argument("--captions", help="COCO captions JSON")
    gen.add_argument("--instances", help="COCO instances JSON (boxes)")
    gen.add_argument("--input", help="JSONL of {image, captions, instances:[{category, bbox}]} (normalised xyxy)")
    gen.add_argument("--out", required=True, help="output file (JSON for symbolic, append-only JSONL for openai)")
    gen.add_argument("--types", default="conversation,detail,complex", help="comma-separated kinds to write: conversation, detail, complex (the paper's), "
                     "short (symbolic only: one-word VQA questions, one per record)")
    gen.add_argument("--limit", type=int, default=None, help="use at most N images")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    gen.add_argument("--model", help="teacher model name")
    gen.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    gen.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    gen.add_argument("--prompts", help="directory of prompt files replacing the built-in ones")
    gen.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    gen.add_argument("--max-retries", type=int, default=6, help="retries per request")
    gen.add_argument("--max-consecutive-failures", type=int, default=20, help="stop after this many in a row")
    gen.add_argument("--temperature", type=float, default=0.7, help="teacher sampling temperature")
    gen.add_argument("--max-tokens", type=int, default=1024, help="teacher completion limit")
    gen.add_argument("--price-in", type=float, default=None, help="price per million prompt tokens")
    gen.add_argument("--price-out", type=float, default=None, help="price per million completion tokens")
    gen.add_argument("--retry-base-delay", type=float, default=1.0,
                     help="openai: first backoff wait in seconds (doubles per retry, with jitter)")
    gen.add_argument("--retry-max-delay", type=float, default=60.0,
                     help="openai: longest backoff wait in seconds (a server's Retry-After is honoured in full)")
    gen.add_argument("--reject-retries", type=int, default=2,
                     help="openai: re-ask at most this many times when an output fails validation")
    gen.add_argument("--no-progress", action="store_true", help="openai: no progress bar")
    gen.set_defaults(func=_handler("vistune.datagen.build:generate_command"))

    pre = sub.add_parser("pretrain-data", help="write stage-1 caption data")
    pre.add_argument("--captions", required=True, help="COCO captions JSON or JSONL of {image, caption}")
    pre.add_argument("--out", required=True, help="output JSON file")
    pre.add_argument("--filter", choices=["none", "concepts"], default="none", help="CC3M-style concept filter")
    pre.add_argument("--seed", type=int, default=0, help="random seed")
    pre.add_argument("--min-count", type=int, default=3,
                     help="concept filter: drop noun phrases found in fewer captions than this")
    pre.add_argument("--max-per-concept", type=int, default=100,
                     help="concept filter: a phrase contributes at most this many captions")
    pre.set_defaults(func=_handler("vistune.datagen.pretrain:pretrain_data_command"))


def _add_use(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="talk to a model in the terminal")
    chat.add_argument("--model", required=True, help="vistune checkpoint directory")
    chat.add_argument("--image", help="image file")
    chat.add_argument("--prompt", help="answer this once and exit")
    chat.add_argument("--temperature", type=float, default=0.2, help="0 is greedy")
    chat.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    chat.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit")
    chat.add_argument("--seed", type=int, default=None, help="sampling seed")
    chat.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    chat.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                      help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    chat.set_defaults(func=_handler("vistune.inference.chat:chat_command"))

    infer = sub.add_parser("infer", help="answer a JSONL of questions in batches")
    infer.add_argument("--model", required=True, help="vistune checkpoint directory")
    infer.add_argument("--questions", required=True, help="JSONL of {question_id, image, text}")
    infer.add_argument("--images", required=True, help="image folder")
    infer.add_argument("--out", required=True, help="answers JSONL (resumes if present)")
    infer.add_argument("--batch-size", type=int, default=8, help="questions per batch")
    infer.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    infer.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit")
    infer.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    infer.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    infer.set_defaults(func=_handler("vistune.inference.batch:infer_command"))

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP API (and a web chat page with --ui)")
    serve.add_argument("--model", required=True, help="vistune checkpoint directory")
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=int, default=8000, help="port")
    serve.add_argument("--ui", action="store_true", help="also serve a chat page at /")
    serve.add_argument("--image-root", help="directory that file:// image URLs may read from")
    serve.add_argument("--api-key-env", help="environment variable holding the required Bearer key")
    serve.add_argument("--allow-remote-images", action="store_true", help="allow http(s) image URLs")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    serve.set_defaults(func=_handler("vistune.serve.app:serve_command"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a model")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    shapes = esub.add_parser("shapes", help="exact-answer benchmark on the synthetic world")
    shapes.add_argument("--model", required=True, help="vistune checkpoint directory")
    shapes.add_argument("--bench", required=True, help="bench.jsonl")
    shapes.add_argument("--images", required=True, help="image folder")
    shapes.add_argument("--out", required=True, help="output directory for report.json/.md/.png")
    shapes.add_argument("--batch-size", type=int, default=16, help="questions per batch")
    shapes.add_argument("--limit", type=int, default=None, help="score at most N questions")
    shapes.add_argument("--shuffle-images", action="store_true",
                        help="control: ask each question about a different image")
    shapes.set_defaults(func=_handler("vistune.eval.shapes:eval_command"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="build a visual assistant from scratch offline and evaluate it")
    demo.add_argument("--out", default="runs/demo", help="run directory")
    demo.add_argument("--quick", action="store_true", help="a small run (minutes) for smoke tests")
    demo.add_argument("--force", action="store_true", help="redo finished steps")
    demo.set_defaults(func=_handler("vistune.demo:demo_command"))


def build_parser() -> argparse.ArgumentParser:
    from vistune import __version__

    parser = argparse.ArgumentParser(prog="vistune", description="Visual instruction tuning toolkit.")
    parser.add_argument("--version", action="version", version=f"vistune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data, _add_model_io, _add_train, _add_datagen, _add_use, _add_eval, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
