"""Token generation: sampling, incremental detokenizing with stop strings, and a batched KV-cache decode loop.

`BatchDecoder` runs one batch of prompts (given as embeddings, so image features are already spliced in)
left-padded to a common length. The attention mask hides the padding and `position_ids` count only real
tokens, so each row computes exactly what it would compute alone: greedy answers do not depend on what
they were batched with. Finished or cancelled rows leave the batch (their cache rows are dropped). Rows may
continue an existing cache (`past`, one row per prompt): a chat session reuses its earlier turns that way, and
the engine its kept prompt starts (`stack_cache`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from vistune.errors import UserError

FinishReason = str  # "stop" | "length" | "cancelled" | "error"

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The seeds a torch generator accepts."""


class SamplingError(UserError, ValueError):
    """Sampling parameters out of range."""


@dataclass
class SamplingParams:
    """How one answer is decoded."""

    max_new_tokens: int = 256
    """Most tokens generated for the answer (its end-of-turn token included)."""
    temperature: float = 0.0
    """Softmax temperature; 0 is greedy decoding (deterministic)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches `top_p`."""
    seed: int | None = None
    """Seed of this answer's sampler (None: a fresh random seed); ignored when greedy."""
    stop: tuple[str, ...] = ()
    """Extra stop strings (the template's own stop strings always apply); the answer ends before them."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature!r}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not SEED_MIN <= self.seed <= SEED_MAX):
            raise SamplingError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}")
        self.stop = tuple(s for s in self.stop if s)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    g = torch.Generator()
    if params.seed is None:
        g.seed()
    else:
        g.manual_seed(params.seed)
    return g


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from a row of logits (V,). Computed in float64 after subtracting the maximum, so any
    temperature > 0 (1e-300 included) gives finite probabilities: tiny ones approach greedy decoding."""
    if params.greedy:
        return int(torch.argmax(logits))
    shifted = logits.double() - logits.max().double()  # (V,) <= 0, the top token(s) exactly 0
    probs = torch.softmax(shifted / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # drop a token when the tokens ranked above it already reach top_p (the first one always stays)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        pick = torch.multinomial(sorted_probs.cpu(), 1, generator=generator)
        return int(order[int(pick)])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class TextStream:
    """Turns generated ids into text pieces that are safe to show as they come.

    Decoding is incremental: each new id decodes only a short window of recent ids (the ids since the last
    complete piece of text plus the one before it, for tokenizers whose spacing depends on the neighbour),
    so an answer of n tokens costs O(n) to detokenize, not O(n^2). Text that might be the start of a stop
    string, an incomplete UTF-8 character, and whitespace at either end are held back until they are
    resolved; the pieces joined equal the final answer exactly.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._longest_stop = max((len(s) for s in self.stop_strings), default=0)
        self._window: list[int] = []
        """Ids not yet retired: the context id(s) before `_read`, then ids whose text is not complete."""
        self._read = 0
        """Ids of `_window` before this index have been turned into text."""
        self.emitted = 0
        self.stopped = False
        self._text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, flush: bool) -> str:
        """New text of the window's unread ids ("" while it ends in an incomplete character, unless `flush`)."""
        before = self._decode(self._window[:self._read]) if self._read else ""
        full = self._decode(self._window)
        if len(full) <= len(before) or (full.endswith("\ufffd") and not flush):
            return ""
        self._window = self._window[self._read:]
        self._read = len(self._window)
        return full[len(before):]

    def push(self, token_id: int) -> str:
        """Add a generated id; return the newly safe text (may be empty). Sets `stopped` at a stop string."""
        self._window.append(token_id)
        return self._add(self._advance(flush=False))

    def _add(self, new: str) -> str:
        if not self._text:
            new = new.lstrip()
        if not new:
            return self._take(self._safe_end())
        start = max(0, len(self._text) - self._longest_stop + 1)
        self._text += new
        cut = min((i for i in (self._text.find(s, start) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._text = self._text[:cut].rstrip()
            return self._take(len(self._text))
        return self._take(self._safe_end())

    def _safe_end(self) -> int:
        text = self._text
        safe = len(text)
        for s in self.stop_strings:  # hold back a tail that could grow into a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        # Whitespace before the held-back tail too: a stop string there would cut it from the answer.
        while safe > self.emitted and text[safe - 1].isspace():
            safe -= 1
        return safe

    def finish(self) -> str:
        """The held-back remainder at the end of the answer (an incomplete character decodes as U+FFFD)."""
        if not self.stopped and self._read < len(self._window):
            self._text += self._advance(flush=True) if self._text else self._advance(flush=True).lstrip()
        return self._take(len(self.text))

    @property
    def text(self) -> str:
        return self._text.rstrip()

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = self._text[self.emitted:upto]
        self.emitted = upto
        return piece


@dataclass
class Row:
    """One sequence being generated."""

    index: int
    """Position of this row's request in the caller's list."""
    params: SamplingParams
    stream: TextStream
    generator: torch.Generator | None = None
    prompt_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    """Generated ids (the end-of-turn id included when one ended the answer)."""
    finish_reason: FinishReason | None = None
    error: Exception | None = None
    """Why the row failed (finish_reason "error"): a failure of this row alone, the batch goes on."""


@dataclass
class StepEvent:
    index: int
    """Request index (as given to the decoder)."""
    text: str
    """New text (may be empty)."""
    finish_reason: FinishReason | None = None
    """Set on the row's last event."""


def _check_past(past, prompts: Sequence[torch.Tensor]) -> None:
    if past is not None and cache_rows(past) != len(prompts):
        raise ValueError(f"the cache to continue has {cache_rows(past)} rows for {len(prompts)} prompts")


class BatchDecoder:
    """Generates for a batch of prompt embeddings, one token per row per `step()`.

    prompts: per row a tensor (T_i, D) of input embeddings (image features spliced in).
    past: an existing cache to continue, one row per prompt, covering the same earlier positions of every row.
    """

    def __init__(self, llm, tokenizer, prompts: Sequence[torch.Tensor], params: Sequence[SamplingParams],
                 end_of_turn_ids: Sequence[int], stop_strings: Sequence[str] = (), past=None,
                 indices: Sequence[int] | None = None) -> None:
        from transformers import DynamicCache

        if not prompts:
            raise ValueError("no prompts to decode")
        _check_past(past, prompts)
        self.llm = llm
        self.tokenizer = tokenizer
        self.eot = set(end_of_turn_ids)
        self.stop_strings = tuple(stop_strings)
        self._cache_kw = cache_argument(llm)
        self.first_token_time: float | None = None
        """`time.perf_counter()` when the first tokens were sampled (for time-to-first-token figures)."""
        self.finished: list[Row] = []
        self.rows = self._rows(prompts, params, indices)
        self.cache = past if past is not None else DynamicCache(config=llm.config)
        past_len = self.cache.get_seq_length() if past is not None else 0
        self.mask, self.next_pos, self.logits = self._prefill(prompts, past_len, self.cache)

    def _rows(self, prompts, params, indices) -> list[Row]:
        indices = list(range(len(prompts))) if indices is None else list(indices)
        return [Row(i, p, TextStream(self.tokenizer, (*self.stop_strings, *p.stop)), make_generator(p), len(e))
                for i, p, e in zip(indices, params, prompts)]

    @torch.no_grad()
    def _prefill(self, prompts: Sequence[torch.Tensor], past_len: int, cache):
        """Run left-padded prompts; returns mask (B, past + T), next positions (B,), next-token logits (B, V)."""
        device = prompts[0].device
        B, T, D = len(prompts), max(len(p) for p in prompts), prompts[0].shape[-1]
        embeds = prompts[0].new_zeros(B, T, D)  # (B, T, D), left-padded
        mask = torch.zeros(B, past_len + T, dtype=torch.long, device=device)  # (B, past + T)
        mask[:, :past_len] = 1
        for b, p in enumerate(prompts):
            embeds[b, T - len(p):] = p
            mask[b, past_len + T - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, past + T): real tokens count 0, 1, 2, ...
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions[:, past_len:],
                       use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        return mask, positions[:, -1] + 1, out.logits[:, -1].float()

    @property
    def can_add(self) -> bool:
        """Whether `add` can join new prompts to this batch (plain per-layer key/value tensors only)."""
        return bool(self.rows) and plain_cache(self.cache)

    @torch.no_grad()
    def add(self, prompts: Sequence[torch.Tensor], params: Sequence[SamplingParams], indices: Sequence[int],
            past=None) -> None:
        """Join new prompts to the running batch: they are prefilled alone (continuing `past`, one row per prompt,
        if given), then their cache rows and the running ones are left-padded to a common length (the padding is
        masked) and stacked."""
        from transformers import DynamicCache

        if not self.can_add:
            raise RuntimeError("this batch cannot take new prompts")
        _check_past(past, prompts)
        cache = past if past is not None else DynamicCache(config=self.llm.config)
        past_len = cache.get_seq_length() if past is not None else 0
        mask, next_pos, logits = self._prefill(prompts, past_len, cache)
        length = max(mask.shape[1], self.mask.shape[1])

        def pad(x: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension `dim` to `length` with zeros
            missing = length - x.shape[dim]
            if not missing:
                return x
            shape = list(x.shape)
            shape[dim] = missing
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        # transformers has no public call that joins two caches of different lengths along the batch (only
        # batch_select_indices / crop / batch_repeat_interleave), so this writes the per-layer `keys` / `values`
        # tensors of DynamicLayer directly, as those methods do.
        for old, new in zip(self.cache.layers, cache.layers):  # keys/values (B, H, L, d)
            old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
            old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
        self.mask = torch.cat([pad(self.mask, 1), pad(mask, 1)], dim=0)
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.logits = torch.cat([self.logits, logits])
        self.rows += self._rows(prompts, params, indices)

    @property
    def done(self) -> bool:
        return not self.rows

    def cancel(self, index: int) -> None:
        """Stop generating for request `index` (its row leaves the batch at the next step)."""
        for row in self.rows:
            if row.index == index and row.finish_reason is None:
                row.finish_reason = "cancelled"

    def _advance_row(self, row: Row, b: int, greedy_token: int) -> tuple[int, str]:
        """Sample batch row `b`'s next token and turn it into text; sets `row.finish_reason` when it ends."""
        token = greedy_token if row.params.greedy else sample_token(self.logits[b], row.params, row.generator)
        row.token_ids.append(token)
        if token in self.eot:
            row.finish_reason = "stop"
            return token, row.stream.finish()
        text = row.stream.push(token)
        if row.stream.stopped:
            row.finish_reason = "stop"
        elif len(row.token_ids) >= row.params.max_new_tokens:
            row.finish_reason = "length"
        if row.finish_reason is not None:
            text += row.stream.finish()
        return token, text

    @torch.no_grad()
    def step(self) -> list[StepEvent]:
        """Sample one token per active row, emit text, drop finished rows and run the model once."""
        events, next_ids = [], []
        greedy = self.logits.argmax(dim=-1).tolist()  # one device sync for all greedy rows
        for b, row in enumerate(self.rows):
            if row.finish_reason is not None:  # cancelled since the last step
                events.append(StepEvent(row.index, "", row.finish_reason))
                next_ids.append(0)
                continue
            try:
                token, text = self._advance_row(row, b, greedy[b])
            except Exception as e:  # this row's failure ends this row only
                row.finish_reason, row.error, token, text = "error", e, 0, ""
            events.append(StepEvent(row.index, text, row.finish_reason))
            next_ids.append(token)
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        keep = [b for b, row in enumerate(self.rows) if row.finish_reason is None]
        self.finished = [row for row in self.rows if row.finish_reason is not None]
        if not keep:
            self.rows = []
            return events
        if len(keep) < len(self.rows):
            idx = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(idx)
            self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]
            self.rows = [self.rows[b] for b in keep]
            next_ids = [next_ids[b] for b in keep]
        ids = torch.tensor(next_ids, device=self.mask.device).unsqueeze(1)  # (B, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(keep), 1)], dim=1)
        out = self.llm(input_ids=ids, attention_mask=self.mask, position_ids=self.next_pos.unsqueeze(1),
                       use_cache=True, logits_to_keep=1, **{self._cache_kw: self.cache})
        self.next_pos = self.next_pos + 1
        self.logits = out.logits[:, -1].float()
        return events

    def run(self, on_event: Callable[[StepEvent], None] | None = None,
            should_cancel: Callable[[int], bool] | None = None) -> dict[int, Row]:
        """Decode to the end; returns the finished rows by request index."""
        finished: dict[int, Row] = {}
        while self.rows:
            if should_cancel is not None:
                for row in self.rows:
                    if should_cancel(row.index):
                        self.cancel(row.index)
            events = self.step()
            for row in self.finished:
                finished[row.index] = row
            if on_event is not None:
                for e in events:
                    on_event(e)
        return finished


def plain_cache(cache) -> bool:
    """Whether `cache` holds plain per-layer key/value tensors (no sliding window, quantisation or offloading):
    the caches whose rows this module joins and repeats."""
    from transformers import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None
                                for layer in layers)


def cache_rows(cache) -> int:
    """The batch rows of a cache (1 for an empty one)."""
    layers = getattr(cache, "layers", None) or []
    keys = getattr(layers[0], "keys", None) if layers else None
    return 1 if keys is None or keys.dim() != 4 else keys.shape[0]


def stack_cache(rows: Sequence[list[tuple[torch.Tensor, torch.Tensor]]], config):
    """A new cache whose batch rows are `rows` (each: per layer (keys, values) of one row, (1, H, L, d), all of
    the same length); the rows' tensors are copied, so decoding extends the new cache only."""
    from transformers import DynamicCache

    out = DynamicCache(config=config)
    for i in range(len(rows[0])):  # -> (B, H, L, d)
        out.update(torch.cat([r[i][0] for r in rows]), torch.cat([r[i][1] for r in rows]), i)
    return out


def cache_argument(llm) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers, `past_key_values` before
    (a peft wrapper passes either through to the model it wraps)."""
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
