"""`vistune serve`: an OpenAI-compatible chat-completions API (FastAPI), and a web chat page with --ui.

    app = create_app(Engine.from_checkpoint("runs/demo/stage2"), model_name="stage2")
    uvicorn.run(app, host="127.0.0.1", port=8000)

One worker thread owns the model; requests that wait while a batch runs are decoded together in the next
one. A streaming client that disconnects is cancelled: its row leaves the batch at the next token. Every
error is answered in OpenAI's shape; unexpected ones as a 500 without internals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HTTPRequest

from vistune.inference.engine import Completion, Engine, EngineWorker, Request, RequestError
from vistune.inference.generate import SamplingParams
from vistune.serve.images import decode_data_url, decode_image, fetch_remote, read_file_url
from vistune.serve.schemas import (
    APIError,
    ChatRequest,
    ServeLimits,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse_chat_request,
    parse_json,
    sse,
    usage_chunk_body,
)

log = logging.getLogger(__name__)


def create_app(engine: Engine, model_name: str = "vistune", api_key: str | None = None,
               image_root: str | os.PathLike | None = None, allow_remote_images: bool = False, ui: bool = False,
               limits: ServeLimits | None = None, worker: EngineWorker | None = None):
    """The ASGI app. `api_key`: required Bearer token for /v1 (None: open). `image_root`: where file://
    URLs may point (None: file URLs refused). `ui`: serve the chat page at /."""
    limits = limits or ServeLimits()
    root = Path(image_root).resolve() if image_root is not None else None
    worker = worker or EngineWorker(engine)

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="vistune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker = worker
    app.state.engine = engine
    app.state.limits = limits

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

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
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
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

    async def load_image(url: str, param: str):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return await run_in_threadpool(decode_data_url, url, limits, param)
        if scheme == "file":
            return await run_in_threadpool(read_file_url, url, root, limits, param)
        if scheme in ("http", "https"):
            if not allow_remote_images:
                raise APIError(400, "remote image URLs are disabled (start the server with --allow-remote-images)",
                               param=param, code="image_url_not_allowed")
            try:
                data = await asyncio.wait_for(fetch_remote(url, limits, param), limits.remote_timeout_s)
            except asyncio.TimeoutError:
                raise APIError(400, f"fetching the image took longer than {limits.remote_timeout_s} s",
                               param=param, code="image_fetch_failed") from None
            return await run_in_threadpool(decode_image, data, limits, param)
        raise APIError(400, "image URLs must be data:, file:// or http(s):// URLs", param=param,
                       code="invalid_image_url")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queued": worker.pending()}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "vistune"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        check_key(request)
        parsed = parse_chat_request(parse_json(await read_body(request)), limits)
        if parsed.model is not None and parsed.model != model_name:
            raise APIError(404, f"the model {parsed.model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        images = [await load_image(url, param) for url, param in parsed.image_urls]
        try:
            params = SamplingParams(max_new_tokens=parsed.max_tokens, temperature=parsed.temperature,
                                    top_p=parsed.top_p, seed=parsed.seed, stop=parsed.stop)
        except ValueError as e:
            raise APIError(400, str(e), code="invalid_value") from None
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = worker.submit(Request(parsed.messages, images, params),
                            lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)))
        try:
            first = await next_event(events, request, job)
        except BaseException:
            job.cancel()
            raise
        if first[0] == "error":
            raise as_api_error(first[1])
        if first == ("done", None):  # the client went away before the first token
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
        rid = new_id()
        if parsed.stream:
            return StreamingResponse(stream_events(rid, parsed, first, events, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, kind, payload = [], *first
        try:
            while kind == "text":
                text.append(payload)
                kind, payload = await next_event(events, request, job)
        finally:
            job.cancel()  # no-op when finished; frees the slot when the client went away
        if kind == "error":
            raise as_api_error(payload)
        if payload is None:  # client disconnected
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
        done: Completion = payload
        return completion_body(rid, model_name, done.text, done.finish_reason, done.prompt_tokens,
                               done.completion_tokens)

    async def next_event(events: asyncio.Queue, request: HTTPRequest, job) -> tuple[str, object]:
        """The job's next event; ("done", None) when the client disconnects first."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return ("done", None)

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
        from vistune.serve.ui import add_ui

        add_ui(app, model_name)
    return app


def as_api_error(exc: object) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestError):
        return APIError(400, str(exc), param="messages", code="invalid_value")
    log.error("generation failed", exc_info=exc if isinstance(exc, BaseException) else None)
    return APIError(500, "internal server error", type="server_error")
