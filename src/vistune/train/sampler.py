"""The order of samples: one list of global batches per epoch, a pure function of (seed, epoch).

Length grouping follows LLaVA's modality-length grouping: image and text-only samples are shuffled
separately and cut into global batches ("megabatches"), each sorted by length (longest first) so that the
micro-batches cut from it hold samples of similar length; the megabatches are then shuffled together.
Leftovers of the two modalities share the last mixed megabatches; a final remainder smaller than one global
batch is dropped (a different one each epoch). Because the order does not depend on the number of
processes, 1 and N processes see the same global batches.
"""

from __future__ import annotations

import random
from typing import Sequence


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
    megabatches: list[list[int]] = []
    leftovers: list[int] = []
    for group in groups:
        rng.shuffle(group)
        full = len(group) - len(group) % global_batch
        megabatches += [group[i: i + global_batch] for i in range(0, full, global_batch)]
        leftovers += group[full:]
    megabatches += [leftovers[i: i + global_batch] for i in range(0, len(leftovers) - global_batch + 1, global_batch)]
    megabatches = [sorted(mb, key=lambda i: -lengths[i]) for mb in megabatches]
    rng.shuffle(megabatches)
    return megabatches


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Global batches per epoch (grouping can only lose a partial batch, never a full one)."""
    return num_samples // global_batch


def rank_micro_batches(batch: list[int], micro_batch: int, world_size: int, rank: int) -> list[list[int]]:
    """This process's micro-batches of one global batch: consecutive slices of `micro_batch x world_size`
    samples (similar lengths, the batch being sorted), dealt out round-robin to the processes."""
    chunk = micro_batch * world_size
    return [batch[i: i + chunk][rank::world_size] for i in range(0, len(batch), chunk)]
