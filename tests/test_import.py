"""`vistune import`: released LLaVA checkpoints (transformers' llava-hf format, the original repository's full and
stage-1 forms) become vistune checkpoints that compute what the source computes. Sources are tiny random models
built here with the classes real checkpoints use; the reference side is transformers' LlavaForConditionalGeneration.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from vistune.cli import main
from vistune.conversation import IMAGE_TOKEN_ID, conversation_messages
from vistune.inference.assistant import Assistant
from vistune.model.checkpoint import load_checkpoint

PROMPT = "What is in the picture?"
MAX_NEW = 12

# A ChatML template for multimodal messages, as llava-hf processors carry (images written as `<image>\n`).
CHATML_MULTIMODAL = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def photo():
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").resize((60, 44))  # non-square: exercises resize, crop or pad


def tiny_configs(vocab: int, image_token: int, tower: str = "clip", **llava):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, SiglipVisionConfig

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    vision = CLIPVisionConfig(**common, projection_dim=32) if tower == "clip" else SiglipVisionConfig(**common)
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=False, initializer_range=0.1)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                       image_seq_length=16, vision_feature_layer=-2, **llava)


def build_llava_hf(directory, tokenizer, tower="clip", strategy="default", act="gelu", seed=0):
    """A tiny llava-hf directory: LlavaForConditionalGeneration + LlavaProcessor (CLIP image processor, multimodal
    ChatML chat template), the tokenizer grown by `<image>`; returns (model, processor)."""
    from transformers import AddedToken, CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    config = tiny_configs(len(tok), image_id, tower, vision_feature_select_strategy=strategy,
                          projector_hidden_act=act)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                         resample=3, do_center_crop=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy=strategy, chat_template=CHATML_MULTIMODAL,
                               image_token="<image>", num_additional_image_tokens=1 if tower == "clip" else 0)
    processor.save_pretrained(directory)
    return model, processor


def hf_prompt_inputs(processor, image, prompt=PROMPT):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[image], return_tensors="pt")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------------------------------
# llava-hf


@pytest.fixture(scope="module")
def imported_hf(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("llava-hf")
    source, processor = build_llava_hf(root / "src", tokenizer)
    assert main(["import", "--from", "llava-hf", str(root / "src"), "--out", str(root / "ck")]) == 0
    return source, processor, root


def test_llava_hf_logits_and_greedy_text_equal_transformers(imported_hf, photo):
    source, processor, root = imported_hf
    model = load_checkpoint(root / "ck", cls=Assistant)
    image_id = source.config.image_token_id
    inputs = hf_prompt_inputs(processor, photo)
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    ids = [image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
    assert ids == inputs["input_ids"][0].tolist()  # the processor's prompt, token for token
    pixels = model.image_processor.batch([photo])
    assert max_diff(pixels, inputs["pixel_values"]) <= 1e-5
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=pixels).logits
        theirs = source(**inputs).logits
    diff = max_diff(ours, theirs)
    assert ours.shape == theirs.shape and diff <= 1e-5, f"max abs logit difference {diff:.3g}"
    assert ours[0, -1].std() > 0.05  # the logits are not all alike: the comparison can fail

    text = model.chat(photo, PROMPT, max_new_tokens=MAX_NEW, temperature=0)
    out = source.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=model.renderer.end_of_turn_ids())
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) >= 5  # several tokens: equality is not trivial
    assert processor.decode(new, skip_special_tokens=True).strip() == text


def test_llava_hf_checkpoint_records_its_source_and_settings(imported_hf):
    _, _, root = imported_hf
    config = json.loads((root / "ck" / "config.json").read_text())
    assert config["imported_from"] == {"format": "llava-hf", "source": str(root / "src")}
    m = config["model"]
    assert (m["vision_layer"], m["vision_select"], m["projector"], m["template"]) == (-2, "patch", "mlp2x_gelu",
                                                                                        "chat_template")
    assert config["num_image_tokens"] == 16 and config["image_processor"]["crop_size"] == 32


def test_export_of_an_imported_llava_hf_model_gives_back_the_same_tensors(imported_hf, tmp_path):
    from transformers import LlavaForConditionalGeneration

    source, _, root = imported_hf
    assert main(["export", "--model", str(root / "ck"), "--to", "hf-llava", "--out", str(tmp_path / "hf")]) == 0
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ours, theirs = back.state_dict(), source.state_dict()
    assert set(ours) == set(theirs)
    different = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, first {different[:3]}"
    assert back.config.image_token_id == source.config.image_token_id
    assert back.config.vision_feature_select_strategy == "default" and back.config.projector_hidden_act == "gelu"


def test_imported_llava_hf_fine_tunes_with_lora_from_init_from(imported_hf, tmp_path, photo):
    from vistune.train.loop import train
    from vistune.train.tiny import tiny_run_config, write_tiny_data

    _, _, root = imported_hf
    data = write_tiny_data(tmp_path / "data", n=6)
    run = tiny_run_config(root / "ck", data, tmp_path / "run", stage=2, max_steps=2, lora=True, lora_r=4,
                          lora_alpha=8, lr=1e-2)
    final = train(run, progress=False)
    before, after = load_checkpoint(root / "ck", cls=Assistant), load_checkpoint(final, cls=Assistant)
    assert json.loads((final / "config.json").read_text())["lora"] is True
    ids = torch.tensor([before.renderer.render(conversation_messages(PROMPT), num_images=1,
                                               add_generation_prompt=True).input_ids])
    pixels = before.image_processor.batch([photo])
    with torch.no_grad():
        changed = max_diff(before(ids, pixel_values=pixels).logits, after(ids, pixel_values=pixels).logits)
    assert changed > 1e-4  # the adapters were trained and saved
    assert isinstance(after.chat(photo, PROMPT, max_new_tokens=3, temperature=0), str)


def test_siglip_with_default_strategy_is_refused_naming_the_key(tmp_path, tokenizer, capsys):
    build_llava_hf(tmp_path / "src", tokenizer, tower="siglip", strategy="default")
    code = main(["import", "--from", "llava-hf", str(tmp_path / "src"), "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 2 and "vision_feature_select_strategy='default'" in err and "0 non-patch tokens" in err
    assert not (tmp_path / "ck").exists()


def test_siglip_full_imports_with_equal_logits(tmp_path, tokenizer, photo):
    from vistune.model.importers import import_llava_hf

    source, processor = build_llava_hf(tmp_path / "src", tokenizer, tower="siglip", strategy="full", seed=1)
    import_llava_hf(tmp_path / "src", tmp_path / "ck")
    model = load_checkpoint(tmp_path / "ck")
    assert model.config.vision_select == "patch" and model.num_image_tokens == 16
    inputs = hf_prompt_inputs(processor, photo)
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([photo])).logits
        theirs = source(**inputs).logits
    assert max_diff(ours, theirs) <= 1e-5, f"max abs logit difference {max_diff(ours, theirs):.3g}"


def test_stacked_linear_projector_and_unknown_activation_are_refused(tmp_path, tokenizer):
    from vistune.model.importers import ImportRefused, import_llava_hf

    build_llava_hf(tmp_path / "a", tokenizer, act="linear")  # random second layer: not the identity
    with pytest.raises(ImportRefused, match="projector_hidden_act='linear' with a second layer"):
        import_llava_hf(tmp_path / "a", tmp_path / "ck")
    build_llava_hf(tmp_path / "b", tokenizer, act="relu")
    with pytest.raises(ImportRefused, match="projector_hidden_act='relu'"):
        import_llava_hf(tmp_path / "b", tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_a_chat_template_vistune_cannot_reproduce_asks_for_template(tmp_path, tokenizer):
    from vistune.model.importers import ImportRefused, import_llava_hf

    _, processor = build_llava_hf(tmp_path / "src", tokenizer)
    # an answer with no end-of-turn marker: vistune supervises one, so the prompts cannot agree
    processor.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
                               "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
                               "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    processor.save_pretrained(tmp_path / "src")
    with pytest.raises(ImportRefused, match="pass --template"):
        import_llava_hf(tmp_path / "src", tmp_path / "ck")
    import_llava_hf(tmp_path / "src", tmp_path / "ck", template="chat_template")  # the tokenizer's own: ChatML
    assert load_checkpoint(tmp_path / "ck").config.template == "chat_template"


# --------------------------------------------------------------------------------------------------
# the original repository's format


def reference_llava(tokenizer, projector: str, seed: int = 2):
    """The reference: a LlavaForConditionalGeneration whose vocabulary is the tokenizer's plus one image-token row
    (id V); `linear` is llava-hf's linear_1 with an identity second layer."""
    from transformers import LlavaForConditionalGeneration

    vocab = len(tokenizer)
    config = tiny_configs(vocab + 1, vocab, projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if projector == "linear":
        with torch.no_grad():
            p = model.model.multi_modal_projector
            p.linear_2.weight.copy_(torch.eye(64))
            p.linear_2.bias.zero_()
    return model


def write_tower_dir(directory, reference, seed: int | None = None):
    """A CLIP tower directory (weights and image processor) as mm_vision_tower names one; `seed` gives it other
    (random) weights than the reference's."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    tower = CLIPVisionModel(reference.config.vision_config)
    if seed is None:
        tower.load_state_dict(reference.model.vision_tower.state_dict())
    else:
        torch.manual_seed(seed)
        tower = CLIPVisionModel(reference.config.vision_config)
    tower.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def original_weights(reference, projector: str, with_tower: bool) -> dict:
    state = {f"model.{k}": v for k, v in reference.model.language_model.state_dict().items()}
    state["lm_head.weight"] = reference.lm_head.weight
    p = reference.model.multi_modal_projector
    if projector == "linear":
        state["model.mm_projector.weight"], state["model.mm_projector.bias"] = p.linear_1.weight, p.linear_1.bias
    else:
        for theirs, ours in (("0", p.linear_1), ("2", p.linear_2)):
            state[f"model.mm_projector.{theirs}.weight"] = ours.weight
            state[f"model.mm_projector.{theirs}.bias"] = ours.bias
    if with_tower:
        state.update({f"model.vision_tower.vision_tower.{k}": v
                      for k, v in reference.model.vision_tower.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def mm_config(reference, tower_dir, projector: str, **overrides) -> dict:
    config = reference.config.text_config.to_dict()
    config.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"], mm_vision_tower=str(tower_dir),
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_projector_type=projector,
                  mm_hidden_size=32, image_aspect_ratio="pad", mm_use_im_start_end=False,
                  mm_use_im_patch_token=False, mm_patch_merge_type="flat", tune_mm_mlp_adapter=False)
    config.update(overrides)
    return config


def write_original(directory, tokenizer, reference, tower_dir, projector, with_tower, weights_format="bin",
                   **overrides):
    """A LlavaLlamaForCausalLM directory in the original repository's layout."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(mm_config(reference, tower_dir, projector, **overrides)))
    state = original_weights(reference, projector, with_tower)
    if weights_format == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"))
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_tokenizer(llama_sp_dir):
    from conftest import make_llama_tokenizer

    return make_llama_tokenizer(llama_sp_dir, "fast", legacy=False)


def reference_logits_and_text(reference, model, photo, tokenizer):
    """Reference logits and greedy text for vistune's rendered prompt (image positions as the reference's image
    token), with the reference's own image processor (LLaVA-1.5's pad-to-square)."""
    from transformers import LlavaImageProcessor

    pixels = LlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_pad=True,
                                 resample=3)(images=[photo], return_tensors="pt")["pixel_values"]
    ours_pixels = model.image_processor.batch([photo])
    assert max_diff(pixels, ours_pixels) <= 1e-5
    rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True)
    image_id = reference.config.image_token_id
    ids = torch.tensor([[image_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]])
    with torch.no_grad():
        ours = model(torch.tensor([rendered.input_ids]), pixel_values=ours_pixels).logits
        theirs = reference(input_ids=ids, pixel_values=pixels).logits
    out = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=MAX_NEW, do_sample=False,
                             eos_token_id=model.renderer.end_of_turn_ids())
    new = out[0, ids.shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return ours, theirs, text, len(new)


@pytest.mark.parametrize("projector,with_tower,weights_format", [("mlp2x_gelu", False, "bin"),
                                                                 ("linear", True, "safetensors")])
def test_original_llava_logits_and_greedy_text_equal_transformers(tmp_path, llama_tokenizer, photo, projector,
                                                                  with_tower, weights_format):
    reference = reference_llava(llama_tokenizer, projector)
    # with the tower saved in the checkpoint, the tower directory holds other weights: the saved ones must win
    tower_dir = write_tower_dir(tmp_path / "clip", reference, seed=7 if with_tower else None)
    src = write_original(tmp_path / "llava", llama_tokenizer, reference, tower_dir, projector, with_tower,
                         weights_format)
    assert main(["import", "--from", "llava", str(src), "--out", str(tmp_path / "ck")]) == 0
    model = load_checkpoint(tmp_path / "ck", cls=Assistant)
    assert (model.config.template, model.config.projector, model.config.pad_to_square) == ("vicuna_v1", projector,
                                                                                            True)
    ours, theirs, text, n = reference_logits_and_text(reference, model, photo, llama_tokenizer)
    diff = max_diff(ours, theirs)
    assert ours.shape == theirs.shape and diff <= 1e-5, f"max abs logit difference {diff:.3g}"
    assert n >= 5
    assert model.chat(photo, PROMPT, max_new_tokens=MAX_NEW, temperature=0) == text


def test_stage1_projector_with_its_base_llm_and_tower(tmp_path, llama_tokenizer, photo):
    from transformers import LlamaForCausalLM

    reference = reference_llava(llama_tokenizer, "mlp2x_gelu", seed=3)
    tower_dir = write_tower_dir(tmp_path / "clip", reference)
    llm = LlamaForCausalLM(reference.config.text_config)
    llm.model.load_state_dict(reference.model.language_model.state_dict())
    llm.lm_head.load_state_dict(reference.lm_head.state_dict())
    llm.save_pretrained(tmp_path / "vicuna")
    llama_tokenizer.save_pretrained(tmp_path / "vicuna")
    stage1 = tmp_path / "pretrain"
    stage1.mkdir()
    weights = {k: v for k, v in original_weights(reference, "mlp2x_gelu", False).items() if "mm_projector" in k}
    torch.save(weights, stage1 / "mm_projector.bin")
    (stage1 / "config.json").write_text(json.dumps(mm_config(reference, "openai/unreachable-tower", "mlp2x_gelu")))
    assert main(["import", "--from", "llava", "--projector", str(stage1 / "mm_projector.bin"), "--llm",
                 str(tmp_path / "vicuna"), "--vision-tower", str(tower_dir), "--out", str(tmp_path / "ck"),
                 "--template", "vicuna_v1"]) == 0
    model = load_checkpoint(tmp_path / "ck", cls=Assistant)
    ours, theirs, text, _ = reference_logits_and_text(reference, model, photo, llama_tokenizer)
    assert max_diff(ours, theirs) <= 1e-5, f"max abs logit difference {max_diff(ours, theirs):.3g}"
    assert model.chat(photo, PROMPT, max_new_tokens=MAX_NEW, temperature=0) == text
    # without --template a stage-1 projector imports as `plain`, the format it was trained in
    assert main(["import", "--from", "llava", "--projector", str(stage1 / "mm_projector.bin"), "--llm",
                 str(tmp_path / "vicuna"), "--vision-tower", str(tower_dir), "--out", str(tmp_path / "ck1")]) == 0
    assert json.loads((tmp_path / "ck1" / "config.json").read_text())["model"]["template"] == "plain"


class NotATensor:
    """Anything but tensors in a .bin: `weights_only=True` refuses to unpickle it."""


@pytest.mark.parametrize("overrides,weights,needle", [
    ({"mm_use_im_start_end": True}, None, "mm_use_im_start_end=True"),
    ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial"}, None, "mm_patch_merge_type='spatial'"),
    ({"mm_projector_type": "mlp3x_gelu"}, None, "mm_projector_type='mlp3x_gelu'"),
    ({"mm_vision_tower": "/nowhere/clip"}, None, "mm_vision_tower='/nowhere/clip'"),
    ({"mm_projector_type": "linear"}, None, "mm_projector_type='linear'"),  # weights are mlp2x_gelu's
    ({}, {"model.mm_projector.0.weight": NotATensor()}, "cannot be read as a tensors-only checkpoint"),
], ids=["im_start_end", "spatial_merge", "mlp3x", "tower", "projector_weights", "pickle"])
def test_original_checkpoints_vistune_cannot_represent_are_refused(tmp_path, llama_tokenizer, capsys, overrides,
                                                                   weights, needle):
    reference = reference_llava(llama_tokenizer, "mlp2x_gelu")
    tower_dir = write_tower_dir(tmp_path / "clip", reference)
    src = write_original(tmp_path / "llava", llama_tokenizer, reference, tower_dir, "mlp2x_gelu", False,
                         **overrides)
    if weights is not None:
        torch.save(weights, src / "pytorch_model.bin")
    code = main(["import", "--from", "llava", str(src), "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ck").exists()


def test_flags_that_do_not_apply_are_usage_errors(tmp_path, capsys):
    assert main(["import", "--from", "llava-hf", str(tmp_path), "--llm", "x", "--out", str(tmp_path / "o")]) == 2
    assert "--llm only apply to --from llava" in capsys.readouterr().err
    assert main(["import", "--from", "llava", "--out", str(tmp_path / "o")]) == 2
    assert "either a full checkpoint directory or --projector" in capsys.readouterr().err


def test_imported_llava_hf_chats_and_serves_like_any_checkpoint(imported_hf, photo, tmp_path, capsys):
    import base64
    import io

    from fastapi.testclient import TestClient

    from vistune.inference.engine import Engine
    from vistune.serve.app import create_app

    _, _, root = imported_hf
    model = load_checkpoint(root / "ck", cls=Assistant)
    want = model.chat(photo, PROMPT, max_new_tokens=8, temperature=0)
    assert want
    photo.save(tmp_path / "photo.png")
    capsys.readouterr()
    assert main(["chat", "--model", str(root / "ck"), "--image", str(tmp_path / "photo.png"), "--prompt", PROMPT,
                 "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == want
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    app = create_app(Engine(model), model_name="imported")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/v1/chat/completions", json={
            "model": "imported", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want
