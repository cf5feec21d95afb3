"""Model FLOPs of training steps: what a step must compute, independent of the machine that computes it.

Counted: every matmul of the LLM's decoder layers (attention projections, MLP), the attention products (QK^T
and AV over each sample's own tokens, causal half), the LM head at supervised positions only, and the
projector's matmuls at image positions; forward and backward. Stage 2 (everything trains): 3x the forward.
Stage 1 (frozen LLM, trained projector): the LLM needs its forward and the input gradients (2x its matmuls,
3x the attention products, which have no weights), the projector its forward and weight gradients (2x).
Not counted: the frozen vision tower (its features are computed once per image and cached), norms,
element-wise work and the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class FlopCounter:
    """The sizes a step's FLOPs depend on."""

    hidden: int
    """The LLM's hidden size d."""
    layers: int
    vocab: int
    linear_per_token: int
    """Forward FLOPs of one token through every decoder layer's matmuls."""
    projector_params: int
    """Weights of the projector's matmuls (FLOPs per image token: twice this)."""

    @classmethod
    def of(cls, model) -> "FlopCounter":
        """From a `VisionLanguageModel` (or anything with `.llm.config` and `.projector`)."""
        c = model.llm.config
        d, L = c.hidden_size, c.num_hidden_layers
        heads = c.num_attention_heads
        kv = d // heads * (getattr(c, "num_key_value_heads", None) or heads)
        linear = 2 * (2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size) * L
        p = model.projector
        proj = sum(m.weight.numel() for m in (p.linear_1, getattr(p, "linear_2", None)) if m is not None)
        return cls(d, L, c.vocab_size, linear, proj)

    def step(self, sample_lengths: Sequence[int], supervised: int, image_tokens: int, stage: int) -> float:
        """FLOPs of one optimizer step over samples of these token counts, with `supervised` labelled
        positions and `image_tokens` image positions in all."""
        tokens = sum(sample_lengths)
        linear = self.linear_per_token * tokens
        attn = sum(2 * t * t * self.hidden * self.layers for t in sample_lengths)
        head = 2 * supervised * self.hidden * self.vocab
        projector = 2 * image_tokens * self.projector_params
        if stage == 2:
            return 3.0 * (linear + attn + head + projector)
        return 2.0 * linear + 3.0 * attn + 2.0 * head + 2.0 * projector
