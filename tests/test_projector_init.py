"""The ridge warm start of a fresh projector (`train.projector_init: ridge`)."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from vistune.config import ConfigError, load_run_config
from vistune.data.dataset import LlavaDataset
from vistune.model.tiny import tiny_vlm
from vistune.train.projector_init import caption_targets, ridge_warm_start

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (140, 40, 170)}


def _world(folder, per_colour: int, seed: int) -> list[dict]:
    """Noisy solid-colour images; every caption names the image's colour (and shares the other words)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for name, rgb in COLOURS.items():
        for k in range(per_colour):
            pixels = bytes(max(0, min(255, c + rng.randint(-25, 25))) for _ in range(32 * 32) for c in rgb)
            file = f"{name}-{seed}-{k}.png"
            Image.frombytes("RGB", (32, 32), pixels).save(folder / file)
            for caption in (f"A {name} square.", f"The picture is {name}."):
                records.append({"image": file, "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": caption}]})
    return records


def _pooled_outputs(model, dataset) -> torch.Tensor:  # (I, D_llm): an image's projected tokens, averaged
    with torch.no_grad():
        return torch.stack([model.encode_images(dataset[i].pixel_values[None]).mean(1)[0]
                            for i in range(0, len(dataset), 2)])  # two records (captions) per image


