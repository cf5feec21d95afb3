"""`vistune chat`, `infer` and `serve`: talking to a model."""

from __future__ import annotations

import argparse

from vistune.cli.common import handler


def register(sub: argparse._SubParsersAction) -> None:
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
    chat.set_defaults(func=handler("vistune.inference.chat:chat_command"))

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
    infer.set_defaults(func=handler("vistune.inference.batch:infer_command"))

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP API (and a web chat page with --ui)")
    serve.add_argument("--model", required=True, help="vistune checkpoint directory")
    serve.add_argument("--host", default="127.0.0.1", help="bind address")
    serve.add_argument("--port", type=int, default=8000, help="port")
    serve.add_argument("--ui", action="store_true", help="also serve a chat page at /")
    serve.add_argument("--image-root", help="directory that file:// image URLs may read from")
    serve.add_argument("--api-key-env", help="environment variable holding the required Bearer key")
    serve.add_argument("--allow-remote-images", action="store_true",
                       help="allow http(s) image URLs (from public addresses only)")
    serve.add_argument("--allow-private-image-hosts", action="store_true",
                       help="with --allow-remote-images, also fetch from loopback, private and link-local addresses")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a host name clients may reach the server by (repeatable; IP addresses, localhost and "
                            "--host are always accepted)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    serve.set_defaults(func=handler("vistune.serve.app:serve_command"))
