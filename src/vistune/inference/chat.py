"""Multi-turn chat that reuses its KV cache (what `vistune chat` runs).

A `ChatSession` keeps the ids its cache covers (prompt and answer tokens of earlier turns). A new turn
renders the whole conversation, keeps the cache up to the longest prefix shared with it, and runs the model
only on the rest: a follow-up question costs its own tokens, not the images and the earlier turns again.
Re-tokenizing an earlier answer can differ from the ids that were generated; the shared-prefix rule then
recomputes from the first difference, so the answer always equals re-processing the whole conversation.

Images can join mid-conversation (`add_image`): each one leads the next question (`<image>` before it), so
everything before that question, and its cache, stays as it was. Each image is encoded once per session.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import torch
from PIL import Image

from vistune.conversation import IMAGE_TOKEN_ID, conversation_messages
from vistune.inference.engine import Engine, Request
from vistune.inference.generate import BatchDecoder, SamplingParams


class ChatSession:
    """One conversation about any number of images (none, one at the start, more added along the way)."""

    def __init__(self, engine: Engine, image: Image.Image | None = None, params: SamplingParams | None = None,
                 system: str | None = None) -> None:
        self.engine = engine
        self.params = params or SamplingParams()
        self.system = system
        self.reset(image)

    def reset(self, image: Image.Image | None = None) -> None:
        """Forget the conversation, its images and its cache; optionally start about `image`."""
        self.image = image
        """The image the conversation started with (the first question's), or None."""
        self.images: list[Image.Image] = []
        """Every image of the conversation, in order."""
        self._image_turns: list[int] = []  # for each image, the question (0-based) it leads
        self.history: list[tuple[str, str]] = []
        self._features: list[torch.Tensor] = []  # (N, D) per image, encoded once
        self._cache = None
        self._cached_ids: list[int] = []
        self.last_prefill_tokens = 0
        """Positions the model processed before the first answer token of the last turn."""
        self.last_ttft_s = 0.0
        """Seconds from the start of the last turn to its first sampled token."""
        if image is not None:
            self.add_image(image)

    def set_image(self, image: Image.Image | None) -> None:
        """Start a new conversation about `image` (`reset`)."""
        self.reset(image)

    def add_image(self, image: Image.Image) -> None:
        """Add an image to the conversation: it leads the next question (after the images added before it)."""
        self.images.append(image)
        self._image_turns.append(len(self.history))

    @property
    def pending_images(self) -> int:
        """Images added since the last answered question (they lead the next one)."""
        return self._image_turns.count(len(self.history))

    def request(self, question: str) -> Request:
        messages = conversation_messages(question, self.history, system=self.system, image_turns=self._image_turns)
        return Request(messages, list(self.images), self.params)

    @torch.no_grad()
    def ask_stream(self, question: str, params: SamplingParams | None = None) -> Iterator[str]:
        """Answer `question`, yielding text pieces; the turn joins the history when the answer is complete."""
        start, self.last_ttft_s = time.perf_counter(), 0.0
        engine, model = self.engine, self.engine.model
        params = params or self.params
        request = self.request(question)
        ids = engine.render(request)
        new_images = self.images[len(self._features):]
        if new_images:
            self._features += list(engine.encode_images(new_images))
        keep = min(_shared_prefix(self._cached_ids, ids), len(ids) - 1)  # >= 1 position must run
        keep, first = _whole_images(ids, keep, [len(f) for f in self._features])
        past = None
        if self._cache is not None and keep > 0:
            past = self._cache
            drop = past.get_seq_length() - keep
            if drop > 0:
                past.crop(-drop)
        else:
            keep = 0
        new_ids = ids[keep:]
        first = first if keep else 0  # the images before `keep` are in the cache
        feats = None
        if IMAGE_TOKEN_ID in new_ids:  # (I_new, N, D); anyres: per image (M_i, D)
            feats = torch.stack(self._features[first:]) if model.anyres is None else self._features[first:]
        embeds = model.embed(torch.tensor([new_ids], device=model.device), feats)[0]  # (T_new, D)
        prepared_params = engine._clamp(params, len(ids))
        decoder = BatchDecoder(model.llm, engine.tokenizer, [embeds], [prepared_params], engine.end_of_turn_ids,
                               engine.stop_strings, past=past)
        self.last_prefill_tokens = len(new_ids)
        self._cache, self._cached_ids = None, []  # invalid until this turn completes
        while not decoder.done:
            events = decoder.step()
            if decoder.first_token_time is not None and not self.last_ttft_s:
                self.last_ttft_s = decoder.first_token_time - start
            for e in events:
                if e.text:
                    yield e.text
        row = decoder.finished[0]
        self._cache = decoder.cache
        self._cached_ids = ids + row.token_ids[:-1]  # the last sampled token never ran through the model
        if row.stream.text:  # an empty answer cannot be rendered as a turn: the question is dropped too
            self.history.append((question, row.stream.text))

    def ask(self, question: str, params: SamplingParams | None = None) -> str:
        return "".join(self.ask_stream(question, params))


def _whole_images(ids: Sequence[int], keep: int, counts: Sequence[int]) -> tuple[int, int]:
    """(`keep` moved back to the start of an image span it would split, the number of images before it): image
    spans are spliced in whole; `counts` are the images' positions, in order."""
    position = images = 0
    while position < keep:
        if ids[position] != IMAGE_TOKEN_ID:
            position += 1
            continue
        end = position + counts[images]
        if end > keep:
            return position, images
        images += 1
        position = end
    return keep, images


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
