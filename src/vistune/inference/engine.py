"""The inference engine shared by chat, batch inference, the server and evaluation.

    engine = Engine(vistune.load("runs/demo/stage2"))
    engine.generate_batch([Request.of("What is this?", image), Request.of("And 2+2?")])   # -> list[str]
    for piece in engine.stream(Request.of("Describe it.", image)): print(piece, end="")
    session = ChatSession(engine, image); session.ask("What is it?"); session.ask("What colour?")  # inference.chat

Requests are rendered with the model's template, images are encoded in one tower call per batch, and
prompts of similar length are batched together (left-padded; answers do not depend on the batching).
`EngineWorker` owns the engine in one thread and batches requests submitted concurrently (the server):
new requests join the running batch between tokens.

Prompt starts run through the LLM once and are kept (`prefix_reuse`): a later batch that starts the same way
continues their key/values instead of recomputing them. Where every prompt of a batch opens with text and then
an image at the same positions (the template's system turn, the user's turn, the image: LLaVA's layout), the
start is that text and image, kept per image (by its pixels), so a second question about an image runs only
the question; otherwise it is the template's opening (`Engine.opening`: the system turn and the start of the
user's turn) where every prompt starts with it. A start not kept yet is copied out of the
keys and values of the prompt's own single pass. The kept starts are bounded in bytes (`prefix_cache_mb`, least
recently used dropped first), so the engine's state does not grow with the requests; the projected features of
the last `FEATURES_KEPT` images are kept as well. Everything kept is forgotten when a parameter of the model
changes (its version counter moves with every in-place update), or by `clear_prefix`.

`generate` prefills `batch_size` prompts at a time and decodes up to `decode_rows` rows together: prefilled
batches join the running rows as others finish.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from vistune.conversation import IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, Message, RenderError, conversation_messages
from vistune.inference.generate import (
    BatchDecoder,
    FinishReason,
    SamplingParams,
    StepEvent,
    plain_cache,
    stack_cache,
)
from vistune.model.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

PREFIX_MIN = 8
"""The shortest shared prompt start worth keeping (in ids)."""
DECODE_ROWS_PER_BATCH = 2
"""`generate` decodes up to this many prefill batches' rows together (unless `Engine(decode_rows=...)`)."""
FEATURES_KEPT = 64
"""Images whose projected features an engine keeps (with `prefix_reuse`), the least recently used dropped first."""


class RequestError(ValueError):
    """A request the model cannot answer as given (bad conversation, image count, too long)."""


@dataclass
class Request:
    """One conversation to continue: messages ending with a user turn, the images its placeholders refer to."""

    messages: list[Message]
    """System (optional), then alternating user/assistant turns ending with the user's; `<image>` marks images."""
    images: list[Image.Image] = field(default_factory=list)
    """One image per `<image>` placeholder, in order."""
    params: SamplingParams = field(default_factory=SamplingParams)
    input_ids: list[int] | None = None
    """The rendered prompt, once `Engine.check` has rendered it (the server does so before queueing)."""

    @classmethod
    def of(cls, prompt: str, image: Image.Image | None = None, history: Sequence[tuple[str, str]] = (),
           params: SamplingParams | None = None, system: str | None = None, **sampling) -> "Request":
        """A request from a question, an optional image (placed in the first turn) and earlier (q, a) turns."""
        messages = conversation_messages(prompt, history, has_image=image is not None, system=system)
        if params is None:
            params = SamplingParams(**sampling)
        return cls(messages, [image] if image is not None else [], params)


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason
    """"stop" (end of turn, EOS or a stop string), "length" (max_new_tokens) or "cancelled"."""
    prompt_tokens: int
    """Prompt length in positions (image positions included)."""
    completion_tokens: int
    """Tokens generated (an end-of-turn token included)."""
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Prepared:
    """A rendered request: its ids (image positions as IMAGE_TOKEN_ID) and its input embeddings."""

    input_ids: list[int]
    embeds: torch.Tensor  # (T, D)
    params: SamplingParams
    image_end: int | None = None
    """Where the first image's positions end, when the prompt goes on after it (else None)."""
    image_digest: str | None = None
    """The first image's pixels, hashed: with `input_ids[:image_end]` the key of a kept prompt start."""


