"""The training fast paths change no result: packing, the tower-feature cache, the allocator setting, compiled
decoder layers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vistune.data.dataset import LlavaDataset, collate, pack_rows
from vistune.data.feature_cache import FeatureCache, tensor_digest
from vistune.model.packed_attention import SEGMENT_ATTENTION, segments
from vistune.model.tiny import tiny_vlm
from vistune.train.tiny import save_tiny_checkpoint, tiny_run_config, write_tiny_data


@pytest.fixture(scope="module")
def model():
    m = tiny_vlm("clip", projector="mlp2x_gelu", seed=3)
    m.train()
    return m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("fastdata"), n=12)


def _dataset(model, data, cache=None):
    return LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor, max_length=256,
                        feature_cache=cache)


def test_pack_rows_fills_rows_within_capacity():
    lengths = [50, 120, 30, 200, 90, 10, 300]
    rows = pack_rows(lengths, 200)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert [6] in rows  # longer than a row: alone
    assert all(sum(lengths[i] for i in r) <= 200 for r in rows if r != [6])
    assert rows == [[6], [3], [1, 0, 2], [4, 5]]  # first fit, longest first


@pytest.fixture(params=["sdpa", SEGMENT_ATTENTION])
def attention(request, model):
    """The packed row isolated by transformers' block-diagonal mask, or by span-wise causal SDPA."""
    model.llm.set_attn_implementation(request.param)
    yield request.param
    model.llm.set_attn_implementation("sdpa")


def test_packed_batch_gives_the_same_loss_and_gradients(model, data, attention):
    """fp32; tolerance: relative 1e-4 (only the order of sums differs)."""
    ds = _dataset(model, data)
    items = [ds[i] for i in range(8)]
    pad = model.tokenizer.pad_token_id
    plain, packed = collate(items, pad), collate(items, pad, pack=256)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # several samples share a row
    assert int(packed["attention_mask"].sum()) == int(plain["attention_mask"].sum())
    starts = (packed["position_ids"] == 0).sum()
    assert starts >= len(items)  # positions restart for every sample
    results = []
    for batch in (plain, packed):
        model.zero_grad(set_to_none=True)
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                    position_ids=batch.get("position_ids"))
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), out.num_tokens,
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l1, n1, g1), (l2, n2, g2) = results
    assert n1 == n2 > 0
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g2.keys() and any("projector" in k for k in g1)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packing_keeps_samples_apart(model, data, attention):
    """Changing one sample of a packed row leaves the other samples' losses unchanged."""
    ds = _dataset(model, data)
    a, b = ds[0], ds[1]
    pad = model.tokenizer.pad_token_id
    alone = collate([a], pad)
    with torch.no_grad():
        ref = model(alone["input_ids"], alone["attention_mask"], alone["pixel_values"], alone["labels"]).loss_sum
        for other in (b, ds[2]):
            batch = collate([other, a], pad, pack=512)
            assert batch["input_ids"].shape[0] == 1
            # the other sample's loss, from its own unpacked pass
            single = collate([other], pad)
            own = model(single["input_ids"], single["attention_mask"], single["pixel_values"],
                        single["labels"]).loss_sum
            both = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                         position_ids=batch["position_ids"]).loss_sum
            torch.testing.assert_close(both - own, ref, rtol=1e-4, atol=1e-4)


