"""`vistune serve`: an OpenAI-compatible chat-completions API (FastAPI), and a web chat page with --ui.

    app = create_app(Engine.from_checkpoint("runs/demo/stage2"), model_name="stage2")
    uvicorn.run(app, host="127.0.0.1", port=8000)

One worker thread owns the model; requests that wait while a batch runs are decoded together in the next
one. A streaming client that disconnects is cancelled: its row leaves the batch at the next token. Every
error is answered in OpenAI's shape; unexpected ones as a 500 without internals.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Sequence

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HTTPRequest

from vistune.inference.engine import Completion, Engine, EngineBusy, EngineWorker, Request, RequestError
from vistune.inference.generate import SamplingError, SamplingParams
from vistune.serve.images import ImageLoader, RemoteFetcher, Resolver
from vistune.serve.schemas import (
    APIError,
    ChatRequest,
    ServeLimits,
    chat_openapi,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse_chat_request,
    parse_json,
    sse,
    usage_chunk_body,
)
from vistune.serve.ui import add_ui
from vistune.version import __version__

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("localhost",)
"""Host names always accepted in the Host header (IP literals are always accepted too: DNS rebinding needs a
name the attacker controls)."""


def host_name(value: str) -> str:
    """The host part of a Host header or an Origin's authority, lower-case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware against cross-site use of a local server: a Host header naming a host other than an IP
    literal, localhost or an allowed name is refused (DNS rebinding), and so is a POST that is not JSON (a
    cross-origin form or text/plain POST needs no CORS preflight) or whose Origin is another site."""

    def __init__(self, app, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in (*LOCAL_HOSTS, *allowed_hosts) if h}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                status, message, code = problem
                await JSONResponse(error_body(message, "invalid_request_error", None, code),
                                   status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, scope) -> tuple[int, str, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if host is not None:
            name = host_name(host)
            if not (is_ip_literal(name) or name in self.allowed or name.endswith(".localhost")):
                return 421, "this server does not answer for that host name", "host_not_allowed"
        if scope.get("method") == "POST":
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return 415, "requests must have 'Content-Type: application/json'", "unsupported_media_type"
            origin = headers.get("origin")
            if origin is not None and (host is None or origin.split("://", 1)[-1].lower() != host.lower()):
                return 403, "cross-origin requests are not accepted", "cross_origin"
        return None


class ReleasingStream(StreamingResponse):
    """A streaming response that calls `release` when it ends, also when the client left before the first
    event (the body generator's own `finally` never runs if the generator never started)."""

    def __init__(self, content, release, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def create_app(engine: Engine, model_name: str = "vistune", api_key: str | None = None,
               image_root: str | os.PathLike | None = None, allow_remote_images: bool = False, ui: bool = False,
               limits: ServeLimits | None = None, worker: EngineWorker | None = None,
               allow_private_image_hosts: bool = False, allowed_hosts: Sequence[str] = (),
               resolver: Resolver | None = None, image_transport=None):
    """The ASGI app. `api_key`: required Bearer token for /v1 (None: open). `image_root`: where file://
    URLs may point (None: file URLs refused). `allow_remote_images`: fetch http(s) image URLs, from public
    addresses only unless `allow_private_image_hosts`. `allowed_hosts`: host names (besides IP literals and
    localhost) the Host header may carry, e.g. the name the server is reached by. `resolver` and
    `image_transport` replace DNS and the HTTP transport for remote images (tests). `ui`: the chat page at /."""
    limits = limits or ServeLimits()
    root = Path(image_root).resolve() if image_root is not None else None
    worker = worker or EngineWorker(engine, max_queue=limits.max_pending)
    processor = engine.model.image_processor
    fetcher = RemoteFetcher(limits, allow_private_image_hosts, resolver, image_transport) \
        if allow_remote_images else None
    images = ImageLoader(limits, root, fetcher, processor.fit if processor.fit_is_stable else None)
    key_digest = hashlib.sha256(api_key.encode()).digest() if api_key is not None else None
    admitted = 0

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="vistune", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts)
    app.state.worker = worker
    app.state.engine = engine
    app.state.limits = limits

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, None),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse(error_body(f"invalid request: {where} {first.get('msg', '')}".strip(),
                                       "invalid_request_error", where or None), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):
        log.error("unexpected error", exc_info=exc)
        return JSONResponse(error_body("internal server error", "server_error", None, None), status_code=500)

    def check_key(request: HTTPRequest) -> None:
        """Constant time: the digests of the sent and the expected key are compared, whatever their lengths."""
        if key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        sent = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(sent, key_digest) or scheme.lower() != "bearer":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    async def read_body(request: HTTPRequest) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise APIError(413, f"request body larger than {limits.max_request_bytes} bytes",
                           code="request_too_large")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limits.max_request_bytes:
                raise APIError(413, f"request body larger than {limits.max_request_bytes} bytes",
                               code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queued": worker.pending(), "running": worker.running,
                "admitted": admitted}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "vistune"}]}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: HTTPRequest):
        check_key(request)
        return app.openapi()

    @app.post("/v1/chat/completions", openapi_extra=chat_openapi(limits), response_model=None)
    async def chat_completions(request: HTTPRequest):
        nonlocal admitted
        check_key(request)
        if admitted >= limits.max_pending:
            raise APIError(503, "the server is busy; try again shortly", type="server_error",
                           code="server_overloaded", headers={"Retry-After": "1"})
        admitted += 1
        released = False

        def release() -> None:  # exactly once, however the request ends
            nonlocal admitted, released
            if not released:
                released = True
                admitted -= 1

        streaming = False
        try:
            job, parsed, events = await admit(request)
            if parsed.stream:
                first = await next_event(events, request, job)
                if first[0] == "error":
                    job.cancel()
                    raise as_api_error(first[1])
                streaming = True

                def end_stream() -> None:
                    job.cancel()  # no-op when finished
                    release()

                return ReleasingStream(stream_events(new_id(), parsed, first, events, job), end_stream,
                                       media_type="text/event-stream",
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return await complete(request, job, events)
        finally:
            if not streaming:
                release()

    async def admit(request: HTTPRequest):
        """Parse, check and load everything of a request in this thread pool, then queue it for the engine."""
        body = await read_body(request)
        data = await run_in_threadpool(parse_json, body) if len(body) > 65536 else parse_json(body)
        del body
        parsed = parse_chat_request(data, limits)
        del data
        if parsed.model is not None and parsed.model != model_name:
            raise APIError(404, f"the model {parsed.model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        loaded = [await images.load(url, param) for url, param in parsed.image_urls]
        try:
            params = SamplingParams(max_new_tokens=parsed.max_tokens, temperature=parsed.temperature,
                                    top_p=parsed.top_p, seed=parsed.seed, stop=parsed.stop)
        except SamplingError as e:
            raise APIError(400, str(e), param=str(e).split(" ", 1)[0], code="invalid_value") from None
        try:
            checked = await run_in_threadpool(engine.check, Request(parsed.messages, loaded, params))
        except RequestError as e:
            raise APIError(400, str(e), param="messages", code="invalid_value") from None
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            job = worker.submit(checked, lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait,
                                                                                          (kind, payload)))
        except EngineBusy:
            raise APIError(503, "the server is busy; try again shortly", type="server_error",
                           code="server_overloaded", headers={"Retry-After": "1"}) from None
        return job, parsed, events

    async def complete(request: HTTPRequest, job, events: asyncio.Queue):
        """A non-streaming answer; the job is cancelled as soon as the client disconnects."""
        watcher = asyncio.create_task(cancel_on_disconnect(request, job))
        try:
            text_seen = True
            while text_seen:
                kind, payload = await events.get()
                text_seen = kind == "text"
        finally:
            job.cancel()  # no-op when finished
            watcher.cancel()
        if kind == "error":
            raise as_api_error(payload)
        done: Completion = payload
        if done.finish_reason == "cancelled":
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
        return completion_body(new_id(), model_name, done.text, done.finish_reason, done.prompt_tokens,
                               done.completion_tokens)

    async def cancel_on_disconnect(request: HTTPRequest, job, every_s: float = 0.25) -> None:
        while not job.cancelled.is_set():
            if await request.is_disconnected():
                job.cancel()
                return
            await asyncio.sleep(every_s)

    async def next_event(events: asyncio.Queue, request: HTTPRequest, job) -> tuple[str, object]:
        """The job's next event; the job is cancelled meanwhile if the client disconnects."""
        watcher = asyncio.create_task(cancel_on_disconnect(request, job))
        try:
            return await events.get()
        finally:
            watcher.cancel()

    async def stream_events(rid: str, parsed: ChatRequest, first, events: asyncio.Queue, job) -> AsyncIterator[bytes]:
        try:
            yield sse(chunk_body(rid, model_name, {"role": "assistant", "content": ""}))
            kind, payload = first
            while kind == "text":
                yield sse(chunk_body(rid, model_name, {"content": payload}))
                kind, payload = await events.get()
            if kind == "error":
                e = as_api_error(payload)
                yield sse(e.body())
            else:
                done: Completion = payload
                yield sse(chunk_body(rid, model_name, {}, done.finish_reason))
                if parsed.include_usage:
                    yield sse(usage_chunk_body(rid, model_name, done.prompt_tokens, done.completion_tokens))
            yield sse("[DONE]")
        finally:
            job.cancel()  # the client went away (or we finished): stop generating for it

    if ui:
        add_ui(app, model_name)
    return app


def as_api_error(exc: object) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestError):
        return APIError(400, str(exc), param="messages", code="invalid_value")
    log.error("generation failed", exc_info=exc if isinstance(exc, BaseException) else None)
    return APIError(500, "internal server error", type="server_error")
