"""Length-grouped, modality-separated, seeded batch order; schedule; micro-batch split across processes."""

from __future__ import annotations

import random

import pytest

from vistune.config import TrainConfig
from vistune.train.optim import lr_factor, warmup_steps
from vistune.train.sampler import epoch_batches, rank_micro_batches, steps_per_epoch


def _data(n=203, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(20, 400) for _ in range(n)]
    has_image = [rng.random() < 0.7 for _ in range(n)]
    return lengths, has_image


def _padding(batches, lengths, micro):
    pad = total = 0
    for b in batches:
        for i in range(0, len(b), micro):
            chunk = [lengths[j] for j in b[i: i + micro]]
            pad += max(chunk) * len(chunk) - sum(chunk)
            total += max(chunk) * len(chunk)
    return pad / total


def test_every_sample_at_most_once_and_full_batches_only():
    lengths, has_image = _data()
    batches = epoch_batches(lengths, has_image, 16, seed=1, epoch=0)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == steps_per_epoch(len(lengths), 16) * 16
    assert all(len(b) == 16 for b in batches)


def test_modalities_are_grouped_and_batches_sorted_by_length():
    lengths, has_image = _data()
    batches = epoch_batches(lengths, has_image, 16, seed=1, epoch=0)
    mixed = [b for b in batches if len({has_image[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only the leftovers of the two modalities share a batch
    for b in batches:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_grouping_cuts_padding():
    lengths, has_image = _data(1000)
    grouped = epoch_batches(lengths, has_image, 64, seed=0, epoch=0)
    plain = epoch_batches(lengths, has_image, 64, seed=0, epoch=0, group_by_length=False)
    assert _padding(grouped, lengths, 8) < 0.5 * _padding(plain, lengths, 8)
    # one micro-batch per global batch: batches themselves hold similar lengths
    grouped = epoch_batches(lengths, has_image, 8, seed=0, epoch=0)
    plain = epoch_batches(lengths, has_image, 8, seed=0, epoch=0, group_by_length=False)
    assert _padding(grouped, lengths, 8) < 0.2 * _padding(plain, lengths, 8)


def test_order_is_seeded_and_changes_with_epoch_and_seed():
    lengths, has_image = _data()
    a = epoch_batches(lengths, has_image, 16, seed=3, epoch=0)
    assert a == epoch_batches(lengths, has_image, 16, seed=3, epoch=0)
    assert a != epoch_batches(lengths, has_image, 16, seed=3, epoch=1)
    assert a != epoch_batches(lengths, has_image, 16, seed=4, epoch=0)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_processes_split_each_global_batch_exactly(world):
    batch = list(range(32))
    per_rank = [rank_micro_batches(batch, 4, world, r) for r in range(world)]
    assert all(len(mbs) == 32 // (4 * world) for mbs in per_rank)  # accumulation steps
    assert all(len(mb) == 4 for mbs in per_rank for mb in mbs)
    assert sorted(i for mbs in per_rank for mb in mbs for i in mb) == batch


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(warmup_ratio=0.03, global_batch_size=8, micro_batch_size=8)
    total = 100
    w = warmup_steps(cfg, total)
    assert w == 3
    factors = [lr_factor(s, total, w, "cosine") for s in range(total)]
    assert factors[:3] == pytest.approx([0.25, 0.5, 0.75]) and factors[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[-1] < 1e-3
    assert lr_factor(50, 100, 0, "linear") == pytest.approx(0.5)
    assert lr_factor(90, 100, 0, "constant") == 1.0
