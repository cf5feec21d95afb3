"""Async client for any OpenAI-compatible `/v1/chat/completions` endpoint, with its own retries.

Shared by the data generator (teacher) and the evaluation judges.

Retried (exponential backoff with jitter, up to `RetryPolicy.max_retries` times): HTTP 429 and
5xx, 408, connection errors (refused, reset, closed without a response) and timeouts. A
`Retry-After` header (seconds or an HTTP date; or `retry-after-ms`) sets the wait instead of the backoff, and pauses
every request of this client until then, since a rate limit applies to the whole key.

Not retried: 401/403 raise `AuthError` (the caller stops the run at once); other 4xx raise
`RequestFailed`. A 200 whose body is not a chat completion raises `MalformedResponse`, which the
caller treats like a rejected output.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ClientError(Exception):
    """A request to the endpoint did not produce a completion."""


class AuthError(ClientError):
    """401/403: the key is missing, wrong or lacks access. Retrying cannot help."""


class RequestFailed(ClientError):
    """A non-retryable HTTP error (400, 404, 422, ...) or retries exhausted."""


class MalformedResponse(ClientError):
    """HTTP 200 whose body is not a chat completion; `raw` holds the body text."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    """How transient failures are retried."""

    max_retries: int = 6  # retries after the first attempt
    base_delay: float = 1.0  # seconds; the n-th retry waits about base * 2**n
    max_delay: float = 60.0  # cap on a backoff wait (a server's Retry-After is not capped)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Equal jitter: half the exponential step fixed, half random."""
        step = min(self.max_delay, self.base_delay * (2**retry))
        return step / 2 + rng.uniform(0, step / 2)


def endpoint_problem(base_url: str, model: str, positive: dict[str, float],
                     non_negative: dict[str, float]) -> tuple[str, str] | None:
    """The first thing wrong with how an endpoint is to be used, as (option, problem), or None.

    `base_url` and `model` must be given; `positive` options must be > 0, `non_negative` ones >= 0.
    The teacher and the judges word the message for their own flags."""
    if not base_url:
        return "base_url", "is needed (e.g. http://127.0.0.1:8000/v1)"
    if not model:
        return "model", "is needed (the model's name on that server)"
    for name, value in positive.items():
        if value <= 0:
            return name, f"must be > 0, got {value}"
    for name, value in non_negative.items():
        if value < 0:
            return name, f"must be >= 0, got {value}"
    return None


@dataclass
class ChatReply:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


@dataclass
class ClientStats:
    """Counts over the client's life, for the progress bar and the summary."""

    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The server's requested wait: `retry-after-ms` (sent by some APIs) or `Retry-After`."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI-style `{"error": {"message"}}`, FastAPI `detail`, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(body.get("detail"), str):
            return body["detail"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return json.dumps(body)[:500]


def parse_completion(response: httpx.Response, attempts: int) -> ChatReply:
    """Read choices[0].message.content, finish_reason and usage; raise `MalformedResponse`."""
    try:
        body = response.json()
        choice = body["choices"][0]
        text = choice["message"]["content"]
        if text is not None and not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise MalformedResponse(f"not a chat completion ({type(e).__name__}: {e})", response.text) from e
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return ChatReply(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=attempts,
    )


class ChatClient:
    """One connection pool; `complete()` may be awaited from many tasks at once."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 8,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._paused_until = 0.0  # monotonic time before which no request is sent (Retry-After)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout), limits=limits)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def body(self, messages: list[dict]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    async def complete(self, messages: list[dict]) -> ChatReply:
        """One chat completion, retrying transient failures; raises `ClientError` subclasses."""
        retries = 0
        while True:
            await self._wait_for_pause()
            try:
                return await self._attempt(messages, retries + 1)
            except _Retryable as e:
                if retries >= self.retry.max_retries:
                    raise RequestFailed(f"gave up after {retries + 1} attempts; last error: {e}") from None
                delay = self._delay(e, retries)
                log.info("retrying in %.2fs after: %s", delay, e)
                retries += 1
                self.stats.retries += 1
                await asyncio.sleep(delay)

    def _delay(self, error: _Retryable, retries: int) -> float:
        if error.retry_after is None:
            return self.retry.backoff(retries, self._rng)
        # Honour the server, plus a little jitter so waiting tasks do not return in lockstep.
        delay = error.retry_after + self._rng.uniform(0, min(1.0, self.retry.base_delay) / 4)
        self._paused_until = max(self._paused_until, time.monotonic() + error.retry_after)
        return delay

    async def _wait_for_pause(self) -> None:
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _attempt(self, messages: list[dict], attempt: int) -> ChatReply:
        self.stats.requests += 1
        try:
            response = await asyncio.wait_for(self._http.post(self.url, json=self.body(messages)), self.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException) as e:
            self.stats.error("timeout")
            raise _Retryable(f"timed out after {self.timeout:g}s ({type(e).__name__})") from None
        except httpx.TransportError as e:
            self.stats.error("connection")
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None
        if response.status_code == 200:
            return parse_completion(response, attempt)
        message = error_message(response)
        self.stats.error(f"http_{response.status_code}")
        if response.status_code in (401, 403):
            raise AuthError(f"HTTP {response.status_code} from {self.url}: {message}")
        if response.status_code in RETRY_STATUS or response.status_code >= 500:
            retry_after = retry_after_seconds(response.headers)
            raise _Retryable(f"HTTP {response.status_code}: {message}", retry_after)
        raise RequestFailed(f"HTTP {response.status_code} from {self.url}: {message}")
