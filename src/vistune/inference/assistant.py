"""`vistune.load(...)`: a model you can talk to from Python.

    model = vistune.load("runs/demo/stage2/final")
    model.chat(image, "What colour is the star?")             # greedy by default
    for piece in model.chat_stream(image, "Describe it."): ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

from vistune.inference.engine import Engine, Request
from vistune.inference.generate import SamplingParams, TextStream
from vistune.model.checkpoint import load_checkpoint
from vistune.model.vlm import VisionLanguageModel


class Assistant(VisionLanguageModel):
    """A `VisionLanguageModel` with `chat` and `chat_stream`. In eval mode the calls share one engine, so a
    question about an image asked before runs only the question (the kept prompt start, see `Engine`); the engine
    forgets what it kept when the weights change. A training model gets a fresh engine per call."""

    @classmethod
    def wrap(cls, model: VisionLanguageModel) -> "Assistant":
        """An Assistant sharing `model`'s parts (no copy), in `model`'s mode (training or eval)."""
        return cls(model.config, model.vision_tower, model.projector, model.llm, model.tokenizer,
                   model.image_processor).train(model.training)

    def chat(self, image: Image.Image | None, prompt: str, history: Sequence[tuple[str, str]] = (),
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> str:
        """Answer `prompt` about `image` (None for text only), after earlier (question, answer) turns.
        `temperature=0` is greedy."""
        return "".join(self.chat_stream(image, prompt, history, max_new_tokens, temperature, top_p, seed))

    def chat_stream(self, image: Image.Image | None, prompt: str, history: Sequence[tuple[str, str]] = (),
                    max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int | None = None) -> Iterator[str]:
        """Like `chat`, yielding text pieces as they are generated (joined: the answer)."""
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        return self.engine().stream(Request.of(prompt, image, history, params))

    def engine(self) -> Engine:
        """The engine `chat` runs (shared while the model is in eval mode; it leaves the mode as it is)."""
        if self.training:
            return Engine(self, set_eval=False)
        engine = getattr(self, "_engine", None)
        if engine is None:
            engine = self._engine = Engine(self, set_eval=False)
        return engine

    def decode_answer(self, ids: list[int]) -> str:
        """Text of generated ids, cut at the first end-of-turn id or stop string (as the engine cuts it)."""
        stops = set(self.renderer.end_of_turn_ids())
        stream = TextStream(self.tokenizer, self.renderer.stop_strings)
        for t in ids:
            if t in stops:
                break
            stream.push(t)
            if stream.stopped:
                break
        stream.finish()  # a trailing incomplete character shows as U+FFFD, as a whole decode would show it
        return stream.text


def load_assistant(path: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> Assistant:
    """A checkpoint directory as an Assistant, float32 unless `dtype` is given."""
    return load_checkpoint(path, dtype=dtype or torch.float32, device=device, cls=Assistant)