class Engine:
    """Generation for one VisionLanguageModel (inference mode, no gradients)."""

    def __init__(self, model, max_batch_size: int = 16, max_length: int | None = None, set_eval: bool = True,
                 prefix_reuse: bool = True, prefix_cache_mb: float = 256.0, decode_rows: int | None = None) -> None:
        """`set_eval`: switch the model to eval mode (off for a quick answer from a model that is training).
        `prefix_reuse`: keep the key/values of prompt starts (see the module's notes), at most `prefix_cache_mb`
        MiB of them (the least recently used go first), and the projected features of the last
        `FEATURES_KEPT` images. `decode_rows`: most rows `generate` decodes together (default
        `DECODE_ROWS_PER_BATCH` batches)."""
        self.model = model.eval() if set_eval else model
        self.max_batch_size = max_batch_size
        self.prefix_reuse = prefix_reuse
        self.prefix_cache_mb = prefix_cache_mb
        self.decode_rows = decode_rows
        self._kept: OrderedDict[tuple, list] = OrderedDict()  # (ids, image digest) -> per layer (keys, values)
        self._kept_bytes = 0
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()  # image digest -> (N, D), most recent last
        self._version: tuple | None = None  # the parameters' versions the kept state was computed with
        cfg = model.llm.config
        limit = getattr(cfg, "max_position_embeddings", None)
        self.max_length = max_length or limit or 4096
        """Longest prompt + answer in positions."""
        self.end_of_turn_ids = model.renderer.end_of_turn_ids()
        self.stop_strings = tuple(model.renderer.stop_strings)

    @classmethod
    def from_checkpoint(cls, path, dtype: torch.dtype = torch.float32, device="cpu", **kwargs) -> "Engine":
        return cls(load_checkpoint(path, dtype=dtype, device=device), **kwargs)

    @classmethod
    def load(cls, path, device: str = "auto", dtype: str = "auto", **kwargs) -> "Engine":
        """From a checkpoint; device "auto" is CUDA when available; dtype "auto" is bfloat16 on CUDA, else float32."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        return cls.from_checkpoint(path, dtype=getattr(torch, dtype), device=device, **kwargs)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    # ---------------------------------------------------------------------------------------------
    # preparing prompts

    def render(self, request: Request) -> list[int]:
        """Prompt ids (image positions as IMAGE_TOKEN_ID); raises RequestError."""
        try:
            rendered = self.model.renderer.render(request.messages, num_images=len(request.images),
                                                  add_generation_prompt=True,
                                                  image_sizes=[im.size for im in request.images])
        except RenderError as e:
            raise RequestError(str(e)) from None
        n = len(rendered.input_ids)
        if n + 1 > self.max_length:
            raise RequestError(f"the prompt is {n} tokens long; this model handles at most {self.max_length}")
        return rendered.input_ids

    def check(self, request: Request) -> Request:
        """Render `request` and check its length (raises RequestError), keeping the ids for `prepare`: the
        server calls this in its own threads so that a long prompt never stalls the engine thread."""
        request.input_ids = self.render(request)
        return request

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor | list[torch.Tensor] | None:
        """(I, N, D); anyres: per image (M_i, D)."""
        if not images:
            return None
        pixels = self.model.image_processor.batch(list(images)).to(self.model.device,
                                                                   self.model.projector.linear_1.weight.dtype)
        return self.model.encode_images(pixels, [im.size for im in images])

    @torch.no_grad()
    def prepare(self, requests: Sequence[Request]) -> list[Prepared]:
        """Render and embed requests, encoding all their images in one tower call."""
        ids = [r.input_ids if r.input_ids is not None else self.render(r) for r in requests]
        if self.prefix_reuse:
            self._check_weights()
        images = [im for r in requests for im in r.images]
        digests = [image_digest(im) for im in images] if self.prefix_reuse and images else None
        features = self._image_features(images, digests)  # (I, N, D)
        out, k = [], 0
        for r, input_ids in zip(requests, ids):
            n = len(r.images)
            feats = features[k:k + n] if n else None
            embeds = self.model.embed(torch.tensor([input_ids], device=self.model.device), feats)[0]  # (T, D)
            p = Prepared(input_ids, embeds, self._clamp(r.params, len(input_ids)))
            if n and digests is not None:
                end = input_ids.index(IMAGE_TOKEN_ID) + len(feats[0])  # the first image's positions
                if end < len(input_ids):
                    p.image_end, p.image_digest = end, digests[k]
            k += n
            out.append(p)
        return out

    def _image_features(self, images: Sequence[Image.Image], digests: Sequence[str] | None) -> torch.Tensor | None:
        """Projected features of `images` (I, N, D): the kept ones reused (with `digests`), the others encoded in one
        tower call and kept (the last `FEATURES_KEPT` images)."""
        if not images or digests is None:
            return self.encode_images(images)
        missing = list(dict.fromkeys(d for d in digests if d not in self._features))
        if missing:
            first = {d: digests.index(d) for d in missing}
            for d, f in zip(missing, self.encode_images([images[first[d]] for d in missing])):
                self._features[d] = f  # (N, D)
        feats = [self._features[d] for d in digests]  # (N, D) each; anyres (M_i, D)
        feats = torch.stack(feats) if self.model.anyres is None else feats
        for d in digests:
            self._features.move_to_end(d)
        while len(self._features) > FEATURES_KEPT:
            self._features.popitem(last=False)
        return feats

    def _clamp(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        room = self.max_length - prompt_len
        if params.max_new_tokens <= room:
            return params
        return SamplingParams(room, params.temperature, params.top_p, params.seed, params.stop)

    def decoder(self, prepared: Sequence[Prepared], indices: Sequence[int] | None = None, past=None) -> BatchDecoder:
        """A decoder for `prepared`; without `past`, the prompts' start comes from the kept prefixes (and the starts
        not kept yet are kept from this prefill)."""
        if past is not None:
            return BatchDecoder(self.model.llm, self.tokenizer, [p.embeds for p in prepared],
                                [p.params for p in prepared], self.end_of_turn_ids, self.stop_strings, past=past,
                                indices=indices)
        plan = self._plan(prepared)
        decoder = BatchDecoder(self.model.llm, self.tokenizer, [p.embeds[plan.skip:] for p in prepared],
                               [p.params for p in prepared], self.end_of_turn_ids, self.stop_strings,
                               past=plan.past, indices=indices)
        self._harvest(decoder, 0, plan)
        return decoder

    def join(self, decoder: BatchDecoder, prepared: Sequence[Prepared], indices: Sequence[int]) -> None:
        """Add `prepared` to a running `decoder` (`decoder.can_add`), their start from the kept prefixes."""
        plan = self._plan(prepared)
        first = len(decoder.rows)  # the new rows follow the running ones
        decoder.add([p.embeds[plan.skip:] for p in prepared], [p.params for p in prepared], indices, past=plan.past)
        self._harvest(decoder, first, plan)

    def _plan(self, prepared: Sequence[Prepared]) -> "_Plan":
        """What of the prompts' start comes from the kept prefixes, and which starts to keep from the prefill.

        Every row opening with text and then its first image at the same positions: when all those starts are kept,
        only the rest runs; otherwise the kept opening (or nothing) comes first, the whole rest runs in one pass, and
        the missing starts (the opening too, when it was missing) are kept from that pass's keys and values."""
        if not self.prefix_reuse:
            return _Plan(0, None, [])
        keep: dict[tuple, tuple[int, int]] = {}  # key -> (row, positions): starts to keep after the prefill
        n = self._opening_length(prepared)
        opening = (tuple(prepared[0].input_ids[:n]), None) if n else None
        if opening is not None and opening not in self._kept:
            keep[opening] = (0, n)
        ends = {p.image_end for p in prepared}
        if len(ends) == 1 and None not in ends:  # every row: text, then its first image, at the same positions
            end = ends.pop()
            keys = [(tuple(p.input_ids[:end]), p.image_digest) for p in prepared]
            if all(k in self._kept for k in keys):
                return _Plan(end, self._stack(keys), [])
            for b, key in enumerate(keys):
                if key not in self._kept:
                    keep.setdefault(key, (b, end))
        items = [(row, length, key) for key, (row, length) in keep.items()]
        if opening is not None and opening in self._kept:
            return _Plan(n, self._stack([opening] * len(prepared)), items)
        return _Plan(0, None, items)

    def _stack(self, keys: Sequence[tuple]):
        """A cache whose rows are the kept starts `keys` (marked as recently used)."""
        for key in keys:
            self._kept.move_to_end(key)
        return stack_cache([self._kept[k] for k in keys], self.model.llm.config)

    @torch.no_grad()
    def _harvest(self, decoder: BatchDecoder, first: int, plan: "_Plan") -> None:
        """Keep the starts `plan` names from `decoder`'s cache after its prefill (rows `first` + row); a row's start
        is its first positions that are not padding. Reuse is switched off where the cache is not a plain one."""
        if not plan.keep:
            return
        cache = decoder.cache
        if not plain_cache(cache):
            self.prefix_reuse = False
            return
        for row, length, key in plan.keep:
            b = first + row
            positions = decoder.mask[b].nonzero().squeeze(1)[:length]  # (length,) real positions, in order
            # keys/values (B, H, L, d) -> one row's (1, H, length, d), copied out of the decoder's cache
            self._keep(key, [(layer.keys[b:b + 1].index_select(2, positions),
                              layer.values[b:b + 1].index_select(2, positions)) for layer in cache.layers])

    def _check_weights(self) -> None:
        """Forget the kept starts and image features when any parameter changed since they were computed (a
        parameter's version counter moves with every in-place update, such as an optimizer step or loading a
        state dict)."""
        version = _weights_version(self.model)
        if version != self._version:
            if self._version is not None:
                self.clear_prefix()
            self._version = version

    def opening(self) -> list[int]:
        """The ids a prompt with the model's own system prompt starts with, before its first message's content:
        the template's system turn and the opening of the user's turn (where LLaVA's layout puts the image)."""
        ids = self.model.renderer.render([Message("user", IMAGE_PLACEHOLDER)], num_images=1,
                                         add_generation_prompt=True).input_ids
        return ids[:ids.index(IMAGE_TOKEN_ID)]

    def _opening_length(self, prepared: Sequence[Prepared]) -> int:
        """The length of `opening()` when every prompt starts with it and goes on after it; 0 when they do not or
        it is shorter than `PREFIX_MIN`."""
        opening = self.opening()
        n = len(opening)
        if n < PREFIX_MIN or any(len(p.input_ids) <= n or p.input_ids[:n] != opening for p in prepared):
            return 0
        return n

    def _keep(self, key: tuple, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a start, dropping the least recently used ones to stay within `prefix_cache_mb` (a start larger
        than the whole bound is not kept)."""
        limit = self.prefix_cache_mb * 2**20
        if _nbytes(layers) > limit or key in self._kept:
            return
        self._kept[key] = layers
        self._kept_bytes += _nbytes(layers)
        while self._kept_bytes > limit:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= _nbytes(dropped)

    def clear_prefix(self) -> None:
        """Forget the kept prefixes and image features (done by itself when the model's parameters change)."""
        self._kept.clear()
        self._kept_bytes = 0
        self._features.clear()

    # ---------------------------------------------------------------------------------------------
    # generating

    @torch.no_grad()
    def generate(self, requests: Sequence[Request], on_event: Callable[[StepEvent], None] | None = None,
                 batch_size: int | None = None) -> list[Completion]:
        """Answer every request; `on_event` sees text as it comes. Prompts of similar length are prefilled
        `batch_size` at a time, and each such batch joins the rows being decoded as soon as there is room for it
        within `decode_rows` (a decode step reads the weights once, whatever its rows)."""
        batch_size = batch_size or self.max_batch_size
        limit = max(self.decode_rows or DECODE_ROWS_PER_BATCH * batch_size, batch_size)
        lengths = [len(self.check(r).input_ids) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        waiting = deque(order[start:start + batch_size] for start in range(0, len(order), batch_size))
        prompt_tokens: dict[int, int] = {}
        results: dict[int, Completion] = {}
        decoder: BatchDecoder | None = None
        while waiting or (decoder is not None and not decoder.done):
            while waiting and (decoder is None or decoder.done
                               or (decoder.can_add and len(decoder.rows) + len(waiting[0]) <= limit)):
                chunk = waiting.popleft()
                prepared = self.prepare([requests[i] for i in chunk])
                prompt_tokens.update((i, len(p.input_ids)) for i, p in zip(chunk, prepared))
                if decoder is None or decoder.done:
                    decoder = self.decoder(prepared, indices=chunk)
                else:
                    self.join(decoder, prepared, chunk)
            events = decoder.step()
            for row in decoder.finished:
                if row.error is not None:
                    raise row.error
                results[row.index] = Completion(row.stream.text, row.finish_reason, prompt_tokens[row.index],
                                                len(row.token_ids), row.token_ids)
            if on_event is not None:
                for e in events:
                    on_event(e)
        return [results[i] for i in range(len(requests))]

    def generate_batch(self, requests: Sequence[Request], batch_size: int | None = None) -> list[str]:
        """Answers (text) to `requests`, in order."""
        return [c.text for c in self.generate(requests, batch_size=batch_size)]

    def stream(self, request: Request) -> Iterator[str]:
        """Text pieces of one answer as they are generated (joined: the answer)."""
        decoder = self.decoder(self.prepare([request]))
        while not decoder.done:
            for e in decoder.step():
                if e.text:
                    yield e.text


# -------------------------------------------------------------------------------------------------
# A worker thread that owns the engine and batches concurrent requests


@dataclass
class Job:
    request: Request
    on_event: Callable[[str, object], None]
    """Called from the worker thread with ("text", str), then ("done", Completion) or ("error", Exception)."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class EngineBusy(RuntimeError):
    """The worker's queue is full: the request was not accepted (try again later)."""


@dataclass
class WorkerStats:
    """Bounded counters of what a worker did (no per-request history is kept)."""

    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "cancelled": 0, "error": 0})
    """Jobs answered so far, by finish reason ("error": failed alone)."""
    completion_tokens: int = 0
    """Tokens generated in all."""
    batches: int = 0
    """Times requests started or joined a running batch."""
    max_rows: int = 0
    """Most rows a batch held at once."""
    rejected: int = 0
    """Submissions refused because the queue was full."""
    last: tuple[FinishReason, int] | None = None
    """(finish_reason, completion_tokens) of the latest job answered."""

    def record(self, reason: FinishReason, tokens: int) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1
        self.completion_tokens += tokens
        self.last = (reason, tokens)

    @property
    def answered(self) -> int:
        return sum(self.finished.values())


class EngineWorker:
    """Runs `engine` in one thread, batching continuously: requests that arrive while a batch is being
    generated join it at the next token (up to `max_batch_size` rows); finished and cancelled ones leave it.
    At most `max_queue` jobs wait for a place; `submit` raises EngineBusy beyond that. The worker keeps only
    bounded counters (`stats`), so its memory does not grow with the number of requests served."""

    def __init__(self, engine: Engine, max_batch_size: int | None = None, max_queue: int = 256) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size or engine.max_batch_size
        self.max_queue = max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vistune-engine", daemon=True)
        self.stats = WorkerStats()
        self.running = 0
        """Rows in the running batch (0 when idle)."""
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> "EngineWorker":
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True
        return self

    def submit(self, request: Request, on_event: Callable[[str, object], None]) -> Job:
        """Queue a request; raises EngineBusy when `max_queue` jobs are already waiting."""
        job = Job(request, on_event)
        self.start()
        with self._lock:
            if self._queue.qsize() >= self.max_queue:
                self.stats.rejected += 1
                raise EngineBusy(f"{self.max_queue} requests are already waiting")
            self._queue.put(job)
        return job

    def stop(self, timeout: float = 10.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    def pending(self) -> int:
        return self._queue.qsize()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._serve([job, *self._drain(self.max_batch_size - 1)])

    def _drain(self, room: int) -> list[Job]:
        """Up to `room` waiting jobs, without blocking (a stop request stays queued)."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _prepare(self, jobs: list[Job]) -> tuple[list[Job], list[Prepared]]:
        """Prepare jobs together (one tower call); a job that fails alone gets its error."""
        live = []
        for j in jobs:
            if j.cancelled.is_set():
                self.stats.record("cancelled", 0)
                _safe_call(j.on_event, "done", Completion("", "cancelled", 0, 0))
            else:
                live.append(j)
        try:
            return live, self.engine.prepare([j.request for j in live])
        except Exception:
            ok, prepared = [], []
            for j in live:
                try:
                    prepared.append(self.engine.prepare([j.request])[0])
                    ok.append(j)
                except Exception as e:
                    self.stats.record("error", 0)
                    _safe_call(j.on_event, "error", e)
            return ok, prepared

    def _serve(self, jobs: list[Job]) -> None:
        """Decode until no job is left; jobs that arrive meanwhile join the running batch while there is room."""
        live: dict[int, tuple[Job, Prepared]] = {}
        decoder: BatchDecoder | None = None
        counter = 0
        try:
            while True:
                if jobs:
                    jobs, prepared = self._prepare(jobs)
                    ids = list(range(counter, counter + len(jobs)))
                    counter += len(jobs)
                    live.update(zip(ids, zip(jobs, prepared)))
                    if prepared:
                        if decoder is None or decoder.done:
                            decoder = self.engine.decoder(prepared, indices=ids)
                        else:
                            self.engine.join(decoder, prepared, ids)
                        self.stats.batches += 1
                        self.stats.max_rows = max(self.stats.max_rows, len(decoder.rows))
                if decoder is None or decoder.done:
                    return
                for i, (job, _) in live.items():
                    if job.cancelled.is_set():
                        decoder.cancel(i)
                for e in decoder.step():
                    if e.text:
                        _safe_call(live[e.index][0].on_event, "text", e.text)
                for row in decoder.finished:
                    job, p = live.pop(row.index)
                    self.stats.record(row.finish_reason, len(row.token_ids))
                    if row.error is not None:
                        log.error("generation failed for one request", exc_info=row.error)
                        _safe_call(job.on_event, "error", row.error)
                    else:
                        _safe_call(job.on_event, "done", Completion(row.stream.text, row.finish_reason,
                                                                    len(p.input_ids), len(row.token_ids),
                                                                    row.token_ids))
                self.running = len(decoder.rows)
                room = self.max_batch_size - len(decoder.rows)
                jobs = self._drain(room) if room > 0 and (decoder.done or decoder.can_add) else []
        except Exception as e:  # a failure of the batch: every job in it gets the error
            log.exception("generation failed")
            for job, _ in live.values():
                self.stats.record("error", 0)
                _safe_call(job.on_event, "error", e)
        finally:
            self.running = 0


def image_digest(image: Image.Image) -> str:
    """A hash of an image's mode, size and pixels."""
    h = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass
class _Plan:
    """How a batch's prefill uses and extends the kept prompt starts."""

    skip: int
    """Positions of every prompt that `past` covers (they do not run)."""
    past: object | None
    """A cache of those positions, one row per prompt, or None."""
    keep: list[tuple[int, int, tuple]]
    """(row, positions, key) of each start to keep from the prefill's cache."""


def _weights_version(model: torch.nn.Module) -> tuple | None:
    """Each parameter's storage and version counter (None where a parameter has no counter, as tensors made in
    inference mode)."""
    try:
        return tuple((p.data_ptr(), p._version) for p in model.parameters())
    except RuntimeError:
        return None


def _nbytes(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.nbytes + v.nbytes for k, v in layers)


def _safe_call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # a consumer that went away must not stop the worker
        log.debug("event consumer failed", exc_info=True)