def test_each_image_is_mapped_towards_its_own_captions_and_the_fit_is_reported_exactly(tmp_path):
    model = tiny_vlm("clip")
    train = LlavaDataset(_world(tmp_path / "img", 8, seed=0), tmp_path / "img", model.renderer,
                         model.image_processor)
    heldout = LlavaDataset(_world(tmp_path / "img", 3, seed=1), tmp_path / "img", model.renderer,
                           model.image_processor)
    embeddings = model.llm.get_input_embeddings().weight.detach()
    names = list(COLOURS)
    targets = caption_targets([[f"A {c} square.", f"The picture is {c}."] for c in names], model.tokenizer,
                              embeddings)  # (colours, D)

    def nearest_colour_accuracy() -> float:
        out = _pooled_outputs(model, heldout)
        truth = torch.arange(len(names)).repeat_interleave(3)
        return float((torch.cdist(out, targets).argmin(1) == truth).float().mean())

    before = nearest_colour_accuracy()
    fit = ridge_warm_start(model, train, ridge=1.0, progress=False, batch_size=7)
    assert fit.images == 40 and fit.skipped == 0
    assert nearest_colour_accuracy() == 1.0 > before

    # the reported fit equals R^2 computed from the warm-started projector's own outputs
    out = _pooled_outputs(model, train)
    y = caption_targets([[m.content for m in train.messages[i] if m.role == "assistant"]
                         + [m.content for m in train.messages[i + 1] if m.role == "assistant"]
                         for i in range(0, len(train), 2)], model.tokenizer, embeddings)
    r2 = 1 - ((out - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fit.fit_r2 == pytest.approx(float(r2), abs=1e-3)
    assert fit.fit_r2 > 0.5


def test_unreadable_images_are_counted_and_skipped(tmp_path):
    model = tiny_vlm("clip")
    records = _world(tmp_path / "img", 2, seed=0)
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    records.append({"image": "broken.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                             {"from": "gpt", "value": "A red square."}]})
    ds = LlavaDataset(records, tmp_path / "img", model.renderer, model.image_processor)
    fit = ridge_warm_start(model, ds, progress=False)
    assert (fit.images, fit.skipped) == (10, 1)
    assert torch.isfinite(model.projector.linear_1.weight).all()


def test_idf_weights_ignore_words_that_every_image_shares(tokenizer):
    embeddings = torch.randn(len(tokenizer), 8)
    targets = caption_targets([["a red square"], ["a blue square"]], tokenizer, embeddings)
    red, blue = (tokenizer.encode(" " + w, add_special_tokens=False) for w in ("red", "blue"))
    assert torch.allclose(targets[0], embeddings[red].mean(0)) and torch.allclose(targets[1], embeddings[blue].mean(0))


@pytest.mark.parametrize("extra, message", [(["init_from=some/checkpoint"], "init_from brings one"),
                                             (["model.projector=mlp2x_gelu"], "needs model.projector=linear")])
def test_ridge_needs_a_new_linear_projector(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, ["train.projector_init=ridge", *extra])


def test_a_standardising_projector_gets_the_channel_statistics_and_the_same_map(tmp_path):
    from dataclasses import replace

    from vistune.model.projector import Projector

    plain = tiny_vlm("clip")
    ds = LlavaDataset(_world(tmp_path / "img", 3, seed=0), tmp_path / "img", plain.renderer, plain.image_processor)
    ridge_warm_start(plain, ds, ridge=1.0, progress=False)
    standardising = tiny_vlm("clip")
    standardising.config = replace(standardising.config, feature_norm="channel")
    old = standardising.projector.linear_1
    standardising.projector = Projector("linear", old.in_features, old.out_features, standardise=True)
    ridge_warm_start(standardising, ds, ridge=1.0, progress=False)

    with torch.no_grad():
        tokens = torch.cat([standardising.projector_inputs(ds[i].pixel_values[None])[0] for i in range(0, len(ds), 2)])
    p = standardising.projector
    assert torch.allclose(p.input_mean, tokens.mean(0), atol=1e-4)
    assert torch.allclose(p.input_std, tokens.std(0, unbiased=False), rtol=1e-3, atol=1e-5)
    assert not torch.allclose(p.linear_1.weight, plain.projector.linear_1.weight)  # another parameterisation...
    with torch.no_grad():  # ...of the same map, and export's folded matrix is the plain one
        assert torch.allclose(p(tokens), plain.projector(tokens), atol=1e-4)
        weight, bias = p.folded_linear_1()
        assert torch.allclose(weight, plain.projector.linear_1.weight, atol=1e-5)
        assert torch.allclose(bias, plain.projector.linear_1.bias, atol=1e-4)


def test_channel_feature_norm_needs_the_warm_start_that_measures_it():
    with pytest.raises(ConfigError, match="feature_norm=channel needs train.projector_init=ridge"):
        load_run_config(None, ["model.feature_norm=channel"])
    run = load_run_config(None, ["model.feature_norm=channel", "train.projector_init=ridge"])
    assert run.model.feature_norm == "channel" and run.train.projector_init == "ridge"


def test_too_few_readable_images_is_an_error_that_says_so(tmp_path):
    model = tiny_vlm("clip")
    (tmp_path / "img").mkdir()
    records = []
    for k in range(3):
        (tmp_path / "img" / f"broken{k}.png").write_bytes(b"not an image")
        records.append({"image": f"broken{k}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"Shape number {k}."}]})
    ds = LlavaDataset(records, tmp_path / "img", model.renderer, model.image_processor)
    before = model.projector.linear_1.weight.clone()
    with pytest.raises(ValueError, match="could read only 0 image"):
        ridge_warm_start(model, ds, progress=False)
    assert torch.equal(model.projector.linear_1.weight, before)  # nothing half-fitted


def test_a_captions_file_gives_the_warm_start_every_caption_of_an_image(tmp_path):
    """Records whose one caption never names the colour teach nothing; the file's captions of the same images do."""
    import json

    model = tiny_vlm("clip")
    full = _world(tmp_path / "img", 6, seed=0)
    one_each = [{**r, "conversations": [r["conversations"][0], {"from": "gpt", "value": "A shape."}]}
                for r in full[::2]]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"image": r["image"], "caption": r["conversations"][1]["value"]}) + "\n"
                                for r in full))
    ds = LlavaDataset(one_each, tmp_path / "img", model.renderer, model.image_processor)
    heldout = LlavaDataset(_world(tmp_path / "img", 3, seed=1), tmp_path / "img", model.renderer,
                           model.image_processor)
    targets = caption_targets([[f"A {c} square.", f"The picture is {c}."] for c in COLOURS], model.tokenizer,
                              model.llm.get_input_embeddings().weight.detach())
    truth = torch.arange(len(COLOURS)).repeat_interleave(3)

    def accuracy(m) -> float:
        return float((torch.cdist(_pooled_outputs(m, heldout), targets).argmin(1) == truth).float().mean())

    records_only = tiny_vlm("clip")
    ridge_warm_start(records_only, ds, ridge=1.0, progress=False)
    fit = ridge_warm_start(model, ds, ridge=1.0, progress=False, captions=captions)
    assert fit.images == 30
    assert accuracy(model) == 1.0 > accuracy(records_only)

    unrelated = tmp_path / "other.jsonl"
    unrelated.write_text(json.dumps({"image": "elsewhere.png", "caption": "A red square."}) + "\n")
    before = model.projector.linear_1.weight.clone()
    with pytest.raises(ValueError, match="none of the training data's images"):
        ridge_warm_start(model, ds, ridge=1.0, progress=False, captions=unrelated)
    with pytest.raises(OSError):
        ridge_warm_start(model, ds, ridge=1.0, progress=False, captions=tmp_path / "missing.json")
    assert torch.equal(model.projector.linear_1.weight, before)
    with pytest.raises(ConfigError, match="read only by train.projector_init=ridge"):
        load_run_config(None, [f"train.projector_init_captions={captions}"])


def test_records_with_several_images_are_left_out_of_the_caption_targets(tmp_path):
    from vistune.train.projector_init import captions_by_image

    model = tiny_vlm("clip")
    records = _world(tmp_path / "img", 1, seed=0)  # red, green, ...: two one-image records each
    red, green = records[0]["image"], records[2]["image"]
    records.append({"image": [red, green], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare them."}, {"from": "gpt", "value": "A purple pair."}]})
    ds = LlavaDataset(records, tmp_path / "img", model.renderer, model.image_processor)
    assert len(ds) == len(records) and ds.num_images(len(ds) - 1) == 2
    found = captions_by_image(ds)
    assert len(found) == len(COLOURS)
    assert found[tmp_path / "img" / red] == ["A red square.", "The picture is red."]
    assert all("A purple pair." not in caps for caps in found.values())
    assert ridge_warm_start(model, ds, ridge=1.0, progress=False).images == len(COLOURS)