def test_span_wise_attention_runs_in_fp32_under_cpu_bf16_autocast():
    """bf16 autocast would pick CPU's bf16 flash-attention kernel (slower backward, less precise): the spans
    attend in fp32 and give exactly the fp32 result of the same inputs."""
    from vistune.model.packed_attention import segment_sdpa_forward

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 10, 8, generator=g).bfloat16()
    k, v = (torch.randn(1, 2, 10, 8, generator=g).bfloat16() for _ in range(2))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = segment_sdpa_forward(None, q, k, v, None, position_ids=positions)
    expected, _ = segment_sdpa_forward(None, q.float(), k.float(), v.float(), None, position_ids=positions)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_segments_only_for_packed_positions():
    assert segments(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [[(0, 3), (3, 5), (5, 6)]]
    assert segments(torch.tensor([[0, 1, 2, 3]])) is None  # one sample: plain causal attention
    assert segments(torch.tensor([[5, 6, 7]])) is None  # positions after a cache
    assert segments(torch.tensor([[0, 1, 3, 0]])) is None  # not a packed layout


def test_cached_features_equal_fresh_ones(model, data, tmp_path):
    cache = FeatureCache(tmp_path, model.feature_fingerprint("fp32"))
    ds = _dataset(model, data, cache)
    i = next(i for i in range(len(ds)) if ds.has_image(i))
    first = ds[i]
    assert first.features is None and first.pixel_values is not None and first.image_key
    fresh = model.vision_tower(first.pixel_values[None])[0]  # (N, D_v)
    cache.store(first.image_key, fresh)
    second = ds[i]
    assert second.pixel_values is None and second.features is not None
    assert torch.equal(second.features, fresh)
    assert cache.hits == 1
    # the batch carries cached features in image order, pixels only for the misses
    j = next(j for j in range(len(ds)) if ds.has_image(j) and ds.image_path(ds.records[j]) != ds.image_path(
        ds.records[i]))
    batch = collate([ds[i], ds[j]], model.tokenizer.pad_token_id, pack=256)
    assert [f is None for f in batch["image_features"]].count(True) == 1
    assert batch["pixel_values"].shape[0] == 1


def test_changed_tower_settings_miss_the_cache(model, tmp_path):
    other_layer = tiny_vlm("clip", projector="mlp2x_gelu", seed=3, layer=-1)
    other_weights = tiny_vlm("clip", projector="mlp2x_gelu", seed=4)
    base = model.feature_fingerprint("fp32")
    assert len({base, model.feature_fingerprint("bf16"), other_layer.feature_fingerprint("fp32"),
                other_weights.feature_fingerprint("fp32")}) == 4
    cache = FeatureCache(tmp_path, base)
    key = cache.key(b"image bytes")
    cache.store(key, torch.ones(4, 8))
    changed = FeatureCache(tmp_path, other_layer.feature_fingerprint("fp32"))
    assert changed.load(changed.key(b"image bytes")) is None
    assert torch.equal(cache.load(key), torch.ones(4, 8))


def test_corrupt_or_stale_entries_are_recomputed_never_used(tmp_path):
    cache = FeatureCache(tmp_path, "f" * 64)
    key = cache.key(b"png")
    cache.store(key, torch.arange(12.0).reshape(3, 4))
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:-7])  # torn file
    assert cache.load(key) is None and not path.exists()
    cache.store(key, torch.arange(12.0).reshape(3, 4))
    meta = {"sha256": "0" * 64, "fingerprint": "f" * 64}
    save_file({"features": torch.arange(12.0).reshape(3, 4)}, str(path), metadata=meta)  # checksum wrong
    assert cache.load(key) is None and not path.exists()
    cache.store(key, torch.zeros(3, 4))
    good = FeatureCache(tmp_path, "f" * 64)
    save_file({"features": torch.zeros(3, 4)}, str(path),
              metadata={"sha256": tensor_digest(torch.zeros(3, 4)), "fingerprint": "e" * 64})
    assert good.load(key) is None  # an entry of another fingerprint (stale) is not used
    assert cache.rejected == 2 and good.rejected == 1


@pytest.mark.parametrize("two_images_every", [0, 3], ids=["one-image", "two-images"])
def test_training_with_and_without_the_fast_paths_gives_the_same_losses(tmp_path, two_images_every):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", projector="mlp2x_gelu")
    data = write_tiny_data(tmp_path / "data", n=16, two_images_every=two_images_every)
    assert any(isinstance(r.get("image"), list) for r in json.loads(data.read_text())) == bool(two_images_every)
    losses = {}
    for name, overrides in {"fast": ["train.feature_cache_dir=" + str(tmp_path / "fc")],
                            "plain": ["train.packing=false", "train.feature_cache=false",
                                      "train.malloc_tuning=false"]}.items():
        from vistune.train.loop import train

        run = tiny_run_config(ckpt, data, tmp_path / name, overrides, stage=2, max_steps=6, lr=1e-3)
        train(run, progress=False, resume=False)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records]
    assert len(losses["fast"]) == 6
    assert losses["fast"] == pytest.approx(losses["plain"], rel=1e-4)
    assert list((tmp_path / "fc").rglob("*.safetensors"))  # the cache was written (2 images)
    assert len(list((tmp_path / "fc").rglob("*.safetensors"))) == 2


