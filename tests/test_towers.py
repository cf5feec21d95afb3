"""CLIP and SigLIP towers (tiny random configs of the same transformers classes real checkpoints use): feature
layer, token selection, freezing, checkpoint round trip, and pixels against transformers' own processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vistune.conversation import conversation_messages
from vistune.data.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessor, ImageProcessorConfig
from vistune.model.checkpoint import load_checkpoint, save_checkpoint
from vistune.model.tiny import tiny_vision_tower, tiny_vlm

TOWERS = ["clip", "siglip"]


@pytest.fixture(scope="module")
def photo():
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").crop((0, 0, 512, 380))  # non-square, landscape


def pixels(seed=0, n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def layer_outputs(tower, px):
    """Every encoder layer's output captured with forward hooks (independent of `hidden_states`), preceded by
    the encoder's input."""
    m = getattr(tower.model, "vision_model", tower.model)
    captured = []

    def grab(_module, args, kwargs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    def grab_input(_module, args, kwargs):
        captured.append(args[0] if args else kwargs.get("inputs_embeds", kwargs.get("hidden_states")))

    handles = [m.encoder.register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(grab, with_kwargs=True) for layer in m.encoder.layers]
    try:
        with torch.no_grad():
            tower.model(pixel_values=px)
    finally:
        for h in handles:
            h.remove()
    return captured  # [encoder input, layer 1, ..., layer L]


@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("layer", [0, 1, -2, -1])
def test_features_come_from_the_chosen_layer(kind, layer):
    tower = tiny_vision_tower(kind, layer=layer)
    px = pixels()
    expected = layer_outputs(tower, px)[layer]  # (B, extra + grid, D)
    got = tower(px)
    assert got.shape == (2, tower.num_tokens, tower.hidden_size)
    assert torch.allclose(got, expected[:, tower.drop:], atol=1e-6, rtol=0)
    if layer != -1:  # a different layer gives different features
        other = tiny_vision_tower(kind, layer=-1)
        assert not torch.allclose(other(px), got, atol=1e-3)


def test_layer_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="out of range"):
        tiny_vision_tower("clip", layer=3)  # 2 layers: hidden states 0..2
    with pytest.raises(ValueError, match="out of range"):
        tiny_vision_tower("siglip", layer=-4)


def test_clip_patch_drops_cls_and_cls_patch_keeps_it():
    patch = tiny_vision_tower("clip", select="patch")
    both = tiny_vision_tower("clip", select="cls_patch")
    grid = (32 // 8) ** 2
    assert (patch.num_tokens, both.num_tokens) == (grid, grid + 1)
    px = pixels()
    f_patch, f_both = patch(px), both(px)
    assert f_patch.shape[1] == grid and f_both.shape[1] == grid + 1
    assert torch.equal(f_both[:, 1:], f_patch)  # same weights (same seed): CLS is exactly the extra first token
    cls = layer_outputs(both, px)[-2][:, 0]
    assert torch.allclose(f_both[:, 0], cls, atol=1e-6, rtol=0)


def test_siglip_has_no_cls_token():
    tower = tiny_vision_tower("siglip", select="patch")
    assert tower.num_tokens == (32 // 8) ** 2 and tower.num_extra == 0
    with pytest.raises(ValueError, match="cls_patch.*no"):
        tiny_vision_tower("siglip", select="cls_patch")


@pytest.mark.parametrize("kind", TOWERS)
def test_tower_is_frozen_and_stays_in_eval(kind):
    model = tiny_vlm(kind)
    tower = model.vision_tower
    assert not any(p.requires_grad for p in tower.parameters())
    model.train()
    assert model.llm.training and not tower.training
    assert not any(m.training for m in tower.modules())
    ids = model.renderer.render(conversation_messages("Describe it.") , num_images=1,
                                add_generation_prompt=True).input_ids
    ids = torch.tensor([ids])
    labels = ids.clone().masked_fill(ids < 0, -100)
    model(ids, pixel_values=pixels(n=1), labels=labels).loss.backward()
    assert all(p.grad is None for p in tower.parameters())
    assert model.projector.linear_1.weight.grad is not None  # gradient reached the projector


@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("layer", [-2, 1])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, kind, layer, photo):
    model = tiny_vlm(kind, projector="mlp2x_gelu", layer=layer)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded.vision_tower.model) is type(model.vision_tower.model)
    assert (loaded.vision_tower.layer, loaded.vision_tower.select) == (layer, model.vision_tower.select)
    assert loaded.image_processor.config == model.image_processor.config
    px = model.image_processor.batch([photo])
    assert torch.equal(loaded.image_processor.batch([photo]), px)
    ids = torch.tensor([model.renderer.render(conversation_messages("What is it?"), num_images=1,
                                              add_generation_prompt=True).input_ids])
    with torch.no_grad():
        assert torch.equal(loaded.vision_tower(px), model.vision_tower(px))
        assert torch.equal(loaded(ids, pixel_values=px).logits, model(ids, pixel_values=px).logits)


