"""The OpenAI chat-completions wire format: request parsing with precise errors, and response bodies.

Requests are checked by hand rather than by a schema library so that every problem becomes an OpenAI-shaped
error naming the offending field (`{"error": {"message", "type", "param", "code"}}`), and so that an explicit
`temperature: 0` is kept as 0 (greedy), never replaced by a default.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vistune.conversation import IMAGE_PLACEHOLDER, Message, RenderError, validate_messages
from vistune.inference.generate import SEED_MAX, SEED_MIN


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    max_images: int = 1
    """Images per request, over all its messages (`vistune serve --max-images`); one by default, as LLaVA's
    recipes train with one image per conversation."""
    max_image_bytes: int = 10 * 1024 * 1024
    """Largest encoded image (bytes), whether inline, a file or downloaded."""
    max_image_pixels: int = 40_000_000
    """Largest image (width x height); checked before the pixels are decoded."""
    max_request_bytes: int = 16 * 1024 * 1024
    """Largest request body."""
    max_tokens: int = 4096
    """Largest `max_tokens` a request may ask for."""
    default_max_tokens: int = 512
    """Answer length limit when a request gives no `max_tokens`."""
    default_temperature: float = 0.0
    """Temperature when a request gives none; 0 (greedy, like every vistune command) unless `vistune serve
    --temperature` says otherwise."""
    default_top_p: float = 1.0
    """Nucleus mass when a request gives no `top_p`."""
    default_seed: int | None = None
    """Sampling seed when a request gives none (None: a fresh one per request)."""
    max_stop: int = 4
    """Most stop strings per request."""
    remote_timeout_s: float = 10.0
    """Time limit for fetching one http(s) image (with --allow-remote-images), redirects included."""
    max_aspect_ratio: float = 32.0
    """Longest image side / shortest (a 1 x 40M image would otherwise resize to billions of pixels)."""
    max_concurrent_decodes: int = 2
    """Images decoded at once; each is shrunk to the model's input size right after decoding, so decoding
    memory is bounded by about this many times max_image_pixels x 4 bytes."""
    max_prompt_chars: int = 400_000
    """Characters of message text per request, checked before tokenizing."""
    max_pending: int = 128
    """Requests admitted at once (reading, decoding, queued or generating); more get a 503 at once."""


@dataclass
class ChatRequest:
    """A parsed chat-completions request; images are still URLs (resolved by the app)."""

    model: str | None
    messages: list[Message]
    image_urls: list[tuple[str, str]]
    """(url, param path) per image, in the order of the `<image>` placeholders in `messages`."""
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    extra: dict = field(default_factory=dict)


def parse_json(body: bytes) -> Any:
    """Decoded JSON; APIError (400) for invalid JSON, nesting too deep to decode, or invalid Unicode (a lone
    surrogate such as "\\ud800", which no tokenizer can encode)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    check_unicode(data)
    return data


def check_unicode(data: Any) -> None:
    """APIError (400) if any string (key or value) in decoded JSON is not encodable as UTF-8."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, "the request contains invalid Unicode (a lone surrogate)",
                               code="invalid_json") from None


def _number(data: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    if key not in data or data[key] is None:
        return default
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise APIError(400, f"'{key}' must be a number", param=key, code="invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        interval = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise APIError(400, f"'{key}' must be in {interval}, got {v}", param=key, code="invalid_value")
    return float(v)


def _integer(data: dict, key: str) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise APIError(400, f"'{key}' must be an integer", param=key, code="invalid_type")
    return v


def parse_chat_request(data: Any, limits: ServeLimits) -> ChatRequest:
    """Check a decoded JSON body; raises APIError (400) naming the first problem."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", param="model", code="invalid_type")
    messages, image_urls = parse_messages(data.get("messages"), limits)

    max_tokens = _integer(data, "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _integer(data, "max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    elif not 1 <= max_tokens <= limits.max_tokens:
        raise APIError(400, f"'{key}' must be between 1 and {limits.max_tokens}, got {max_tokens}", param=key,
                       code="invalid_value")
    temperature = _number(data, "temperature", limits.default_temperature, 0.0, 2.0)
    top_p = _number(data, "top_p", limits.default_top_p, 0.0, 1.0, lo_open=True)
    seed = _integer(data, "seed")
    if seed is None:
        seed = limits.default_seed
    n = _integer(data, "n")
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")
    stop = data.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= limits.max_stop:
        stop = tuple(stop)
    else:
        raise APIError(400, f"'stop' must be a string or a list of at most {limits.max_stop} strings", param="stop",
                       code="invalid_value")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise APIError(400, "'stream_options' must be an object with a boolean 'include_usage'",
                           param="stream_options", code="invalid_type")
        include_usage = options.get("include_usage", False)
    return ChatRequest(model, messages, image_urls, max_tokens, temperature, top_p, seed, stop, stream,
                       include_usage)


def parse_messages(raw: Any, limits: ServeLimits) -> tuple[list[Message], list[tuple[str, str]]]:
    """OpenAI messages -> vistune messages with `<image>` where image parts were, plus the image URLs."""
    if raw is None:
        raise APIError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    out: list[tuple[str, list[str]]] = []
    images: list[tuple[str, str]] = []
    chars = 0
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", param=where, code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be 'system', 'user' or 'assistant', got {role!r}",
                           param=f"{where}.role", code="invalid_value")
        content = m.get("content")
        if isinstance(content, str):
            text = content.replace(IMAGE_PLACEHOLDER, "")
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                p = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"].replace(IMAGE_PLACEHOLDER, ""))
                elif kind == "image_url":
                    if role != "user":
                        raise APIError(400, f"{p}: images are only allowed in user messages", param=p,
                                       code="invalid_value")
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str) or not url:
                        raise APIError(400, f"{p}.image_url.url must be a string", param=f"{p}.image_url",
                                       code="invalid_value")
                    images.append((url, f"{p}.image_url"))
                    if len(images) > limits.max_images:
                        raise APIError(400, f"too many images: at most {limits.max_images} per request", param=p,
                                       code="too_many_images")
                    pieces.append(IMAGE_PLACEHOLDER)
                else:
                    raise APIError(400, f"{p}: unsupported content part type {kind!r} (expected 'text' or "
                                   "'image_url')", param=f"{p}.type", code="unsupported_content_type")
            text = "\n".join(s.strip() for s in pieces if s.strip())
        else:
            raise APIError(400, f"{where}.content must be a string or a list of content parts",
                           param=f"{where}.content", code="invalid_type")
        if role == "system" and out and out[-1][0] != "system":
            raise APIError(400, f"{where}: system messages must come first", param=where, code="invalid_value")
        chars += len(text) + 1
        if chars > limits.max_prompt_chars:
            raise APIError(400, f"the messages are longer than {limits.max_prompt_chars} characters",
                           param="messages", code="context_length_exceeded")
        if out and out[-1][0] == role:  # consecutive messages of one role form one turn
            out[-1][1].append(text)
        else:
            out.append((role, [text]))
    messages = [Message(r, "\n".join(t).strip()) for r, t in out]  # type: ignore[arg-type]
    try:
        validate_messages(messages, for_generation=True)
    except RenderError as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
    return messages, images


