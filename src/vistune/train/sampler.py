"""The order of samples: one list of global batches per epoch, a pure function of (seed, epoch).

Length grouping follows LLaVA's modality-length grouping: image and text-only samples are shuffled
separately and cut into megabatches of `MEGABATCH` global batches, each sorted by length (longest first) and
cut into global batches of similar length (so padding is small even when a global batch is one micro-batch);
the global batches are then shuffled together. Leftovers of the two modalities share the last mixed batches;
a final remainder smaller than one global batch is dropped (a different one each epoch). Because the order
does not depend on the number of processes, 1 and N processes see the same global batches.
"""

from __future__ import annotations

import random
from typing import Sequence

MEGABATCH = 32
"""Global batches per length-sorted megabatch."""


def epoch_batches(lengths: Sequence[int], has_image: Sequence[bool], global_batch: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """Global batches (lists of dataset indices) of one epoch."""
    rng = random.Random(f"vistune-order:{seed}:{epoch}")
    n = len(lengths)
    if not group_by_length:
        order = list(range(n))
        rng.shuffle(order)
        return [order[i: i + global_batch] for i in range(0, n - global_batch + 1, global_batch)]
    groups = [[i for i in range(n) if has_image[i]], [i for i in range(n) if not has_image[i]]]
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for group in groups:
        rng.shuffle(group)
        full = len(group) - len(group) % global_batch
        batches += _length_sorted_batches(group[:full], lengths, global_batch)
        leftovers += group[full:]
    batches += _length_sorted_batches(leftovers[: len(leftovers) - len(leftovers) % global_batch], lengths,
                                      global_batch)
    rng.shuffle(batches)
    return batches


def _length_sorted_batches(indices: list[int], lengths: Sequence[int], global_batch: int) -> list[list[int]]:
    """Cut `indices` (a multiple of global_batch) into megabatches, sort each by length, cut into batches."""
    size = global_batch * MEGABATCH
    out = []
    for start in range(0, len(indices), size):
        mega = sorted(indices[start: start + size], key=lambda i: -lengths[i])
        out += [mega[i: i + global_batch] for i in range(0, len(mega), global_batch)]
    return out


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Global batches per epoch (grouping can only lose a partial batch, never a full one)."""
    return num_samples // global_batch


def rank_micro_batches(batch: list[int], micro_batch: int, world_size: int, rank: int) -> list[list[int]]:
    """This process's micro-batches of one global batch: consecutive slices of `micro_batch x world_size`
    samples (similar lengths, the batch being sorted), dealt out round-robin to the processes."""
    chunk = micro_batch * world_size
    return [batch[i: i + chunk][rank::world_size] for i in range(0, len(batch), chunk)]
