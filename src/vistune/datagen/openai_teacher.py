"""`vistune generate --teacher openai`: visual instruction data written by any OpenAI-compatible LLM.

For each image context (captions + normalised boxes) and each requested type, one chat request
goes to `{base_url}/chat/completions`: the type's system message, its few-shot examples as
user/assistant pairs, then the image's context (and, for single-answer types, the question drawn
for that image). The reply is parsed and validated (`vistune.datagen.parse`); a valid one becomes
one LLaVA record, appended to a JSONL file with a single `write()` and an fsync.

Resume: records are keyed by id `{image}#{type}`; a re-run skips ids already in the file. On
start, a torn last line (no newline, or not JSON) is cut off. A lock on the output file keeps two
runs from writing it at once. Rejected outputs go to `{out}.rejects.jsonl` with reason and raw
text. Exit codes: 0 every pair written, 1 some pairs failed (re-run to retry them), 2 bad usage or
input, 3 stopped early (401/403, or too many consecutive failures).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Awaitable, Callable

import yaml

from vistune.datagen.context import (
    ImageContext,
    format_context,
    format_skips,
    load_image_contexts,
    make_record,
)
from vistune.datagen.parse import OUTPUT_KINDS, Rejected, parse_output
from vistune.datagen.teacher_client import (
    AuthError,
    MalformedResponse,
    RequestFailed,
    RetryPolicy,
    TeacherClient,
)
from vistune.errors import UserError

try:  # POSIX advisory lock; elsewhere runs are simply not protected against each other.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

BUILTIN_PROMPTS = Path(__file__).parent / "prompts"
DEFAULT_OUTPUT = {"conversation": "conversation"}  # other types default to "single"

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


class UsageError(UserError, ValueError):
    """Bad flags or input files; reported without a traceback (exit code 2)."""


class StopRun(Exception):
    """Stop every worker: the key was refused, or too many pairs failed in a row."""


# ---------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Example:
    context: str
    answer: str
    question: str | None = None


@dataclass
class PromptSpec:
    """One type's prompt file: `system`, `examples`, `questions` (pool), `output` (parse shape)."""

    type: str
    system: str
    examples: list[Example]
    questions: list[str]
    output: str
    source: Path


def _prompt_file(type_: str, prompts_dir: str | Path | None) -> Path:
    if prompts_dir is not None:
        custom = Path(prompts_dir) / f"{type_}.yaml"
        if custom.is_file():
            return custom
    builtin = BUILTIN_PROMPTS / f"{type_}.yaml"
    if builtin.is_file():
        return builtin
    where = f"{prompts_dir} or the built-in prompts" if prompts_dir else "the built-in prompts"
    raise UsageError(f"no prompt file {type_}.yaml in {where}")


