"""`vistune synth`, `generate` and `pretrain-data`: data from a synthetic world or a teacher."""

from __future__ import annotations

import argparse

from vistune.cli.common import handler


def register(sub: argparse._SubParsersAction) -> None:
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
    synth.set_defaults(func=handler("vistune.data.synth:synth_command"))

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
    gen.set_defaults(func=handler("vistune.datagen.build:generate_command"))

    pre = sub.add_parser("pretrain-data", help="write stage-1 caption data")
    pre.add_argument("--captions", required=True, help="COCO captions JSON or JSONL of {image, caption}")
    pre.add_argument("--out", required=True, help="output JSON file")
    pre.add_argument("--filter", choices=["none", "concepts"], default="none", help="CC3M-style concept filter")
    pre.add_argument("--seed", type=int, default=0, help="random seed")
    pre.add_argument("--min-count", type=int, default=3,
                     help="concept filter: drop noun phrases found in fewer captions than this")
    pre.add_argument("--max-per-concept", type=int, default=100,
                     help="concept filter: a phrase contributes at most this many captions")
    pre.set_defaults(func=handler("vistune.datagen.pretrain:pretrain_data_command"))