def test_compiled_decoder_layers_give_the_same_losses_and_checkpoint_names(tmp_path, caplog):
    import logging

    from safetensors import safe_open

    from vistune.train.loop import train

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", projector="mlp2x_gelu")
    data = write_tiny_data(tmp_path / "data", n=12)
    losses, names = {}, {}
    compiled_runs = []
    for name, overrides in {"eager": [], "compiled": ["train.compile=true"]}.items():
        run = tiny_run_config(ckpt, data, tmp_path / name, overrides, stage=2, max_steps=3, lr=1e-3)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vistune.train.loop"):
            final = train(run, progress=False, resume=False)
        if any("compiling 2 decoder module(s)" in r.getMessage() for r in caplog.records):  # the tiny LLM's 2 layers
            compiled_runs.append(name)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records]
        with safe_open(str(next((final / "llm").glob("*.safetensors"))), "pt") as f:
            names[name] = set(f.keys())
    assert compiled_runs == ["compiled"]
    assert len(losses["compiled"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)  # float tolerance: fused kernels
    assert names["compiled"] == names["eager"]  # no `_orig_mod.` prefixes: the checkpoint loads anywhere


# -------------------------------------------------------------------------------------------------
# several images per sample


@pytest.fixture(scope="module")
def two_image_data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("twodata"), n=12, two_images_every=2)


def _direct_loss_sum(model, sample, pixels):
    """The summed loss of one sample computed by hand: each image's projected features written over its span."""
    embeds = model.llm.get_input_embeddings()(sample.input_ids.clamp(min=0)).clone()  # (T, D)
    for (start, end), p in zip(sample.image_spans, pixels):
        embeds[start:end] = model.projector(model.projector_inputs(p[None]))[0]  # (N, D)
    logits = model.llm(inputs_embeds=embeds[None]).logits[0]  # (T, V)
    return torch.nn.functional.cross_entropy(logits[:-1], sample.labels[1:], reduction="sum")


def test_a_packed_batch_with_two_image_samples_trains_each_image_at_its_own_span(model, two_image_data):
    ds = _dataset(model, two_image_data)
    items = [ds[i] for i in range(8)]
    two = next(s for s in items if len(s.images) == 2)
    first, second = (im.pixels for im in two.images)
    assert not torch.equal(first, second)
    pad = model.tokenizer.pad_token_id
    batch = collate(items, pad, pack=1024)
    assert batch["input_ids"].shape[0] < len(items) and batch["pixel_values"].shape[0] > len(items) - 2
    model.zero_grad(set_to_none=True)
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                position_ids=batch["position_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        direct = _direct_loss_sum(model, two, [first, second])
        swapped = _direct_loss_sum(model, two, [second, first])
        alone = collate([two], pad)
        ours = model(alone["input_ids"], alone["attention_mask"], alone["pixel_values"], alone["labels"]).loss_sum
        other = next(s for s in items if s is not two)
        both = collate([other, two], pad, pack=1024)
        own = collate([other], pad)
        packed = model(both["input_ids"], both["attention_mask"], both["pixel_values"], both["labels"],
                       position_ids=both["position_ids"]).loss_sum - model(
            own["input_ids"], own["attention_mask"], own["pixel_values"], own["labels"]).loss_sum
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, direct, rtol=1e-4, atol=1e-4)
    assert (swapped - direct).abs() > 1e-3  # the images' order is visible in the loss


def test_a_sample_with_one_cached_and_one_fresh_image_gives_the_tower_features_in_order(model, two_image_data,
                                                                                        tmp_path):
    from types import SimpleNamespace

    from vistune.train.loop import _Trainer

    cache = FeatureCache(tmp_path, model.feature_fingerprint("fp32"))
    ds = _dataset(model, two_image_data, cache)
    i = next(i for i in range(len(ds)) if ds.num_images(i) == 2)
    fresh = ds[i]
    with torch.no_grad():
        tower = model.vision_tower(torch.stack([im.pixels for im in fresh.images]))  # (2, N, D_v)
    cache.store(fresh.images[1].key, tower[1])  # the second image cached, the first not
    mixed = ds[i]
    assert mixed.images[0].features is None and mixed.images[0].pixels is not None
    assert mixed.images[1].pixels is None and torch.equal(mixed.images[1].features, tower[1])
    one = ds[next(j for j in range(len(ds)) if ds.num_images(j) == 1 and ds[j].pixel_values is not None)]
    batch = collate([one, mixed], model.tokenizer.pad_token_id, pack=1024)
    assert [f is None for f in batch["image_features"]].count(True) == 2 and batch["pixel_values"].shape[0] == 2
    trainer = SimpleNamespace(world=SimpleNamespace(device=torch.device("cpu")), bf16=False, model=model,
                              feature_cache=cache)
    with torch.no_grad():
        features = _Trainer._image_features(trainer, batch)  # (3, N, D_v), stored on the way
        single = model.vision_tower(one.pixel_values[None])  # (1, N, D_v)
    by_id = {one.id: [single[0]], mixed.id: [tower[0], tower[1]]}
    expected = torch.stack([f for sid in batch["ids"] for f in by_id[sid]])
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    assert cache.load(fresh.images[0].key) is not None  # the fresh image is cached now