def _str_field(data: dict, key: str, path: Path, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{path}: `{key}` must be a non-empty string")
    return value.strip()


def parse_prompt_spec(type_: str, data: Any, path: Path) -> PromptSpec:
    """Validate a prompt file's content; unknown keys are errors (typos would go unnoticed)."""
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with `system` and `examples`")
    unknown = set(data) - {"system", "examples", "questions", "output"}
    if unknown:
        raise UsageError(f"{path}: unknown keys {sorted(unknown)}")
    output = data.get("output", DEFAULT_OUTPUT.get(type_, "single"))
    if output not in OUTPUT_KINDS:
        raise UsageError(f"{path}: `output` must be one of {OUTPUT_KINDS}, not {output!r}")
    examples = []
    for i, ex in enumerate(data.get("examples") or []):
        if not isinstance(ex, dict) or set(ex) - {"context", "answer", "question"}:
            raise UsageError(f"{path}: examples[{i}] must have `context`, `answer` (and optional `question`)")
        context, answer = _str_field(ex, "context", path), _str_field(ex, "answer", path)
        examples.append(Example(context, answer, _str_field(ex, "question", path, False)))
    questions = data.get("questions") or []
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise UsageError(f"{path}: `questions` must be a list of non-empty strings")
    if output == "single" and not questions:
        raise UsageError(f"{path}: a single-answer type needs a `questions` pool")
    system = _str_field(data, "system", path)
    return PromptSpec(type_, system, examples, [q.strip() for q in questions], output, path)


def load_prompts(types: list[str], prompts_dir: str | Path | None = None) -> dict[str, PromptSpec]:
    """Each type's prompt: `DIR/{type}.yaml` when present, else the built-in file."""
    specs = {}
    for type_ in types:
        path = _prompt_file(type_, prompts_dir)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UsageError(f"{path}: invalid YAML: {e}") from e
        specs[type_] = parse_prompt_spec(type_, data, path)
    return specs


def user_message(context: str, question: str | None) -> str:
    """What the teacher sees for one image: the context, then the request for single answers."""
    return context if question is None else f"{context}\n\nRequest: {question}"


def build_messages(spec: PromptSpec, context: str, question: str | None) -> list[dict]:
    """System message, few-shot pairs as user/assistant turns, then this image's context."""
    messages = [{"role": "system", "content": spec.system}]
    for ex in spec.examples:
        ex_question = ex.question if ex.question or spec.output != "single" else spec.questions[0]
        messages.append({"role": "user", "content": user_message(ex.context, ex_question)})
        messages.append({"role": "assistant", "content": ex.answer})
    messages.append({"role": "user", "content": user_message(context, question)})
    return messages


def pick_question(spec: PromptSpec, image: str, seed: int) -> str | None:
    """A question from the pool, fixed by (seed, image, type): stable across re-runs and orders."""
    if spec.output != "single":
        return None
    return random.Random(f"{seed}\0{image}\0{spec.type}").choice(spec.questions)


def record_id(image: str, type_: str) -> str:
    return f"{image}#{type_}"


# ---------------------------------------------------------------------------------------------
# The output file: append-only JSONL, one write per record, resumable


def _last_line_start(f: IO[bytes], end: int) -> int:
    """Offset just after the last b"\\n" before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return pos - step + idx + 1
        pos -= step
    return 0


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line (no trailing newline, or not a JSON object); return bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        end = size if f.read(1) == b"\n" else _last_line_start(f, size)
        if end == size:  # the last line is complete; check that it parses
            start = _last_line_start(f, size - 1)
            f.seek(start)
            if _parse_line(f.read(size - start)) is None:
                end = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end


def _parse_line(line: bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def read_done_ids(path: str | Path) -> tuple[set[str], int]:
    """Ids of the records already written, and the number of unreadable lines (left in place)."""
    done: set[str] = set()
    bad = 0
    if not Path(path).exists():
        return done, bad
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            obj = _parse_line(line)
            if obj is None or not isinstance(obj.get("id"), str):
                bad += 1
            else:
                done.add(obj["id"])
    return done, bad


class JsonlAppender:
    """Append whole lines with one `write()` each; `durable` adds an fsync per line."""

    def __init__(self, path: str | Path, durable: bool = True, lock: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if lock and fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise UsageError(f"{self.path} is being written by another run") from None

    def write(self, obj: dict) -> None:
        """Append one line. If the write fails (a full disk, say), the partial line is cut off again and an
        OSError says that the file is intact and the run can be resumed."""
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        start = os.fstat(self.fd).st_size
        try:
            self._write_all(data)
            if self.durable:
                os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass  # the next run's repair_tail removes the partial line
            raise OSError(e.errno, f"cannot write to {self.path} ({e.strerror or e}); the records written before "
                          "are intact: make room and re-run the same command to resume") from e

    def _write_all(self, data: bytes) -> None:
        written = os.write(self.fd, data)
        while written < len(data):  # only on a short write (disk full, signals); rare for files
            written += os.write(self.fd, data[written:])

    def close(self) -> None:
        os.close(self.fd)


def rejects_path(out: str | Path) -> Path:
    return Path(f"{out}.rejects.jsonl")


# ---------------------------------------------------------------------------------------------
# Settings and inputs


@dataclass
class Settings:
    base_url: str
    model: str
    api_key: str | None
    types: list[str]
    concurrency: int
    timeout: float
    retry: RetryPolicy
    reject_retries: int
    max_consecutive_failures: int
    temperature: float
    max_tokens: int
    seed: int
    price_in: float | None
    price_out: float | None
    progress: bool = True


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def parse_types(text: str) -> list[str]:
    types = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not types:
        raise UsageError("--types names no type")
    return types


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not args.base_url:
        raise UsageError("--teacher openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    if not args.model:
        raise UsageError("--teacher openai needs --model (the teacher model's name on that server)")
    for name in ("concurrency", "timeout", "max_tokens", "max_consecutive_failures"):
        _positive(name.replace("_", "-"), getattr(args, name))
    for name in ("max_retries", "reject_retries", "retry_base_delay", "retry_max_delay"):
        _positive(name.replace("_", "-"), getattr(args, name), allow_zero=True)
    env = getattr(args, "api_key_env", None)
    return Settings(
        base_url=args.base_url,
        model=args.model,
        api_key=os.environ.get(env) if env else None,
        types=parse_types(args.types),
        concurrency=args.concurrency,
        timeout=args.timeout,
        retry=RetryPolicy(args.max_retries, args.retry_base_delay, args.retry_max_delay),
        reject_retries=args.reject_retries,
        max_consecutive_failures=args.max_consecutive_failures,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        price_in=args.price_in,
        price_out=args.price_out,
        progress=not getattr(args, "no_progress", False),
    )


def load_contexts(args: argparse.Namespace) -> tuple[list[ImageContext], collections.Counter]:
    """Contexts from `--input` JSONL or `--captions` (+ `--instances`), unique images, `--limit`."""
    if args.input and (args.captions or args.instances):
        raise UsageError("give either --input or --captions/--instances, not both")
    if not args.input and not args.captions:
        raise UsageError("--teacher openai needs --input JSONL or --captions (and --instances)")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    try:
        contexts, skips = load_image_contexts(args.input, args.captions, args.instances)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from e
    unique: dict[str, ImageContext] = {}
    for ctx in contexts:
        if ctx.image in unique:
            skips["duplicate_image"] += 1
        else:
            unique[ctx.image] = ctx
    contexts = list(unique.values())
    if args.limit is not None:
        contexts = contexts[: args.limit]
    if not contexts:
        raise UsageError(f"no usable images in the input ({format_skips(skips)})")
    return contexts, skips


@dataclass
class Job:
    id: str
    image: str
    type: str
    question: str | None
    messages: list[dict]


def plan_jobs(
    contexts: list[ImageContext], specs: dict[str, PromptSpec], seed: int, done: set[str]
) -> list[Job]:
    """One job per (image, type) not yet in the output, image-major order."""
    jobs = []
    for ctx in contexts:
        text = format_context(ctx)
        for type_, spec in specs.items():
            rid = record_id(ctx.image, type_)
            if rid in done:
                continue
            question = pick_question(spec, ctx.image, seed)
            jobs.append(Job(rid, ctx.image, type_, question, build_messages(spec, text, question)))
    return jobs


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0
    written: int = 0
    failed: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    failures: collections.Counter = field(default_factory=collections.Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    consecutive_failures: int = 0
    stop_reason: str | None = None
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, price_in: float | None, price_out: float | None) -> float | None:
        if price_in is None and price_out is None:
            return None
        return self.prompt_tokens / 1e6 * (price_in or 0.0) + self.completion_tokens / 1e6 * (price_out or 0.0)


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class Generator:
    """Runs the jobs with `concurrency` requests in flight and writes what passes validation."""

    def __init__(
        self,
        settings: Settings,
        specs: dict[str, PromptSpec],
        out: JsonlAppender,
        rejects: JsonlAppender,
        stats: RunStats,
        on_progress: Callable[[RunStats], None] = lambda s: None,
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.out = out
        self.rejects = rejects
        self.stats = stats
        self.on_progress = on_progress

    async def run(self, jobs: list[Job]) -> None:
        s = self.settings
        client = TeacherClient(
            s.base_url, s.model, s.api_key, timeout=s.timeout, retry=s.retry, max_connections=s.concurrency,
            temperature=s.temperature, max_tokens=s.max_tokens,
        )
        queue: collections.deque[Job] = collections.deque(jobs)
        try:
            await _run_workers(s.concurrency, lambda: self._worker(client, queue))
        except StopRun:
            pass
        finally:
            await client.aclose()
            self.stats.requests = client.stats.requests
            self.stats.retries = client.stats.retries
            self.stats.errors = dict(client.stats.errors)

    async def _worker(self, client: TeacherClient, queue: collections.deque[Job]) -> None:
        while queue:
            job = queue.popleft()
            record = await self._attempt_job(client, job)
            if record is not None:
                self.out.write(record)
                self.stats.written += 1
                self.stats.consecutive_failures = 0
            self.on_progress(self.stats)

    async def _attempt_job(self, client: TeacherClient, job: Job) -> dict | None:
        """Ask up to 1 + reject_retries times; a record, or None after counting the failure."""
        spec = self.specs[job.type]
        for _ in range(1 + self.settings.reject_retries):
            try:
                completion = await client.complete(job.messages)
            except MalformedResponse as e:
                self._reject(job, Rejected("bad_response", str(e)), e.raw)
                continue
            except AuthError as e:
                self.stats.stop_reason = str(e)
                raise StopRun(str(e)) from None
            except RequestFailed as e:
                return self._fail(job, "request_failed", str(e))
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            try:
                turns = parse_output(spec.output, completion.text, completion.finish_reason, job.question)
            except Rejected as r:
                self._reject(job, r, completion.text)
                continue
            return make_record(job.id, job.image, turns, job.type, self.settings.model)
        return self._fail(job, "rejected", f"{1 + self.settings.reject_retries} outputs rejected")

    def _reject(self, job: Job, rejected: Rejected, raw: str | None) -> None:
        self.stats.rejected[rejected.reason] += 1
        self.rejects.write(
            {"id": job.id, "image": job.image, "type": job.type, "reason": rejected.reason,
             "detail": rejected.detail, "raw": raw, "time": time.time()}
        )
        _say(f"rejected {job.id}: {rejected}")

    def _fail(self, job: Job, kind: str, message: str) -> None:
        """Count a failed pair; raise `StopRun` when too many failed in a row."""
        self.stats.failed += 1
        self.stats.failures[kind] += 1
        self.stats.consecutive_failures += 1
        _say(f"failed {job.id}: {message}")
        limit = self.settings.max_consecutive_failures
        if self.stats.consecutive_failures >= limit:
            self.stats.stop_reason = f"{limit} pairs failed in a row; last: {job.id}: {message}"
            raise StopRun(self.stats.stop_reason)
        return None


async def _run_workers(n: int, make_worker: Callable[[], Awaitable[None]]) -> None:
    """Run n workers; the first exception cancels the rest and propagates."""
    tasks = [asyncio.ensure_future(make_worker()) for _ in range(n)]
    try:
        for next_done in asyncio.as_completed(tasks):
            await next_done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Command


def summary_lines(stats: RunStats, settings: Settings) -> list[str]:
    lines = [
        f"pairs: {stats.total} total, {stats.skipped} already present, {stats.written} written, "
        f"{stats.failed} failed",
        f"tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion",
        f"requests: {stats.requests} sent, {stats.retries} retried"
        + ("; errors: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.errors.items())) if stats.errors else ""),
    ]
    if stats.rejected:
        lines.append("rejected outputs: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.rejected.items())))
    cost = stats.cost(settings.price_in, settings.price_out)
    if cost is not None:
        prices = f"{settings.price_in or 0:g} in / {settings.price_out or 0:g} out per 1M tokens"
        lines.append(f"cost: {cost:.4f} (at {prices})")
    return lines


def _progress_bar(stats: RunStats, enabled: bool) -> tuple[Any, Callable[[RunStats], None]]:
    from tqdm import tqdm

    bar = tqdm(total=stats.total, initial=stats.skipped, unit="pair", file=sys.stderr, disable=not enabled,
               dynamic_ncols=True, desc="generate")
    last = {"done": stats.skipped}

    def update(s: RunStats) -> None:
        done = s.skipped + s.written
        bar.update(done - last["done"])
        last["done"] = done
        bar.set_postfix(failed=s.failed, rejected=sum(s.rejected.values()),
                        tokens=s.prompt_tokens + s.completion_tokens, refresh=False)

    return bar, update


def run_generate(args: argparse.Namespace) -> tuple[int, RunStats]:
    """The whole command; returns (exit code, stats). Raises `UsageError` on bad input."""
    settings = settings_from_args(args)
    specs = load_prompts(settings.types, args.prompts)
    contexts, skips = load_contexts(args)
    print(f"contexts: {len(contexts)} images; {format_skips(skips)}", file=sys.stderr)
    cut = repair_tail(args.out)
    if cut:
        print(f"{args.out}: removed a torn last line ({cut} bytes)", file=sys.stderr)
    out = JsonlAppender(args.out, durable=True, lock=True)
    try:
        done, bad = read_done_ids(args.out)
        if bad:
            print(f"{args.out}: {bad} unreadable lines left in place", file=sys.stderr)
        jobs = plan_jobs(contexts, specs, settings.seed, done)
        stats = RunStats(total=len(contexts) * len(specs))
        stats.skipped = stats.total - len(jobs)
        rejects = JsonlAppender(rejects_path(args.out), durable=False)
        bar, update = _progress_bar(stats, settings.progress)
        try:
            asyncio.run(Generator(settings, specs, out, rejects, stats, update).run(jobs))
        finally:
            bar.close()
            rejects.close()
    finally:
        out.close()
    print("\n".join(summary_lines(stats, settings)))
    if stats.stop_reason:
        print(f"stopped: {stats.stop_reason}", file=sys.stderr)
        return EXIT_STOPPED, stats
    if stats.failed or stats.written + stats.skipped < stats.total:
        print("some pairs are missing; re-run the same command to retry them", file=sys.stderr)
        return EXIT_INCOMPLETE, stats
    return EXIT_OK, stats


def generate_command_openai(args: argparse.Namespace) -> int:
    """Entry point for `vistune generate --teacher openai` (see `vistune.cli`)."""
    try:
        code, _ = run_generate(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return code
