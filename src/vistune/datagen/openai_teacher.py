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

import asyncio
import collections
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import yaml

from vistune.data.annotations import (
    ContextSource,
    ImageContext,
    format_context,
    format_skips,
    load_contexts,
    make_record,
)
from vistune.datagen.parse import OUTPUT_KINDS, Rejected, parse_output
from vistune.errors import UserError
from vistune.llm_client import (
    AuthError,
    ChatClient,
    MalformedResponse,
    RequestFailed,
    RetryPolicy,
    endpoint_problem,
)
from vistune.utils.io import repair_jsonl_tail
from vistune.utils.jsonl import JsonlAppender as _JsonlAppender
from vistune.utils.jsonl import read_done_ids

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
    if output != "single" and questions:
        raise UsageError(f"{path}: `questions` is a pool for `output: single`; with `output: {output}` the teacher "
                         "writes the questions itself")
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


def teacher_record_id(image: str, type_: str) -> str:
    return f"{image}#{type_}"


# ---------------------------------------------------------------------------------------------
# The output file: append-only JSONL, one write per record, resumable


class JsonlAppender(_JsonlAppender):
    """The output file's appender; a second writer is a usage error."""

    locked_error = UsageError


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

    def __post_init__(self) -> None:
        if not self.types:
            raise UsageError("--types names no type")
        problem = endpoint_problem(
            self.base_url, self.model,
            positive={n: getattr(self, n) for n in ("concurrency", "timeout", "max_tokens",
                                                     "max_consecutive_failures")},
            non_negative={"reject_retries": self.reject_retries, "max_retries": self.retry.max_retries,
                          "retry_base_delay": self.retry.base_delay, "retry_max_delay": self.retry.max_delay})
        if problem:
            raise UsageError(f"--teacher openai: --{problem[0].replace('_', '-')} {problem[1]}")


@dataclass
class TeacherJob:
    id: str
    image: str
    type: str
    question: str | None
    messages: list[dict]


def plan_jobs(
    contexts: list[ImageContext], specs: dict[str, PromptSpec], seed: int, done: set[str]
) -> list[TeacherJob]:
    """One job per (image, type) not yet in the output, image-major order."""
    jobs = []
    for ctx in contexts:
        text = format_context(ctx)
        for type_, spec in specs.items():
            rid = teacher_record_id(ctx.image, type_)
            if rid in done:
                continue
            question = pick_question(spec, ctx.image, seed)
            jobs.append(TeacherJob(rid, ctx.image, type_, question, build_messages(spec, text, question)))
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


class TeacherRun:
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

    async def run(self, jobs: list[TeacherJob]) -> None:
        s = self.settings
        client = ChatClient(
            s.base_url, s.model, s.api_key, timeout=s.timeout, retry=s.retry, max_connections=s.concurrency,
            temperature=s.temperature, max_tokens=s.max_tokens,
        )
        queue: collections.deque[TeacherJob] = collections.deque(jobs)
        try:
            await _run_workers(s.concurrency, lambda: self._worker(client, queue))
        except StopRun:
            pass
        finally:
            await client.aclose()
            self.stats.requests = client.stats.requests
            self.stats.retries = client.stats.retries
            self.stats.errors = dict(client.stats.errors)

    async def _worker(self, client: ChatClient, queue: collections.deque[TeacherJob]) -> None:
        while queue:
            job = queue.popleft()
            record = await self._attempt_job(client, job)
            if record is not None:
                self.out.write(record)
                self.stats.written += 1
                self.stats.consecutive_failures = 0
            self.on_progress(self.stats)

    async def _attempt_job(self, client: ChatClient, job: TeacherJob) -> dict | None:
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

    def _reject(self, job: TeacherJob, rejected: Rejected, raw: str | None) -> None:
        self.stats.rejected[rejected.reason] += 1
        self.rejects.write(
            {"id": job.id, "image": job.image, "type": job.type, "reason": rejected.reason,
             "detail": rejected.detail, "raw": raw, "time": time.time()}
        )
        _say(f"rejected {job.id}: {rejected}")

    def _fail(self, job: TeacherJob, kind: str, message: str) -> None:
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


def generate_openai(settings: Settings, source: ContextSource, out: str | Path,
                    prompts_dir: str | Path | None = None) -> tuple[int, RunStats]:
    """`vistune generate --teacher openai`: ask the teacher for every (image, type) pair not yet in `out`
    (append-only JSONL, resumable). Returns (exit code, stats); raises `UsageError` on bad input."""
    specs = load_prompts(settings.types, prompts_dir)
    contexts, skips = load_contexts(source)
    print(f"contexts: {len(contexts)} images; {format_skips(skips)}", file=sys.stderr)
    cut = repair_jsonl_tail(out)
    if cut:
        print(f"{out}: removed a torn last line ({cut} bytes)", file=sys.stderr)
    writer = JsonlAppender(out, durable=True, lock=True)
    try:
        done, bad = read_done_ids(out)
        if bad:
            print(f"{out}: {bad} unreadable lines left in place", file=sys.stderr)
        jobs = plan_jobs(contexts, specs, settings.seed, done)
        stats = RunStats(total=len(contexts) * len(specs))
        stats.skipped = stats.total - len(jobs)
        rejects = JsonlAppender(rejects_path(out), durable=False)
        bar, update = _progress_bar(stats, settings.progress)
        try:
            asyncio.run(TeacherRun(settings, specs, writer, rejects, stats, update).run(jobs))
        finally:
            bar.close()
            rejects.close()
    finally:
        writer.close()
    print("\n".join(summary_lines(stats, settings)))
    if stats.stop_reason:
        print(f"stopped: {stats.stop_reason}", file=sys.stderr)
        return EXIT_STOPPED, stats
    if stats.failed or stats.written + stats.skipped < stats.total:
        print("some pairs are missing; re-run the same command to retry them", file=sys.stderr)
        return EXIT_INCOMPLETE, stats
    return EXIT_OK, stats
