"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol, for tests.

Answers are canned but derived from the request: the image key (`scene-NNNN`, which the test
contexts put in their first caption) and the object lines of the context, so a test can check
that each record holds its own image's content. The type comes from the system message.

Faults are injected per (key, type) and attempt number, from a fixed `schedule` or a `chooser`
function: 429 (with Retry-After), 500, 503, slow (sleeps past the client's timeout), drop (closes
the socket without a response), garbage, empty, truncated (finish_reason "length"), bad_json
(a 200 whose body is not JSON), 400, 401, 403.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

KEY = re.compile(r"scene-\d+")
BOX_LINE = re.compile(r"^(.+?): \[[0-9., ]+\]$", re.MULTILINE)


@dataclass
class Fault:
    kind: str = "ok"
    retry_after: str | None = None


@dataclass
class Attempt:
    key: str
    type: str
    fault: str
    start: float
    messages: list[dict]
    headers: dict[str, str]


Chooser = Callable[[str, str, int], "Fault | str"]


def image_key(context: str) -> str:
    """`scene-NNNN` from the test contexts, else a digest of the whole context."""
    match = KEY.search(context)
    return match.group(0) if match else "ctx-" + hashlib.sha1(context.encode()).hexdigest()[:12]


def canned_answer(type_: str, context: str) -> str:
    """A valid teacher answer for the request's context; tests recompute it to check records."""
    key = image_key(context)
    labels = BOX_LINE.findall(context)
    first = context.splitlines()[0] if context else ""
    if type_ == "conversation":
        return (
            f"Question: What does the picture show?\nAnswer: {first}\n===\n"
            f"Question: How many objects are there?\nAnswer: There are {len(labels)} objects in {key}."
        )
    answer = f"This {type_} answer is about {key}: there are {len(labels)} objects, {', '.join(labels)}."
    if type_ == "complex":  # the teacher writes the reasoning question and its answer
        return f"Question: What follows from the arrangement in {key}?\nAnswer: {answer}"
    return answer


def context_of(messages: list[dict]) -> str:
    """The image's context: the last user message without its `Request:` line."""
    text = messages[-1]["content"]
    return text.split("\n\nRequest: ")[0]


class FakeTeacher:
    """Start with `start()` (returns the base URL, ending in /v1), stop with `stop()`."""

    def __init__(
        self,
        system_to_type: dict[str, str],
        *,
        schedule: dict[tuple[str, str], list[Fault | str]] | None = None,
        chooser: Chooser | None = None,
        delay: float | Callable[[], float] = 0.0,
        slow_delay: float = 2.0,
        auth_message: str = "Incorrect API key provided: sk-test***. Check your key.",
        usage: tuple[int, int] = (100, 20),
        responder: Callable[[list[dict]], str] | None = None,
        key_of: Callable[[list[dict]], str] | None = None,
    ) -> None:
        self.system_to_type = system_to_type
        self.schedule = schedule or {}
        self.chooser = chooser
        self.delay = delay
        self.slow_delay = slow_delay
        self.auth_message = auth_message
        self.usage = usage
        self.responder = responder  # messages -> reply text (default: a teacher's canned answer)
        self.key_of = key_of  # messages -> fault key (default: the image key of the context)
        self.attempts: list[Attempt] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        teacher = self

        class Handler(_Handler):
            owner = teacher

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 256
        server.server_bind()
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping ---------------------------------------------------------------------------

    def attempts_for(self, key: str, type_: str) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.key == key and a.type == type_]

    def pair_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for a in self.attempts:
                counts[(a.key, a.type)] = counts.get((a.key, a.type), 0) + 1
        return counts

    def _register(self, messages: list[dict], headers: dict[str, str]) -> tuple[Attempt, Fault]:
        system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        type_ = self.system_to_type.get(system, "unknown")
        if self.key_of is not None:
            key = self.key_of(messages)
        else:
            key = image_key(context_of(messages)) if messages else "unknown"
        with self._lock:
            n = sum(1 for a in self.attempts if a.key == key and a.type == type_)
            fault = self._fault(key, type_, n)
            attempt = Attempt(key, type_, fault.kind, time.monotonic(), messages, headers)
            self.attempts.append(attempt)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return attempt, fault

    def _fault(self, key: str, type_: str, n: int) -> Fault:
        if self.chooser is not None:
            f = self.chooser(key, type_, n)
        else:
            plan = self.schedule.get((key, type_), [])
            f = plan[n] if n < len(plan) else "ok"
        return Fault(f) if isinstance(f, str) else f

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _delay(self) -> float:
        return self.delay() if callable(self.delay) else self.delay


def completion_body(model: str, content: str, usage: tuple[int, int], finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeTeacher

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client went away mid-request
            self.close_connection = True
            return
        body = json.loads(raw or b"{}")
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        messages = body.get("messages") or []
        attempt, fault = self.owner._register(messages, {k.lower(): v for k, v in self.headers.items()})
        try:
            time.sleep(self.owner._delay())
            self._respond(fault, attempt, body.get("model", ""), messages)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered
        finally:
            self.owner._done()

    def _respond(self, fault: Fault, attempt: Attempt, model: str, messages: list[dict]) -> None:
        kind = fault.kind
        usage = self.owner.usage
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind in ("429", "500", "503", "400", "401", "403"):
            message = self.owner.auth_message if kind in ("401", "403") else f"injected {kind}"
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._json(int(kind), {"error": {"message": message, "type": "test"}}, headers)
            return
        if kind == "bad_json":
            self._raw(200, b"<html>upstream proxy error</html>", "text/html")
            return
        if kind == "slow":
            time.sleep(self.owner.slow_delay)
        if self.owner.responder is not None:
            content = self.owner.responder(messages)
        else:
            content = canned_answer(attempt.type, context_of(messages))
        finish = "stop"
        if kind == "garbage":
            content = "#@!% ~~ 42 ?? ###"
        elif kind == "empty":
            content = ""
        elif kind == "truncated":
            finish = "length"
        self._json(200, completion_body(model, content, usage, finish))

    def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(obj).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


@dataclass
class RandomFaults:
    """A deterministic fault per (key, type, attempt) for soak runs: faults only on the first
    `faulty_attempts` attempts of a pair, so every pair eventually succeeds."""

    rate: float = 0.2
    kinds: tuple[str, ...] = ("429", "500", "drop", "garbage", "empty", "slow", "truncated", "bad_json")
    faulty_attempts: int = 2
    seed: int = 0
    chosen: dict[str, int] = field(default_factory=dict)

    def __call__(self, key: str, type_: str, n: int) -> Fault:
        import random

        if n >= self.faulty_attempts:
            return Fault("ok")
        rng = random.Random(f"{self.seed}:{key}:{type_}:{n}")
        if rng.random() >= self.rate:
            return Fault("ok")
        kind = rng.choice(self.kinds)
        self.chosen[kind] = self.chosen.get(kind, 0) + 1
        return Fault(kind, retry_after="0" if kind == "429" else None)
