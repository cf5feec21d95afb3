"""Model assembly: splice exactly N features per image, clear count errors, loss only on supervised tokens."""

import pytest
import torch

from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID, Message
from vistune.data.dataset import Sample, collate
from vistune.inference.assistant import Assistant
from vistune.model.tiny import tiny_vlm
from vistune.model.vlm import ImageTokenMismatch


@pytest.fixture(scope="module")
def model():
    return tiny_vlm("clip", projector="mlp2x_gelu")


def batch_for(model, n=2):
    r = model.renderer
    samples = []
    for k in range(n):
        msgs = [Message("user", "<image>\n" + "What is shown? " * (k + 1)), Message("assistant", "A star " * (k + 1))]
        rendered = r.render(msgs, num_images=1)
        pixels = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(k))
        samples.append(Sample(str(k), torch.tensor(rendered.input_ids), torch.tensor(rendered.labels), pixels))
    return collate(samples, model.tokenizer.pad_token_id)


def test_features_land_exactly_at_image_positions(model):
    batch = batch_for(model)
    feats = model.encode_images(batch["pixel_values"])
    assert feats.shape == (2, model.num_image_tokens, model.llm.config.hidden_size)
    embeds = model.embed(batch["input_ids"], feats)
    for b in range(2):
        pos = (batch["input_ids"][b] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
        assert len(pos) == model.num_image_tokens
        torch.testing.assert_close(embeds[b, pos], feats[b])
        text_pos = (batch["input_ids"][b] != IMAGE_TOKEN_ID).nonzero().squeeze(1)
        torch.testing.assert_close(embeds[b, text_pos],
                                   model.llm.get_input_embeddings()(batch["input_ids"][b, text_pos]))


def test_count_mismatch_names_both_counts(model):
    batch = batch_for(model)
    feats = model.encode_images(batch["pixel_values"][:1])
    n = model.num_image_tokens
    with pytest.raises(ImageTokenMismatch, match=f"{2 * n} image positions but 1 image\\(s\\) x {n} features = {n}"):
        model.embed(batch["input_ids"], feats)
    with pytest.raises(ImageTokenMismatch, match="but 0 image"):
        model.embed(batch["input_ids"], None)


def test_supervised_loss_equals_naive_full_logits_loss(model):
    batch = batch_for(model)
    fast = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    naive = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                  return_logits=True)
    assert fast.num_tokens == naive.num_tokens == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(fast.loss, naive.loss, rtol=1e-5, atol=1e-5)
    # and the naive one is plain shifted cross-entropy over the logits
    logits = naive.logits[:, :-1].reshape(-1, naive.logits.shape[-1])
    ref = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(fast.loss, ref, rtol=1e-5, atol=1e-5)


def test_tower_is_frozen_and_gets_no_gradient(model):
    batch = batch_for(model)
    model.train()
    assert not model.vision_tower.training
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"])
    out.loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert all(not p.requires_grad for p in model.vision_tower.parameters())
    assert model.projector.linear_1.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("tower", ["clip", "siglip", "efficientnet"])
@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_every_tower_and_projector_assemble(tower, projector):
    m = tiny_vlm(tower, projector=projector)
    size = m.image_processor.config.crop_size
    feats = m.encode_images(torch.zeros(1, 3, size, size))
    assert feats.shape == (1, m.num_image_tokens, m.llm.config.hidden_size)
    expected = {"clip": 16, "siglip": 16, "efficientnet": 49}[tower]
    assert m.num_image_tokens == expected
    assert isinstance(Assistant.wrap(m).chat(None, "Hi", max_new_tokens=3), str)



@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_projector_norm_keeps_image_tokens_at_the_word_embedding_scale(tmp_path, projector):
    from dataclasses import replace

    from vistune.model.checkpoint import load_checkpoint, read_config, save_checkpoint
    from vistune.model.export import ExportError, check_exportable
    from vistune.model.vlm import VisionLanguageModel

    base = tiny_vlm("clip", projector=projector)
    model = VisionLanguageModel.from_parts(replace(base.config, projector_norm="rms"), base.vision_tower, base.llm,
                                           base.tokenizer)
    words = base.llm.get_input_embeddings().weight.detach()
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.projector.linear_1.weight.mul_(50.0)  # however large the projector's raw output ...
        tokens = model.encode_images(px)
    rms = tokens.pow(2).mean(-1).sqrt()  # ... every image token has the words' root-mean-square
    assert torch.allclose(rms, words.pow(2).mean().sqrt().expand_as(rms), rtol=1e-3)
    assert not torch.allclose(base.encode_images(px).pow(2).mean(-1).sqrt(), rms, rtol=0.1)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.encode_images(px), tokens)
    with pytest.raises(ExportError, match="projector_norm=rms rescales"):
        check_exportable(read_config(tmp_path / "ckpt"))
    # a checkpoint written before the option set (booleans, feature_standardise) loads the same model
    import json

    config = read_config(tmp_path / "ckpt")
    config["model"].update(feature_norm=False, feature_standardise=False, projector_norm=True)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.warns(FutureWarning):
        old = load_checkpoint(tmp_path / "ckpt")
    assert old.config.projector_norm == "rms"
    with torch.no_grad():
        assert torch.equal(old.encode_images(px), tokens)
