"""Attention for packed rows on CPU: causal SDPA over each sample's own span instead of one masked row.

A packed row holds several samples whose positions restart at 0. transformers' `sdpa` attention keeps them
apart with a block-diagonal (R, 1, L, L) mask, and PyTorch's CPU kernels then compute every one of the L x L
scores, masked or not, and read the mask: on 2 CPU cores that made a packed step slower than a padded one.
`SEGMENT_ATTENTION` (registered with transformers' `AttentionInterface`) runs `is_causal` SDPA on each span
instead, which computes only the lower triangle of each sample. Any other call (no restarts in
`position_ids`, a KV cache, decoding) goes to transformers' own `sdpa` with its mask, so a model switched to it
generates exactly as before. On CUDA the flash-attention implementation does the same natively
(variable-length kernels from `position_ids`); where it is not installed, the span-wise path runs PyTorch's flash
and memory-efficient SDPA kernels (benchmarks/gpu_mfu.py: 38.6 % MFU at 7B shapes on an H200).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SEGMENT_ATTENTION = "vistune_segment_sdpa"


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) spans where positions restart at 0; None unless positions run 0, 1, 2, ...
    from each restart and some row holds two spans (a packed layout)."""
    if position_ids.shape[1] < 2 or bool((position_ids[:, 0] != 0).any()):
        return None
    step = position_ids[:, 1:] - position_ids[:, :-1]
    restart = position_ids[:, 1:] == 0
    if not bool(((step == 1) | restart).all()) or not bool(restart.any()):
        return None
    length = position_ids.shape[1]
    rows = []
    for row in restart.tolist():
        starts = [0] + [i + 1 for i, r in enumerate(row) if r]
        rows.append(list(zip(starts, starts[1:] + [length])))
    return rows


def segment_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         position_ids: torch.Tensor | None = None, **kwargs):
    """query (R, H, L, Dh), key/value (R, H_kv, L, Dh) -> (R, L, H, Dh), as transformers' attention functions."""
    spans = None
    if position_ids is not None and query.shape[2] == key.shape[2] > 1:
        spans = segments(position_ids.expand(query.shape[0], -1))
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    # On CUDA, cuDNN's attention (PyTorch's first choice on Hopper) builds an execution plan for every new span
    # length, and training rows bring new lengths at every step: use the flash and memory-efficient kernels.
    backends = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]) \
        if query.is_cuda else contextlib.nullcontext()
    with backends:
        return _spans_attention(query, key, value, spans, dropout, scaling, gqa), None


def _spans_attention(query, key, value, spans, dropout, scaling, gqa) -> torch.Tensor:
    if not query.is_cuda and torch.is_autocast_enabled("cpu"):
        # bf16 autocast would run these in bf16, whose CPU flash-attention backward is about 0.6x as fast as
        # fp32's at these lengths (and less precise): attend in fp32; the output projection casts the result.
        with torch.autocast("cpu", enabled=False):
            return _spans_attention(query.float(), key.float(), value.float(), spans, dropout, scaling, gqa)
    rows = []
    # One split per row and tensor: its backward concatenates the spans' gradients once, where slicing each span
    # on its own would make a zero-filled gradient of the whole tensor per span (and per span a kernel launch).
    for q, k, v, row in zip(query.split(1), key.split(1), value.split(1), spans):
        lengths = [e - s for s, e in row]
        parts = [F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scaling,
                                                enable_gqa=gqa)
                 for qs, ks, vs in zip(q.split(lengths, dim=2), k.split(lengths, dim=2), v.split(lengths, dim=2))]
        rows.append(torch.cat(parts, dim=2))  # (1, H, L, Dh)
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous()


AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa_forward)
AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)


def use_segment_attention(llm) -> bool:
    """Switch a transformers LLM that uses `sdpa` to `SEGMENT_ATTENTION`; False (unchanged) otherwise."""
    if getattr(llm.config, "_attn_implementation", None) != "sdpa":
        return False
    llm.set_attn_implementation(SEGMENT_ATTENTION)
    return True
