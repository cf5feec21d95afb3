"""`vistune synth`, `generate` and `pretrain-data`: data from a synthetic world or a teacher."""

from __future__ import annotations

import argparse
import os

from vistune.cli.common import UsageError, add_command


def register(sub: argparse._SubParsersAction) -> None:
    synth = add_command(sub, "synth", "render a synthetic visual world with COCO-format annotations")
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
    synth.set_defaults(func=synth_command)

    gen = add_command(sub, "generate", "write LLaVA instruction data from captions + boxes with a teacher")
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
    gen.set_defaults(func=generate_command)

    pre = add_command(sub, "pretrain-data", "write stage-1 caption data")
    pre.add_argument("--captions", required=True, help="COCO captions JSON or JSONL of {image, caption}")
    pre.add_argument("--out", required=True, help="output JSON file")
    pre.add_argument("--filter", choices=["none", "concepts"], default="none", help="CC3M-style concept filter")
    pre.add_argument("--seed", type=int, default=0, help="random seed")
    pre.add_argument("--min-count", type=int, default=3,
                     help="concept filter: drop noun phrases found in fewer captions than this")
    pre.add_argument("--max-per-concept", type=int, default=100,
                     help="concept filter: a phrase contributes at most this many captions")
    pre.set_defaults(func=pretrain_data_command)


def synth_command(args: argparse.Namespace) -> int:
    from vistune.data.synth import render_world

    try:
        summary = render_world(args.out, args.images, args.seed, min_objects=args.min_objects,
                               max_objects=args.max_objects, image_size=args.size,
                               min_object_size=args.min_object_size, max_object_size=args.max_object_size)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from e
    print(f"wrote {summary['images']} images, {summary['captions']} captions, {summary['instances']} boxes, "
          f"{summary['bench']} bench questions to {args.out}")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    from vistune.data.annotations import ContextSource, format_skips, load_contexts

    source = ContextSource(args.input, args.captions, args.instances, args.limit)
    types = list(dict.fromkeys(t.strip() for t in args.types.split(",") if t.strip()))
    if args.teacher == "openai":
        from vistune.datagen.openai_teacher import Settings, generate_openai  # needs httpx
        from vistune.llm_client import RetryPolicy

        settings = Settings(
            base_url=args.base_url, model=args.model,
            api_key=os.environ.get(args.api_key_env) if args.api_key_env else None, types=types,
            concurrency=args.concurrency, timeout=args.timeout,
            retry=RetryPolicy(args.max_retries, args.retry_base_delay, args.retry_max_delay),
            reject_retries=args.reject_retries, max_consecutive_failures=args.max_consecutive_failures,
            temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed, price_in=args.price_in,
            price_out=args.price_out, progress=not args.no_progress)
        code, _ = generate_openai(settings, source, args.out, args.prompts)
        return code
    from vistune.datagen.symbolic import write_symbolic

    contexts, load_skips = load_contexts(source)
    per_type, skips = write_symbolic(contexts, types, args.out, args.seed)
    print(f"wrote {sum(per_type.values())} records from {len(contexts)} images to {args.out}: "
          + ", ".join(f"{t}={per_type.get(t, 0)}" for t in types))
    print("input " + format_skips(load_skips))
    print("generation " + format_skips(skips))
    return 0


def pretrain_data_command(args: argparse.Namespace) -> int:
    from collections import Counter

    from vistune.data.annotations import format_skips
    from vistune.datagen.pretrain import make_pretrain_data

    try:
        stats = make_pretrain_data(args.captions, args.out, seed=args.seed, filter=args.filter,
                                   min_count=args.min_count, max_per_concept=args.max_per_concept)
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"wrote {stats['pairs']} image-caption pairs from {stats['images']} images to {args.out}")
    if args.filter == "concepts":
        print(f"concept filter ({stats['extractor']} noun phrases): {stats['concepts_kept']} of "
              f"{stats['concepts_total']} concepts seen >= {stats['min_count']} times "
              f"({stats['concepts_capped']} capped at {stats['max_per_concept']}); "
              f"{stats['captions_kept']} of {stats['captions_in']} pairs kept")
    print(format_skips(Counter(stats["skipped"])))
    return 0
