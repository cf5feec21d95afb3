"""Ask an LLM judge many questions over any OpenAI-compatible endpoint, resumably.

The client is the one `vistune generate --teacher openai` uses (`vistune.llm_client`): requests in
flight up to `concurrency`, retries with backoff and Retry-After on 429/5xx/timeouts, 401/403 stop the
run at once. Each job's result is appended to a JSONL file with one write and an fsync; a re-run
cuts a torn last line, skips the ids already written and asks only what is missing. A reply that
the caller's parser rejects is re-asked up to `retries` times; after that the job is written as a
failure (so a re-run does not ask again) and counted.

Prompts live as YAML data files in `vistune/eval/prompts/`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

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
from vistune.utils.jsonl import JsonlAppender, read_done_ids

PROMPTS = Path(__file__).parent / "prompts"


class JudgeStopped(Exception):
    """The endpoint refused the key (401/403): nothing more can be asked."""


class JudgeConfigError(UserError, ValueError):
    """Judge options that cannot work (missing URL or model, non-positive limits)."""


@dataclass
class JudgeOptions:
    """How to reach and ask the judge."""

    base_url: str
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."""
    model: str
    """The judge model's name on that server."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (None or unset: no Authorization header)."""
    concurrency: int = 8
    """Requests in flight."""
    timeout: float = 120.0
    """Seconds per request."""
    max_retries: int = 6
    """Transport retries per request (429, 5xx, timeouts, dropped connections)."""
    retry_base_delay: float = 1.0
    """First backoff wait in seconds (doubles per retry, with jitter); a Retry-After header wins."""
    retry_max_delay: float = 60.0
    """Longest backoff wait in seconds."""
    retries: int = 2
    """Re-asks when a reply cannot be parsed; then the job is recorded as a failure."""
    temperature: float = 0.2
    """Judge sampling temperature."""
    max_tokens: int = 1024
    """Judge completion limit."""
    price_in: float | None = None
    """Price per million prompt tokens (for the cost line)."""
    price_out: float | None = None
    """Price per million completion tokens."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        problem = endpoint_problem(
            self.base_url, self.model,
            positive={n: getattr(self, n) for n in ("concurrency", "timeout", "max_tokens")},
            non_negative={n: getattr(self, n) for n in ("max_retries", "retries", "retry_base_delay",
                                                         "retry_max_delay", "temperature")})
        if problem:
            raise JudgeConfigError(f"judge {problem[0]} {problem[1]}")


@dataclass
class JudgeJob:
    """One question for the judge."""

    id: str
    """Key in the output file (unique per job; resume skips ids already written)."""
    messages: list[dict]
    """The chat messages sent."""
    record: dict
    """Fields written with the result."""


@dataclass
class JudgeStats:
    total: int = 0
    skipped: int = 0
    written: int = 0
    parse_failures: int = 0
    request_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def lines(self, options: JudgeOptions) -> list[str]:
        """The summary a command prints: counts, tokens, requests and (with prices) the cost."""
        out = [f"judge: {self.total} jobs, {self.skipped} already done, {self.written} written "
               f"({self.parse_failures} unparseable after retries), {self.request_failures} failed requests",
               f"tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion; "
               f"requests: {self.requests} sent, {self.retries} retried"
               + ("; errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) if self.errors else "")]
        if options.price_in is not None or options.price_out is not None:
            cost = self.prompt_tokens / 1e6 * (options.price_in or 0) + self.completion_tokens / 1e6 * (options.price_out or 0)
            out.append(f"cost: {cost:.4f} (at {options.price_in or 0:g} in / {options.price_out or 0:g} out per 1M tokens)")
        return out


def load_prompt(name: str) -> dict[str, Any]:
    """A prompt data file from the package: `prompts/{name}.yaml` as a mapping."""
    data = yaml.safe_load((PROMPTS / f"{name}.yaml").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{PROMPTS / name}.yaml: expected a mapping")
    return data


def run_judge(jobs: list[JudgeJob], out_path: str | Path, options: JudgeOptions,
              parse: Callable[[str], Any], make_record: Callable[[JudgeJob, str, Any], dict],
              desc: str = "judge") -> JudgeStats:
    """Ask every job not yet in `out_path`; write `make_record(job, text, parsed)` (parsed None on failure).

    Raises `JudgeStopped` on 401/403, after the work done so far is safely written.
    """
    from tqdm import tqdm

    cut = repair_jsonl_tail(out_path)
    if cut:
        tqdm.write(f"{out_path}: removed a torn last line ({cut} bytes)", file=sys.stderr)
    stats = JudgeStats(total=len(jobs))
    with JsonlAppender(out_path, durable=True, lock=True) as out:
        done, _ = read_done_ids(out_path)
        todo = [j for j in jobs if j.id not in done]
        stats.skipped = stats.total - len(todo)
        bar = tqdm(total=stats.total, initial=stats.skipped, desc=desc, unit="q", file=sys.stderr,
                   disable=not options.progress, dynamic_ncols=True)
        try:
            asyncio.run(_Runner(options, parse, make_record, out, stats, bar).run(todo))
        finally:
            bar.close()
    return stats


class _Runner:
    def __init__(self, options: JudgeOptions, parse, make_record, out: JsonlAppender, stats: JudgeStats, bar) -> None:
        self.o, self.parse, self.make_record, self.out, self.stats, self.bar = options, parse, make_record, out, stats, bar
        self.stop: str | None = None

    async def run(self, jobs: list[JudgeJob]) -> None:
        o = self.o
        client = ChatClient(o.base_url, o.model, os.environ.get(o.api_key_env) if o.api_key_env else None,
                            timeout=o.timeout, retry=RetryPolicy(o.max_retries, o.retry_base_delay, o.retry_max_delay),
                            max_connections=o.concurrency, temperature=o.temperature, max_tokens=o.max_tokens)
        queue = collections.deque(jobs)
        tasks = [asyncio.ensure_future(self._worker(client, queue)) for _ in range(o.concurrency)]
        try:
            for next_done in asyncio.as_completed(tasks):
                await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()
            self.stats.requests, self.stats.retries = client.stats.requests, client.stats.retries
            self.stats.errors = dict(client.stats.errors)

    async def _worker(self, client: ChatClient, queue: collections.deque) -> None:
        while queue:
            job = queue.popleft()
            result = await self._ask(client, job)
            if result is not None:
                text, parsed = result
                self.out.write({"id": job.id, **self.make_record(job, text, parsed)})
                self.stats.written += 1
            self.bar.update(1)
            self.bar.set_postfix(failed=self.stats.parse_failures + self.stats.request_failures, refresh=False)

    async def _ask(self, client: ChatClient, job: JudgeJob) -> tuple[str, Any] | None:
        text = ""
        for _ in range(1 + self.o.retries):
            try:
                completion = await client.complete(job.messages)
            except MalformedResponse as e:
                text = e.raw
                continue
            except AuthError as e:
                raise JudgeStopped(str(e)) from None
            except RequestFailed as e:
                self.stats.request_failures += 1
                from tqdm import tqdm

                tqdm.write(f"failed {job.id}: {e}", file=sys.stderr)
                return None
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            text = completion.text or ""
            parsed = self.parse(text)
            if parsed is not None:
                return text, parsed
        self.stats.parse_failures += 1
        return text, None
