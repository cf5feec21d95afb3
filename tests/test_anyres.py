"""LLaVA-NeXT's any-resolution tiles (`model.image_aspect_ratio: anyres`): config checks, the geometry against
transformers' helpers, parity with `LlavaNextForConditionalGeneration` after export and after import (llava-hf and
the original repository's layout), answers in batches and chat, the data check, and training."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vistune.cli import main
from vistune.config import ConfigError, ModelConfig, RunConfig, from_dict
from vistune.conversation import IMAGE_TOKEN_ID, conversation_messages
from vistune.data.anyres import AnyresLayout, best_resolution
from vistune.inference.assistant import Assistant
from vistune.model.checkpoint import load_checkpoint, save_checkpoint
from vistune.model.llm import load_tokenizer
from vistune.model.tiny import tiny_llm, tiny_vision_tower
from vistune.model.vlm import VisionLanguageModel

PROMPT = "What is in the picture?"
MAX_NEW = 8
# three aspect ratios (wide, tall, square) at two sizes; the tiny tower's tiles are 32 px
SIZES = [(90, 40), (40, 90), (50, 50), (260, 110), (110, 260), (150, 150)]
TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's grids at 32 px

CHATML_MULTIMODAL = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def photo(size: tuple[int, int]) -> Image.Image:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB").resize(size)


def anyres_vlm(tokenizer, merge: str = "spatial_unpad", projector: str = "mlp2x_gelu", seed: int = 0, **model):
    tower = tiny_vision_tower("clip", seed=seed)
    llm = tiny_llm(tokenizer, seed=seed)
    config = ModelConfig(vision_tower="tiny-clip", llm="tiny-llama", projector=projector,
                         image_aspect_ratio="anyres", patch_merge=merge, **model)
    torch.manual_seed(seed)
    return VisionLanguageModel.from_parts(config, tower, llm, tokenizer).eval()


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("points,needle", [
    ([], "model.image_grid_pinpoints is empty"),
    ([[336, 672, 1]], "model.image_grid_pinpoints[0]"),
    ([[336, 672], [672]], "model.image_grid_pinpoints[1]"),
    ([336, 672], "model.image_grid_pinpoints[0]"),
    ([[336, -672]], "model.image_grid_pinpoints[0]"),
], ids=["empty", "triple", "single", "flat-list", "negative"])
def test_bad_pinpoints_are_refused_by_name(points, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, {"image_aspect_ratio": "anyres", "image_grid_pinpoints": points}, prefix="model.")
    assert needle in str(e.value)


def test_pinpoints_that_are_not_whole_tiles_are_refused_when_the_tower_is_known(tokenizer):
    with pytest.raises(ConfigError, match=r"model.image_grid_pinpoints: \[\[32, 50\]\] is not a multiple of the "
                                          r"tower's input size 32 px"):
        anyres_vlm(tokenizer, image_grid_pinpoints=[[32, 64], [32, 50]])
    with pytest.raises(ConfigError, match="not a multiple of the tower's input size 224"):
        ModelConfig(image_aspect_ratio="anyres", image_size=224, image_grid_pinpoints=[[336, 672]])


def test_contradictions_and_unused_keys_are_refused():
    with pytest.raises(ConfigError, match="vision_select=patch"):
        ModelConfig(image_aspect_ratio="anyres", patch_merge="spatial_unpad", vision_select="cls_patch")
    with pytest.raises(ConfigError, match="read only with model.image_aspect_ratio=anyres"):
        ModelConfig(patch_merge="spatial_unpad")
    with pytest.raises(ConfigError, match="model.image_aspect_ratio='tiles'"):
        ModelConfig(image_aspect_ratio="tiles")
    with pytest.raises(ConfigError, match="model.max_image_tokens"):
        ModelConfig(max_image_tokens=0)
    with pytest.raises(ConfigError, match="projector_init=ridge"):
        from_dict(RunConfig, {"model": {"image_aspect_ratio": "anyres"}, "train": {"projector_init": "ridge"}})


def test_pad_to_square_maps_onto_image_aspect_ratio():
    with pytest.warns(FutureWarning, match="pad_to_square"):
        config = from_dict(ModelConfig, {"pad_to_square": True}, prefix="model.")
    assert config.image_aspect_ratio == "pad" and config.pad_to_square
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every old checkpoint says `false`: read quietly as the default
        assert from_dict(ModelConfig, {"pad_to_square": False}).image_aspect_ratio == "square"
    with pytest.raises(ConfigError, match="contradicts model.image_aspect_ratio='anyres'"):
        from_dict(ModelConfig, {"pad_to_square": True, "image_aspect_ratio": "anyres"}, prefix="model.")


# --------------------------------------------------------------------------------------------------
# geometry


def test_geometry_equals_transformers_helpers():
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches, unpad_image

    rng = np.random.default_rng(0)
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008], [336, 336]]
    layout = AnyresLayout(tuple(map(tuple, pinpoints)), 336, 24, 0, "spatial_unpad")
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(8, 3000, 2))
        assert best_resolution((w, h), pinpoints) == tuple(select_best_resolution((h, w), pinpoints))
        assert layout.num_tiles((w, h)) == image_size_to_num_patches((h, w), pinpoints, 336)
        rows, cols = layout.grid_shape((w, h))
        grid = torch.zeros(1, rows * 24, cols * 24)
        assert layout.merged_grid((w, h)) == tuple(unpad_image(grid, (h, w)).shape[1:])


def test_tiles_equal_the_llava_next_image_processor():
    from transformers import LlavaNextImageProcessor

    theirs = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                     image_grid_pinpoints=TINY_PINPOINTS, resample=3)
    model = anyres_vlm(load_tokenizer("smollm2-135m-instruct"))
    for size in SIZES:
        image = photo(size)
        ours = model.image_processor(image)  # (P, 3, 32, 32)
        out = theirs(images=[image], return_tensors="pt")
        assert out["image_sizes"][0].tolist() == [size[1], size[0]]
        assert ours.shape == out["pixel_values"][0].shape and max_diff(ours, out["pixel_values"][0]) <= 1e-6


# --------------------------------------------------------------------------------------------------
# export to LlavaNextForConditionalGeneration


def overfit(model, images, steps=10):
    """A few deterministic steps so greedy decoding says something (the same for both sides)."""
    from vistune.conversation import Message

    torch.manual_seed(0)
    params = [p for n, p in model.named_parameters() if not n.startswith("vision_tower.") and "embed_tokens" not in n]
    opt = torch.optim.Adam(params, lr=3e-2)
    model.train()
    for _ in range(steps):
        for image in images:
            messages = conversation_messages(PROMPT) + [Message("assistant", "A woman in a navy uniform.")]
            r = model.renderer.render(messages, num_images=1, image_sizes=[image.size])
            loss = model(torch.tensor([r.input_ids]), pixel_values=model.image_processor.batch([image]),
                         labels=torch.tensor([r.labels]), image_sizes=[image.size]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("anyres-export")
    model = anyres_vlm(tokenizer)
    overfit(model, [photo(SIZES[0]), photo(SIZES[1])])
    save_checkpoint(model, root / "ck")
    assert main(["export", "--to", "hf-llava", "--model", str(root / "ck"), "--out", str(root / "hf")]) == 0
    return root


def hf_inputs(processor, image, prompt=PROMPT):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[image], return_tensors="pt")


def test_export_writes_llava_next_that_computes_what_vistune_computes(exported):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    config = json.loads((exported / "hf" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["image_grid_pinpoints"] == TINY_PINPOINTS and config["vision_feature_select_strategy"] == "default"
    hf, info = LlavaNextForConditionalGeneration.from_pretrained(exported / "hf", dtype=torch.float32,
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    processor = AutoProcessor.from_pretrained(exported / "hf")
    ours = load_checkpoint(exported / "ck", cls=Assistant)
    assert torch.equal(hf.model.image_newline, ours.projector.image_newline)
    answers = set()
    for size in SIZES:
        image = photo(size)
        inputs = hf_inputs(processor, image)
        rendered = ours.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True,
                                        image_sizes=[size])
        n_image = int((inputs["input_ids"] == hf.config.image_token_id).sum())
        assert n_image == rendered.input_ids.count(IMAGE_TOKEN_ID) == ours.image_tokens(size), size
        with torch.no_grad():
            theirs = hf(**inputs).logits[..., : len(ours.tokenizer)]
            mine = ours(torch.tensor([rendered.input_ids]), pixel_values=ours.image_processor.batch([image]),
                        image_sizes=[size]).logits
        assert mine.shape == theirs.shape and max_diff(mine, theirs) <= 1e-4, size
        out = hf.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        answer = ours.chat(image, PROMPT, max_new_tokens=MAX_NEW, temperature=0)
        assert answer == text, size
        answers.add(answer)
    assert any(answers)  # something was said


def test_flat_merge_is_not_exportable(tokenizer, tmp_path):
    model = anyres_vlm(tokenizer, merge="flat")
    save_checkpoint(model, tmp_path / "ck")
    from vistune.model.export import ExportError, export_hf_llava

    with pytest.raises(ExportError, match="model.patch_merge=flat"):
        export_hf_llava(tmp_path / "ck", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------------------------------
# answers


def test_batch_equals_one_at_a_time_with_mixed_aspect_ratios_and_chat_reuse_equals_reprocessing(exported):
    from vistune.inference.chat import ChatSession
    from vistune.inference.engine import Engine, Request

    model = load_checkpoint(exported / "ck")
    images = [photo(SIZES[0]), photo(SIZES[4]), photo(SIZES[2]), None]
    requests = [Request.of(PROMPT if im is not None else "Say something.", im, max_new_tokens=MAX_NEW,
                           temperature=0) for im in images]
    alone = [Engine(model, prefix_reuse=False).generate_batch([r])[0] for r in requests]
    together = Engine(model).generate_batch(requests)
    assert together == alone and any(alone)

    engine = Engine(model)
    session = ChatSession(engine, images[0], params=requests[0].params)
    first = session.ask(PROMPT)
    session.add_image(images[1])
    second = session.ask("And this one?")
    assert 0 < session.last_prefill_tokens < len(engine.render(session.request("x")))  # the cache was reused
    fresh = Request(conversation_messages("And this one?", [(PROMPT, first)], image_turns=[0, 1]),
                    [images[0], images[1]])
    fresh.params = requests[0].params
    assert Engine(model, prefix_reuse=False).generate_batch([fresh])[0] == second


# --------------------------------------------------------------------------------------------------
# import


def tiny_llava_next(tokenizer, pinpoints=TINY_PINPOINTS, seed=3):
    """A random LlavaNextForConditionalGeneration (CLIP 32 px / patch 8, Llama) over `tokenizer` + `<image>`."""
    from transformers import (AddedToken, CLIPVisionConfig, LlamaConfig, LlavaNextConfig,
                              LlavaNextForConditionalGeneration)

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=False, initializer_range=0.1)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=len(tok) - 1,
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2, image_seq_length=16)
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config).eval(), tok


def test_llava_next_hf_imports_with_transformers_logits(tmp_path, tokenizer):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    reference, tok = tiny_llava_next(tokenizer)
    reference.save_pretrained(tmp_path / "src")
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=TINY_PINPOINTS, resample=3)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                       vision_feature_select_strategy="default", chat_template=CHATML_MULTIMODAL,
                       image_token="<image>", num_additional_image_tokens=1).save_pretrained(tmp_path / "src")
    assert main(["import", "--from", "llava-hf", str(tmp_path / "src"), "--out", str(tmp_path / "ck")]) == 0
    model = load_checkpoint(tmp_path / "ck", cls=Assistant)
    assert (model.config.image_aspect_ratio, model.config.patch_merge) == ("anyres", "spatial_unpad")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "src")
    for size in SIZES[:3]:
        image = photo(size)
        inputs = hf_inputs(processor, image)
        rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True,
                                         image_sizes=[size])
        expected = [reference.config.image_token_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
        assert inputs["input_ids"][0].tolist() == expected
        with torch.no_grad():
            theirs = reference(**inputs).logits[..., : len(tokenizer)]
            ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([image]),
                         image_sizes=[size]).logits[..., : len(tokenizer)]
        assert max_diff(ours, theirs) <= 1e-4, size


def test_original_llava_next_layout_imports_with_transformers_logits(tmp_path, llama_sp_dir):
    """LLaVA-NeXT's own layout: `image_aspect_ratio: anyres`, `mm_patch_merge_type: spatial_unpad`, pinpoints as
    (width, height), `model.image_newline`; an asymmetric pinpoint list shows the order is read right."""
    from conftest import make_llama_tokenizer
    from transformers import CLIPImageProcessor, CLIPVisionModel, LlavaNextImageProcessor

    tokenizer = make_llama_tokenizer(llama_sp_dir, "fast", legacy=False)
    pinpoints = [[32, 64], [64, 64], [32, 96]]  # (height, width): only wide grids
    reference, _ = tiny_llava_next(tokenizer, pinpoints)
    tower = CLIPVisionModel(reference.config.vision_config)
    tower.load_state_dict(reference.model.vision_tower.state_dict())
    tower.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip")
    src = tmp_path / "llava"
    src.mkdir()
    config = reference.config.text_config.to_dict()
    config.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                  mm_vision_tower=str(tmp_path / "clip"),
                  mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_projector_type="mlp2x_gelu",
                  mm_hidden_size=32, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                  image_grid_pinpoints=[[w, h] for h, w in pinpoints], mm_use_im_start_end=False)
    (src / "config.json").write_text(json.dumps(config))
    state = {f"model.{k}": v for k, v in reference.model.language_model.state_dict().items()}
    state["lm_head.weight"] = reference.lm_head.weight
    p = reference.model.multi_modal_projector
    for theirs, ours in (("0", p.linear_1), ("2", p.linear_2)):
        state[f"model.mm_projector.{theirs}.weight"] = ours.weight
        state[f"model.mm_projector.{theirs}.bias"] = ours.bias
    state["model.image_newline"] = reference.model.image_newline
    torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, src / "pytorch_model.bin")
    tokenizer.save_pretrained(src)
    assert main(["import", "--from", "llava", str(src), "--out", str(tmp_path / "ck")]) == 0
    model = load_checkpoint(tmp_path / "ck")
    assert model.config.image_grid_pinpoints == pinpoints
    theirs_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                               image_grid_pinpoints=pinpoints, resample=3)
    for size in [(40, 90), (90, 40)]:
        image = photo(size)
        rendered = model.renderer.render(conversation_messages(PROMPT), num_images=1, add_generation_prompt=True,
                                         image_sizes=[size])
        ids = torch.tensor([[reference.config.image_token_id if t == IMAGE_TOKEN_ID else t
                             for t in rendered.input_ids]])
        pixels = theirs_processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            theirs = reference(input_ids=ids, **pixels).logits
            ours = model(torch.tensor([rendered.input_ids]), pixel_values=model.image_processor.batch([image]),
                         image_sizes=[size]).logits
        assert max_diff(ours, theirs) <= 1e-4, size


# --------------------------------------------------------------------------------------------------
# data check and training


def anyres_data(tmp_path, n=16):
    """Tiny records over a wide and a tall image (grids 1x3 and 3x1)."""
    from vistune.train.tiny import write_tiny_data

    data = write_tiny_data(tmp_path / "data", n=n)
    photo((90, 40)).save(tmp_path / "data" / "images" / "circles.png")
    photo((40, 90)).save(tmp_path / "data" / "images" / "square.png")
    return data


def test_data_check_reports_tiles_and_refuses_images_over_max_image_tokens(tmp_path, tokenizer, capsys):
    data = anyres_data(tmp_path, n=8)
    model = anyres_vlm(tokenizer, max_image_tokens=62)  # the wide image takes 60 tokens, the tall one 66
    save_checkpoint(model, tmp_path / "ck")
    code = main(["data", "check", "--data", str(data), "--images", str(data.parent / "images"), "--model",
                 str(tmp_path / "ck"), "--json"])
    report = json.loads(capsys.readouterr().out)
    records = json.loads(data.read_text())
    tall = [r["id"] for r in records if r.get("image") == "square.png"]
    assert code == 1 and sorted(b["id"] for b in report["bad_records"]) == sorted(tall)
    assert {b["reason"] for b in report["bad_records"]} == {"too_many_image_tokens"}
    assert "takes 66 image tokens > model.max_image_tokens=62" in report["bad_records"][0]["detail"]
    stats = report["image_stats"]
    assert stats["1x3"] + stats["3x1"] == stats["images"] == sum(1 for r in records if r.get("image"))
    assert stats["max_tokens"] == 66
    wide = next(i for i, r in enumerate(records) if r.get("image") == "circles.png")
    assert main(["data", "show", "--data", str(data), "--index", str(wide), "--images", str(data.parent / "images"),
                 "--model", str(tmp_path / "ck"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["image_layouts"] == ["1x3 tiles + base, 60 tokens"]
    assert shown["image_span"][1] - shown["image_span"][0] == 60


def test_anyres_trains_both_stages_resumes_and_packing_changes_no_loss(tmp_path, tokenizer):
    import vistune
    from vistune.train.loop import TrainHooks, train
    from vistune.train.tiny import tiny_run_config

    data = anyres_data(tmp_path)
    save_checkpoint(anyres_vlm(tokenizer), tmp_path / "init")
    losses = {}
    for name, overrides in {"packed": [f"train.feature_cache_dir={tmp_path / 'fc'}"],
                            "plain": ["train.packing=false", "train.feature_cache=false"]}.items():
        run = tiny_run_config(tmp_path / "init", data, tmp_path / name, overrides, stage=1, max_steps=4)
        train(run, progress=False, resume=False)
        metrics = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in metrics]
    assert len(losses["packed"]) == 4 and losses["packed"] == pytest.approx(losses["plain"], rel=1e-4)
    # the cache keys every tile: two images of 1 base + 3 tiles each
    assert len(list((tmp_path / "fc").rglob("*.safetensors"))) == 8

    class Crash(Exception):
        pass

    def crash(step, model):
        if step == 3:
            raise Crash()

    common = dict(stage=2, max_steps=4, save_every=2)
    full = vistune.load(train(tiny_run_config(tmp_path / "packed" / "final", data, tmp_path / "s2", **common),
                              progress=False))
    run = tiny_run_config(tmp_path / "packed" / "final", data, tmp_path / "s2-resumed", **common)
    with pytest.raises(Crash):
        train(run, progress=False, hooks=TrainHooks(after_step=crash))
    resumed = vistune.load(train(run, progress=False, resume=True))
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = load_checkpoint(tmp_path / "packed" / "final")
    assert not torch.equal(before.projector.image_newline, full.projector.image_newline)  # trained
    assert full.config.image_aspect_ratio == "anyres"


def test_length_grouping_counts_each_images_own_tokens(tmp_path, tokenizer):
    from vistune.data.dataset import LlavaDataset

    data = anyres_data(tmp_path, n=8)
    model = anyres_vlm(tokenizer)
    ds = LlavaDataset(data, data.parent / "images", model.renderer, model.image_processor)
    for i, (length, record) in enumerate(zip(ds.lengths, ds.records)):
        text = sum(len(m.content) for m in ds.messages[i]) // 4
        expected = {None: 0, "circles.png": 60, "square.png": 66}[record.get("image")]  # wide 1x3, tall 3x1
        assert length == text + expected