# --------------------------------------------------------------------------------------------------
# pixels: vistune's processor against transformers' PIL-based CLIP processor (no torchvision needed)


def _clip_pil_processor():
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    except ImportError as e:  # older transformers: the slow processor is the PIL one
        pytest.skip(f"transformers has no PIL-based CLIP processor here ({e})")
    return CLIPImageProcessorPil


@pytest.mark.parametrize("size", [224, 336])
def test_pixels_match_transformers_clip_processor(photo, size):
    cls = _clip_pil_processor()
    ours = ImageProcessor(ImageProcessorConfig(size=size, crop_size=size, mean=OPENAI_CLIP_MEAN,
                                               std=OPENAI_CLIP_STD))
    theirs = cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                 image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    expected = theirs(images=[photo], return_tensors="pt")["pixel_values"]  # (1, 3, size, size)
    got = ours.batch([photo])
    assert got.shape == expected.shape == (1, 3, size, size)
    assert (got - expected).abs().max().item() <= 1e-5
    portrait = photo.transpose(Image.Transpose.ROTATE_90)  # the long edge is now the height
    assert (ours.batch([portrait]) - theirs(images=[portrait], return_tensors="pt")["pixel_values"]).abs().max() <= 1e-5


def test_tower_processor_uses_the_towers_size_and_siglip_mean():
    """Each tower's default processor config crops to its own input size; a SigLIP checkpoint's mean/std (read
    from its preprocessor config) replaces CLIP's."""
    from vistune.model.vision import HFVisionTower

    siglip = tiny_vision_tower("siglip", image_size=48)
    assert siglip.processor_config().crop_size == 48
    tower = HFVisionTower(siglip.model, -2, "patch", {"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    cfg = tower.processor_config()
    assert (cfg.mean, cfg.std, cfg.size) == ((0.5,) * 3, (0.5,) * 3, 48)


# --------------------------------------------------------------------------------------------------
# input resolution


def test_efficientnet_resolution_sets_the_grid_and_survives_a_checkpoint(tmp_path, photo):
    model = tiny_vlm("efficientnet", image_size=160)
    assert model.num_image_tokens == 25 and model.image_processor.config.crop_size == 160
    px = model.image_processor.batch([photo])
    assert px.shape[-2:] == (160, 160)
    assert model.encode_images(px).shape[1] == 25  # 160 / 32 = 5 cells a side
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.num_image_tokens == 25 and loaded.config.image_size == 160
    with torch.no_grad():
        assert torch.equal(loaded.encode_images(px), model.encode_images(px))


def test_a_resolution_the_tower_was_not_built_for_is_refused():
    from dataclasses import replace

    from vistune.model.vlm import VisionLanguageModel

    clip = tiny_vlm("clip")
    with pytest.raises(ValueError, match="runs at 32 px"):
        VisionLanguageModel.from_parts(replace(clip.config, image_size=64), clip.vision_tower, clip.llm,
                                       clip.tokenizer)
    assert VisionLanguageModel.from_parts(replace(clip.config, image_size=32), clip.vision_tower, clip.llm,
                                          clip.tokenizer).num_image_tokens == 16
    base = tiny_vlm("efficientnet")
    with pytest.raises(ValueError, match="built for 224 px"):
        VisionLanguageModel.from_parts(replace(base.config, image_size=160), base.vision_tower, base.llm,
                                       base.tokenizer)


def test_efficientnet_cls_patch_puts_the_pooled_map_first_and_survives_a_checkpoint(tmp_path, photo):
    """A CNN has no CLS token; `cls_patch` gives it the global average of the chosen map (what its own
    classifier reads) as the first token, before the unchanged grid."""
    patch = tiny_vision_tower("efficientnet", layer=-4, image_size=160)
    pooled = tiny_vision_tower("efficientnet", layer=-4, image_size=160, select="cls_patch")
    pooled.load_state_dict(patch.state_dict())
    assert (patch.num_tokens, pooled.num_tokens) == (25, 26)
    px = ImageProcessor(patch.processor_config()).batch([photo])
    with torch.no_grad():
        grid, both = patch(px), pooled(px)
    assert torch.equal(both[:, 1:], grid)
    assert torch.allclose(both[:, 0], grid.mean(1), atol=1e-6, rtol=0)
    model = tiny_vlm("efficientnet", image_size=160, layer=-4, select="cls_patch")
    assert model.config.vision_select == "cls_patch" and model.num_image_tokens == 26
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.num_image_tokens == 26
    with torch.no_grad():
        assert torch.equal(loaded.encode_images(px), model.encode_images(px))
