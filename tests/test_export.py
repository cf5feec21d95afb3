"""`vistune export --to hf-llava`: the exported directory loads with transformers alone and computes what vistune
computes (prompt ids, pixels, logits, greedy text). The transformers side of every test uses only
`LlavaForConditionalGeneration` / `AutoProcessor` / safetensors on the exported files."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vistune.cli import main
from vistune.conversation import IMAGE_TOKEN_ID, Message, conversation_messages
from vistune.inference.assistant import Assistant
from vistune.model.checkpoint import save_checkpoint
from vistune.model.export import ExportError, check_exportable, export_hf_llava, write_hf_llava
from vistune.model.tiny import tiny_llm, tiny_vision_tower, tiny_vlm
from vistune.model.vlm import VisionLanguageModel

PROMPT = "What is in the picture?"
ANSWER = "A woman in a navy uniform with a tie."


@pytest.fixture(scope="module")
def photo():
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").resize((300, 240))  # non-square: exercises resize + centre crop


def overfit(model, image, steps=12):
    """A few deterministic steps on one sample so greedy decoding says something (the same for both sides)."""
    torch.manual_seed(0)
    messages = conversation_messages(PROMPT) + [Message("assistant", ANSWER)]
    r = model.renderer.render(messages, num_images=1)
    ids, labels = torch.tensor([r.input_ids]), torch.tensor([r.labels])
    pixels = model.image_processor.batch([image])
    params = [p for n, p in model.named_parameters()
              if not n.startswith("vision_tower.") and "embed_tokens" not in n]  # the big (tied) table stays
    opt = torch.optim.Adam(params, lr=3e-2)
    model.train()
    for _ in range(steps):
        loss = model(ids, pixel_values=pixels, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def hf_load(directory):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32,
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval(), AutoProcessor.from_pretrained(directory)


def hf_inputs(processor, image, prompt=PROMPT):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[image], return_tensors="pt")


@pytest.fixture(scope="module")
def trained_llm(photo):
    """The tiny LLM after a few steps on one sample, shared by every tower/projector pair below."""
    model = tiny_vlm("clip")
    overfit(model, photo)
    return model.llm


@pytest.fixture(scope="module", params=[("clip", "linear"), ("clip", "mlp2x_gelu"), ("siglip", "linear"),
                                        ("siglip", "mlp2x_gelu")], ids=lambda p: "-".join(p))
def exported(request, tmp_path_factory, photo, trained_llm):
    tower, projector = request.param
    base = tiny_vlm(tower, projector=projector)
    model = VisionLanguageModel.from_parts(base.config, base.vision_tower, copy.deepcopy(trained_llm),
                                           base.tokenizer, base.projector)
    directory = tmp_path_factory.mktemp(f"{tower}-{projector}")
    save_checkpoint(model, directory / "ckpt")
    code = main(["export", "--model", str(directory / "ckpt"), "--to", "hf-llava", "--out", str(directory / "hf")])
    assert code == 0
    hf, processor = hf_load(directory / "hf")
    return model.eval(), hf, processor, directory / "hf"


def test_processor_ids_are_vistunes_rendered_ids(exported, photo):
    model, hf, processor, _ = exported
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    image_id = hf.config.image_token_id
    assert image_id >= len(model.tokenizer)  # a new id, outside vistune's vocabulary
    expected = [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
    got = hf_inputs(processor, photo)["input_ids"][0].tolist()
    assert got == expected
    assert got.count(image_id) == model.num_image_tokens


def test_pixels_and_logits_match_within_1e4(exported, photo):
    model, hf, processor, _ = exported
    inputs = hf_inputs(processor, photo)
    pixels = model.image_processor.batch([photo])
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-5, rtol=0)
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=pixels).logits  # (1, T, V)
        theirs = hf(**inputs).logits  # (1, T, V + 1)
    vocab = ours.shape[-1]
    assert theirs.shape[:2] == ours.shape[:2] and theirs.shape[-1] == vocab + 1
    assert (theirs[..., :vocab] - ours).abs().max().item() <= 1e-4
    assert torch.all(theirs[..., hf.config.image_token_id] == 0)  # the zero row of the added token


def test_two_images_in_two_turns_give_vistunes_ids_and_logits(exported, photo):
    """A conversation whose follow-up question brings a second image: the processor expands each `<image>` and
    the exported model splices each image at its own place, as vistune does."""
    model, hf, processor, _ = exported
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((200, 260))
    follow_up = "And in this one?"
    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                   {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": follow_up}]}]
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[photo, other], return_tensors="pt")
    messages = conversation_messages(follow_up, [(PROMPT, ANSWER)], image_turns=[0, 1])
    rendered = model.renderer.render(messages, num_images=2, add_generation_prompt=True)
    image_id = hf.config.image_token_id
    assert inputs["input_ids"][0].tolist() == [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
    assert len(rendered.image_spans) == 2 and rendered.image_spans[1][0] > rendered.image_spans[0][1] + 10
    pixels = model.image_processor.batch([photo, other])
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-5, rtol=0)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=pixels).logits  # (1, T, V)
        swapped = model(torch.tensor([rendered.input_ids]), pixel_values=pixels.flip(0)).logits
        theirs = hf(**inputs).logits[..., :ours.shape[-1]]  # (1, T, V)
    assert (theirs - ours).abs().max().item() <= 1e-4
    assert (theirs - swapped).abs().max().item() > 1e-2  # the images' order matters to both


def test_greedy_generation_gives_vistunes_text(exported, photo):
    model, hf, processor, _ = exported
    ours = Assistant.wrap(model).chat(photo, PROMPT, max_new_tokens=20, temperature=0)
    inputs = hf_inputs(processor, photo)
    out = hf.generate(**inputs, max_new_tokens=20, do_sample=False)
    theirs = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert out.shape[1] - inputs["input_ids"].shape[1] >= 5  # several tokens: equality is not trivial
    assert theirs == ours


def test_config_and_projector_weights(exported):
    model, hf, processor, directory = exported
    tower = model.vision_tower
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["vision_feature_layer"] == tower.layer
    assert cfg["image_seq_length"] == model.num_image_tokens
    is_clip = tower.model.config.model_type == "clip_vision_model"
    assert cfg["vision_feature_select_strategy"] == ("default" if is_clip else "full")
    assert processor.num_additional_image_tokens == (1 if is_clip else 0)
    assert processor.patch_size == tower.model.config.patch_size
    proc_cfg = json.loads((directory / "processor_config.json").read_text())
    assert proc_cfg["image_processor"]["image_processor_type"] == "CLIPImageProcessor"
    assert "language_model.lm_head.weight" not in load_file(str(directory / "model.safetensors"))  # tied
    gen = json.loads((directory / "generation_config.json").read_text())
    assert hf.config.image_token_id in gen["suppress_tokens"]

    weights = load_file(str(directory / "model.safetensors"))
    p = "multi_modal_projector."
    assert torch.equal(weights[p + "linear_1.weight"], model.projector.linear_1.weight)
    if model.projector.kind == "linear":
        assert cfg["projector_hidden_act"] == "linear"
        dim = model.projector.linear_1.weight.shape[0]
        assert torch.equal(weights[p + "linear_2.weight"], torch.eye(dim))
        assert torch.count_nonzero(weights[p + "linear_2.bias"]) == 0
    else:
        assert cfg["projector_hidden_act"] == "gelu"
        assert torch.equal(weights[p + "linear_2.weight"], model.projector.linear_2.weight)


def test_suppressed_image_token_is_never_generated(exported, photo):
    """Make `<image>` the arg-max everywhere; greedy decoding with the saved generation config still skips it."""
    model, hf, processor, _ = exported
    inputs = hf_inputs(processor, photo)
    image_id = hf.config.image_token_id
    head = hf.get_output_embeddings().weight
    saved = head[image_id].clone()
    with torch.no_grad():
        hidden = hf(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
        head[image_id] = hidden * 1e3  # a huge logit for the image token at the last position
        try:
            assert hf(**inputs).logits[0, -1].argmax().item() == image_id
            out = hf.generate(**inputs, max_new_tokens=3, do_sample=False)
        finally:
            head[image_id] = saved
    assert image_id not in out[0, inputs["input_ids"].shape[1]:].tolist()


# --------------------------------------------------------------------------------------------------
# templates, untied heads, pad-to-square


@pytest.mark.parametrize("template", ["plain", "v0", "vicuna_v1", "llama_2", "chat_template"])
def test_templates_export_with_matching_ids(tmp_path, template, photo):
    model = tiny_vlm("clip", template=template)
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")  # runs the id check on five probe conversations
    _, processor = hf_load(tmp_path / "hf")
    history = [] if template == "plain" else [("What colour is the square?", "It is red.")]
    messages = conversation_messages("Which shape is larger?", history)
    rendered = model.renderer.render(messages, num_images=1, add_generation_prompt=True)
    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]} if i == 0 else
                   {"role": "user", "content": [{"type": "text", "text": q}]}
                   for i, (q, _) in enumerate([*history, ("Which shape is larger?", None)])]
    if history:
        hf_messages.insert(1, {"role": "assistant", "content": [{"type": "text", "text": history[0][1]}]})
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    got = processor(text=text, images=[photo])["input_ids"][0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert list(got) == [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]


@pytest.mark.parametrize("template", ["v0", "vicuna_v1", "llama_2"])
def test_separator_templates_match_on_first_questions(template, photo):
    """The exported template reproduces vistune's ids for a first question (what `chat` sends) and a single-turn
    training sample."""
    from vistune.model.export import _tokenizer_with_image_token, build_processor

    model = tiny_vlm("clip", template=template)
    tokenizer, image_id = _tokenizer_with_image_token(model.tokenizer)
    processor = build_processor(model, tokenizer)
    for answer in (None, ANSWER):
        messages = conversation_messages(PROMPT) + ([Message("assistant", answer)] if answer else [])
        rendered = model.renderer.render(messages, num_images=1, add_generation_prompt=answer is None)
        hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        if answer:
            hf_messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        text = processor.apply_chat_template(hf_messages, add_generation_prompt=answer is None, tokenize=False)
        got = processor(text=text, images=[photo])["input_ids"][0]
        assert list(got) == [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]


def test_untied_lm_head_gets_a_zero_row_and_matches(tmp_path, photo):
    """Vicuna/Llama-style LLMs have a separate LM head: both matrices grow, logits still agree."""
    base = tiny_vlm("clip")
    llm = tiny_llm(base.tokenizer, tie=False, seed=1)
    model = VisionLanguageModel.from_parts(base.config, base.vision_tower, llm, base.tokenizer)
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")
    hf, processor = hf_load(tmp_path / "hf")
    assert not hf.config.tie_word_embeddings
    image_id = hf.config.image_token_id
    assert hf.lm_head.weight.data_ptr() != hf.get_input_embeddings().weight.data_ptr()
    assert torch.count_nonzero(hf.lm_head.weight[image_id]) == 0
    assert torch.equal(hf.lm_head.weight[:image_id], llm.lm_head.weight)
    inputs = hf_inputs(processor, photo)
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([photo])).logits
        theirs = hf(**inputs).logits[..., : ours.shape[-1]]
    assert (theirs - ours).abs().max().item() <= 1e-4


def test_pad_to_square_exports_as_llava_image_processor(tmp_path, photo):
    base = tiny_vlm("clip")
    config = dataclasses.replace(base.config, image_aspect_ratio="pad")
    model = VisionLanguageModel.from_parts(config, base.vision_tower, base.llm, base.tokenizer, base.projector)
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")
    _, processor = hf_load(tmp_path / "hf")
    assert type(processor.image_processor).__name__.startswith("LlavaImageProcessor")
    ours = model.image_processor.batch([photo])
    theirs = processor.image_processor(images=[photo], return_tensors="pt")["pixel_values"]
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    # padding changed the pixels: a centre crop of the same photo differs
    cropped = base.image_processor.batch([photo])
    assert (cropped - ours).abs().max() > 0.1


def test_feature_standardisation_is_folded_into_the_first_layer(tmp_path, photo):
    from vistune.model.projector import Projector

    base = tiny_vlm("clip")
    config = dataclasses.replace(base.config, feature_norm="channel")
    dv, dl = base.projector.linear_1.in_features, base.projector.linear_1.out_features
    projector = Projector("linear", dv, dl, standardise=True)
    projector.load_state_dict({**base.projector.state_dict(), "input_mean": torch.randn(dv) * 0.5,
                               "input_std": torch.rand(dv) + 0.5})
    model = VisionLanguageModel.from_parts(config, base.vision_tower, base.llm, base.tokenizer, projector).eval()
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")
    hf, processor = hf_load(tmp_path / "hf")
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([photo])).logits
        theirs = hf(**hf_inputs(processor, photo)).logits[..., : ours.shape[-1]]
        unstandardised = VisionLanguageModel.from_parts(base.config, base.vision_tower, base.llm, base.tokenizer,
                                                        base.projector).eval()
        plain = unstandardised(torch.tensor([rendered.input_ids]),
                               pixel_values=model.image_processor.batch([photo])).logits
    assert (theirs - ours).abs().max().item() <= 1e-4
    assert (plain - ours).abs().max().item() > 1e-3  # the standardisation changed what the LLM sees


# --------------------------------------------------------------------------------------------------
# refusals


def test_efficientnet_tower_is_refused_with_a_clear_message(tmp_path, capsys):
    model = tiny_vlm("efficientnet")
    save_checkpoint(model, tmp_path / "ckpt")
    code = main(["export", "--model", str(tmp_path / "ckpt"), "--to", "hf-llava", "--out", str(tmp_path / "hf")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'efficientnet-lite0' is not a transformers model" in err and "train with a CLIP or SigLIP tower" in err
    assert "configs/llava15_*.yaml" in err and "vistune chat / infer / serve" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_every_blocker_is_named_at_once_and_the_demo_recipe_is_refused_with_the_way_out():
    from vistune.config import ModelConfig, load_run_config, to_dict
    from vistune.demo import DEMO_CONFIGS

    demo_model = load_run_config(DEMO_CONFIGS / "stage2.yaml", read_init_from=False).model
    config = {"model": to_dict(demo_model),
              "vision_tower": {"kind": "efficientnet", "name": "efficientnet-lite0"}}
    with pytest.raises(ExportError) as err:
        check_exportable(config)
    message = str(err.value)
    assert "(2 blockers)" in message and "(1) its vision tower 'efficientnet-lite0'" in message
    assert "(2) model.projector_norm=rms" in message and "feature_norm" not in message  # channel exports
    config["model"]["feature_norm"] = "token"
    with pytest.raises(ExportError, match=r"\(3 blockers\).*tower.*feature_norm=token.*projector_norm=rms"):
        check_exportable(config)
    config = {"model": to_dict(ModelConfig(vision_tower="tiny-clip")),
              "vision_tower": {"kind": "hf", "config": {"model_type": "clip_vision_model"}}}
    check_exportable(config)  # the exportable path passes


def test_feature_norm_is_refused(tmp_path):
    base = tiny_vlm("clip")
    config = dataclasses.replace(base.config, feature_norm="token")
    model = VisionLanguageModel.from_parts(config, base.vision_tower, base.llm, base.tokenizer, base.projector)
    save_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(ExportError, match="feature_norm=token .each image token standardised"):
        export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    tower = tiny_vision_tower("clip")
    base = tiny_vlm("clip")
    model = VisionLanguageModel.from_parts(base.config, tower, base.llm, base.tokenizer)
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="must differ"):
        export_hf_llava(tmp_path / "ckpt", tmp_path / "ckpt")


def test_not_a_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["export", "--model", str(tmp_path / "empty"), "--to", "hf-llava", "--out", str(tmp_path / "hf")])
    assert code == 2
    assert "not a vistune checkpoint" in capsys.readouterr().err


def test_lora_model_exports_with_adapters_merged(tmp_path, photo):
    from peft import LoraConfig, get_peft_model

    base = tiny_vlm("clip")
    llm = get_peft_model(base.llm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # non-zero adapters, so merging changes the weights
        for name, p in llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model = VisionLanguageModel.from_parts(base.config, base.vision_tower, llm, base.tokenizer, base.projector)
    (tmp_path / "hf").mkdir()
    write_hf_llava(model.eval(), tmp_path / "hf")  # the in-memory model, as load_checkpoint returns it
    hf, processor = hf_load(tmp_path / "hf")
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([photo])).logits
        theirs = hf(**hf_inputs(processor, photo)).logits[..., : ours.shape[-1]]
        with llm.disable_adapter():
            without = model(torch.tensor([rendered.input_ids]),
                            pixel_values=model.image_processor.batch([photo])).logits
    assert (without - ours).abs().max() > 1e-3  # the adapters matter
    assert isinstance(model.llm, type(llm))  # exporting merged a copy, the model keeps its adapters
    assert (theirs - ours).abs().max().item() <= 1e-4


def test_system_prompt_exports_with_matching_ids(tmp_path, photo):
    model = tiny_vlm("clip", template="chat_template")
    model.set_conversation("chat_template", "Answer about the image.")
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf_llava(tmp_path / "ckpt", tmp_path / "hf")  # the id check covers the system prompt
    _, processor = hf_load(tmp_path / "hf")
    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which shape?"}]}]
    text = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nAnswer about the image.<|im_end|>")
    rendered = model.renderer.render(conversation_messages("Which shape?"), num_images=1, add_generation_prompt=True)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    got = processor(text=text, images=[photo])["input_ids"][0]
    assert list(got) == [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
