"""`vistune chat`, `infer` and `serve`: talking to a model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vistune.cli.common import UsageError, add_command, add_generation_flags, run_name, sampling_params

CHAT_HELP = ("commands: /image PATH (add an image; your next question is about it), /reset (start over with "
             "--image, if given), /quit")


def register(sub: argparse._SubParsersAction) -> None:
    chat = add_command(sub, "chat", "talk to a model in the terminal")
    chat.add_argument("--model", required=True, help="vistune checkpoint directory")
    chat.add_argument("--image", help="image file the conversation starts with (add more with /image PATH)")
    chat.add_argument("--prompt", help="answer this once and exit")
    add_generation_flags(chat, max_new_tokens=512)
    chat.set_defaults(func=chat_command)

    infer = add_command(sub, "infer", "answer a JSONL of questions in batches")
    infer.add_argument("--model", required=True, help="vistune checkpoint directory")
    infer.add_argument("--questions", required=True,
                       help="JSONL of {question_id, image, text} (image: a path, or a list of paths that lead the "
                            "question in order; or `vistune synth`'s bench.jsonl)")
    infer.add_argument("--images", required=True, help="image folder")
    infer.add_argument("--out", required=True, help="answers JSONL (resumes if present)")
    infer.add_argument("--batch-size", type=int, default=8, help="questions per batch")
    add_generation_flags(infer, max_new_tokens=128)
    infer.set_defaults(func=infer_command)

    serve = add_command(sub, "serve", "OpenAI-compatible HTTP API (and a web chat page with --ui)")
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
    serve.add_argument("--max-images", type=int, default=None, metavar="N",
                       help="most images one request may carry, over all its messages (default: 1); a request "
                            "with more gets a 400 (too_many_images)")
    add_generation_flags(serve, max_new_tokens=512)  # the defaults for requests that leave a value out
    serve.set_defaults(func=serve_command)


def load_engine(args: argparse.Namespace, **kwargs):
    """The engine for --model on --device/--dtype."""
    from vistune.inference.engine import Engine

    return Engine.load(args.model, args.device, args.dtype, **kwargs)


def chat_command(args: argparse.Namespace) -> int:
    from vistune.data.image import load_image

    params = sampling_params(args)
    image = load_image(args.image) if args.image else None
    from vistune.inference.chat import ChatSession

    session = ChatSession(load_engine(args), image, params)
    if args.prompt is not None:
        return _answer(session, args.prompt)
    print(CHAT_HELP, file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset(session.image)
            print("(conversation reset)", file=sys.stderr)
        elif line.startswith("/image"):
            _add_image(session, line[len("/image"):].strip())
        elif line.startswith("/"):
            print(CHAT_HELP, file=sys.stderr)
        else:
            _answer(session, line, prefix="assistant> ")


def _add_image(session, path: str) -> None:
    from vistune.data.image import ImageLoadError, load_image

    if not path:
        print("usage: /image PATH", file=sys.stderr)
        return
    try:
        session.add_image(load_image(path))
    except ImageLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return
    print(f"(image {len(session.images)} added: {path}; your next question is about it)", file=sys.stderr)


def _answer(session, question: str, prefix: str = "") -> int:
    from vistune.conversation import IMAGE_PLACEHOLDER
    from vistune.inference.engine import RequestError

    try:
        print(prefix, end="", flush=True)
        for piece in session.ask_stream(question.replace(IMAGE_PLACEHOLDER, "")):
            print(piece, end="", flush=True)
        print(flush=True)
    except RequestError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    return 0


def infer_command(args: argparse.Namespace) -> int:
    from vistune.inference.batch import answered_ids, infer, read_questions

    params = sampling_params(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    questions = read_questions(args.questions)
    answered_ids(args.out)  # check the output file before loading the model
    if not Path(args.images).is_dir():
        raise UsageError(f"image folder {args.images} does not exist")
    engine = load_engine(args, max_batch_size=args.batch_size)
    summary = infer(engine, questions, args.images, args.out, params, args.batch_size, model_id=run_name(args.model))
    print(f"answered {summary.answered}, already answered {summary.already}, failed {len(summary.failed)} "
          f"-> {args.out}", file=sys.stderr)
    for qid, reason in list(summary.failed.items())[:20]:
        print(f"  {qid}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from vistune.serve.app import create_app

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if args.image_root and not Path(args.image_root).is_dir():
        raise UsageError(f"--image-root {args.image_root} is not a directory")
    from vistune.serve.schemas import ServeLimits

    defaults = sampling_params(args)  # checked like every command's; used where a request sets none
    if args.max_images is not None and args.max_images < 0:
        raise UsageError(f"--max-images must be 0 or more, got {args.max_images}")
    images = {} if args.max_images is None else {"max_images": args.max_images}
    limits = ServeLimits(default_max_tokens=defaults.max_new_tokens, default_temperature=defaults.temperature,
                         default_top_p=defaults.top_p, default_seed=defaults.seed, **images)
    if defaults.max_new_tokens > limits.max_tokens:
        raise UsageError(f"--max-new-tokens {defaults.max_new_tokens} is above the server's limit {limits.max_tokens}")
    engine = load_engine(args)
    app = create_app(engine, model_name=run_name(args.model), api_key=api_key, image_root=args.image_root,
                     allow_remote_images=args.allow_remote_images, ui=args.ui, limits=limits,
                     allow_private_image_hosts=args.allow_private_image_hosts,
                     allowed_hosts=[args.host, *args.allowed_host])
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1" + (" (chat page at /)" if args.ui else ""),
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