# -------------------------------------------------------------------------------------------------
# responses


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_body(id: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk_body(id: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def sse(obj: dict | str) -> bytes:
    """One server-sent event line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# -------------------------------------------------------------------------------------------------
# the OpenAPI description of what `parse_chat_request` accepts (the hand-written parser stays the authority
# for error messages; tests fuzz the live server with bodies generated from this description)


def chat_openapi(limits: ServeLimits) -> dict:
    """OpenAPI fragment (request body and responses) for POST /v1/chat/completions under `limits`."""
    from typing import Annotated, Literal, Union

    from pydantic import BaseModel, ConfigDict, Field


    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")  # OpenAI clients send fields this server ignores

    class ImageURL(Open):
        url: Annotated[str, Field(min_length=1)]
        """A data:image/...;base64 URL, a file:// URL under --image-root or (if allowed) an http(s) URL."""

    class ImagePart(Open):
        type: Literal["image_url"]
        image_url: Union[ImageURL, Annotated[str, Field(min_length=1)]]

    class TextPart(Open):
        type: Literal["text"]
        text: str

    class ChatMessage(Open):
        role: Literal["system", "developer", "user", "assistant"]
        content: Union[str, list[Union[TextPart, ImagePart]]]

    class StreamOptions(Open):
        include_usage: bool = False

    class ChatCompletionRequest(Open):
        """A chat completion request. Beyond this shape: the conversation must end with a user turn, system
        messages come first, images only in user messages (at most `max_images`), and the prompt must fit."""

        messages: Annotated[list[ChatMessage], Field(min_length=1)]
        model: str | None = None
        max_tokens: Annotated[int, Field(ge=1, le=limits.max_tokens)] | None = None
        max_completion_tokens: Annotated[int, Field(ge=1, le=limits.max_tokens)] | None = None
        temperature: Annotated[float, Field(ge=0, le=2)] | None = None
        top_p: Annotated[float, Field(gt=0, le=1)] | None = None
        seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
        n: Literal[1] | None = None
        stop: Union[str, Annotated[list[str], Field(max_length=limits.max_stop)], None] = None
        stream: bool | None = None
        stream_options: StreamOptions | None = None

    class ErrorDetail(BaseModel):
        message: str
        type: str
        param: str | None
        code: str | None

    class ErrorResponse(BaseModel):
        error: ErrorDetail

    class AssistantMessage(BaseModel):
        role: Literal["assistant"]
        content: str

    class Choice(BaseModel):
        index: int
        message: AssistantMessage
        finish_reason: str
        logprobs: None = None

    class Usage(BaseModel):
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int

    class ChatCompletion(BaseModel):
        id: str
        object: Literal["chat.completion"]
        created: int
        model: str
        choices: list[Choice]
        usage: Usage

    error = {"application/json": {"schema": inline_refs(ErrorResponse.model_json_schema())}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": inline_refs(ChatCompletionRequest.model_json_schema())}}},
        "responses": {
            "200": {"description": "The answer (JSON), or server-sent chat.completion.chunk events with stream",
                    "content": {"application/json": {"schema": inline_refs(ChatCompletion.model_json_schema())},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **{str(code): {"description": what, "content": error} for code, what in [
                (400, "Invalid request"), (401, "Missing or wrong API key"), (403, "Cross-origin request"),
                (404, "Unknown model"), (413, "Body too large"), (415, "Not JSON"), (421, "Host not allowed"),
                (499, "The client disconnected"), (500, "Internal error"), (503, "Busy")]},
        },
    }


def inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` references replaced by the definitions (none are recursive)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(dict(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
