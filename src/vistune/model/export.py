"""Export a checkpoint to the llava-hf format: transformers' `LlavaForConditionalGeneration` + `AutoProcessor`
(`LlavaNextForConditionalGeneration` for an anyres model with `patch_merge: spatial_unpad`).

The exported directory loads with transformers alone (and with servers that read that format) and computes
what vistune computes:

- weights: the tower becomes `model.vision_tower`, the projector `model.multi_modal_projector`
  (`linear` exports as `linear_1 = W`, identity activation, `linear_2 = I`, exact in any precision), the
  LLM's decoder `model.language_model` and its head `lm_head`;
- image tokens: vistune marks image positions with the sentinel `IMAGE_TOKEN_ID` (not a vocabulary id);
  llava-hf needs a real `<image>` token, so it is added to the tokenizer, the embeddings and LM head grow by a
  zero row, and the id goes into `generation_config.suppress_tokens` so greedy decoding never emits it;
- pixels: CLIP's resize / centre crop / normalise with the checkpoint's size, mean and std
  (`CLIPImageProcessor`, or `LlavaImageProcessor` with `do_pad` for `pad_to_square`; anyres:
  `LlavaNextImageProcessor` with the model's `image_grid_pinpoints`, its `image_newline` beside the projector);
- prompts: a processor chat template that renders the checkpoint's conversation template. Before the
  directory is moved into place, the processor's token ids are compared with vistune's renderer on probe
  conversations, with one image and with two (a second image in a follow-up question, two before one
  question); any difference aborts the export.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from vistune.config import ModelConfig, from_dict
from vistune.conversation import (
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_ID,
    LLAMA2_SYSTEM,
    TEMPLATES,
    Message,
    RenderError,
    TokenizerMismatch,
    check_whole_prompt_tokenization,
    conversation_messages,
    first_difference,
)
from vistune.errors import UserError
from vistune.model.checkpoint import load_checkpoint, read_config
from vistune.model.llm import is_peft_model, keep_legacy_flag
from vistune.utils.io import atomic_dir

IMAGE_TOKEN = IMAGE_PLACEHOLDER  # "<image>": the processor expands it to one token per image feature
EXPORTABLE_TOWERS = ("clip_vision_model", "siglip_vision_model")


class ExportError(UserError, ValueError):
    """A checkpoint that cannot be expressed in the target format; the message says why."""


# --------------------------------------------------------------------------------------------------
# entry points


def export_hf_llava(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a llava-hf directory for a vistune checkpoint; nothing appears at `out` unless it all succeeds."""
    checkpoint, out = Path(checkpoint), Path(out)
    config = read_config(checkpoint)
    check_exportable(config)
    if out.resolve() == checkpoint.resolve():
        raise ExportError("--out must differ from --model (the export would overwrite the checkpoint)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty directory; choose another --out")

    model = load_checkpoint(checkpoint, dtype=_stored_dtype(checkpoint))
    with atomic_dir(out) as tmp:  # replaces an empty `out` (checked above)
        write_hf_llava(model, tmp)
    return out


# Where a run that should export goes instead (every fix below needs a new run from stage 1).
EXPORTABLE_RECIPES = "configs/llava15_*.yaml or configs/paper_*.yaml"


def export_blockers(config: dict) -> list[str]:
    """Every reason, from `config.json` alone, that llava-hf cannot express this checkpoint, each with its fix
    (empty: exportable)."""
    model_config = from_dict(ModelConfig, config["model"], prefix="model.")
    tower = config["vision_tower"]
    blockers = []
    if tower.get("kind") != "hf":
        blockers.append(
            f"its vision tower {tower.get('name', tower.get('kind'))!r} is not a transformers model, and "
            f"LlavaForConditionalGeneration loads only those: train with a CLIP or SigLIP tower ({EXPORTABLE_RECIPES}, "
            f"or model.vision_tower=<a CLIP/SigLIP hub id or directory>)")
    elif tower.get("config", {}).get("model_type") not in EXPORTABLE_TOWERS:
        blockers.append(f"vision tower type {tower.get('config', {}).get('model_type')!r} is not supported by this "
                        f"export: train with one of {', '.join(EXPORTABLE_TOWERS)} ({EXPORTABLE_RECIPES})")
    # model.feature_norm=channel is an affine map of the inputs: it folds into linear_1 (see write_hf_llava)
    if model_config.feature_norm == "token":
        blockers.append("model.feature_norm=token (each image token standardised by its own mean and spread) has "
                        "no llava-hf counterpart: train with model.feature_norm=none or channel")
    if model_config.image_position != "none":
        blockers.append(f"model.image_position={model_config.image_position} (learned row and column vectors added "
                        "to image tokens) has no llava-hf counterpart: train with model.image_position=none")
    if model_config.projector_norm == "rms":
        blockers.append("model.projector_norm=rms (image tokens rescaled after the projector) has no llava-hf "
                        "counterpart: train with model.projector_norm=none")
    if model_config.anyres and model_config.patch_merge != "spatial_unpad":
        blockers.append(f"model.patch_merge={model_config.patch_merge} (every tile's tokens one after another) has no "
                        "llava-next counterpart, which always removes the padding and adds a newline vector per row: "
                        "train with model.patch_merge=spatial_unpad")
    if model_config.template not in TEMPLATES:
        blockers.append(f"template {model_config.template!r} has no export: train with one of "
                        f"{', '.join(TEMPLATES)}")
    return blockers


def check_exportable(config: dict) -> None:
    """Refuse, from `config.json` alone, what llava-hf cannot express: one message listing every blocker."""
    blockers = export_blockers(config)
    if blockers:
        listed = "; ".join(f"({i}) {b}" for i, b in enumerate(blockers, 1))
        raise ExportError(f"this checkpoint cannot be exported to hf-llava ({len(blockers)} blocker"
                          f"{'s' if len(blockers) > 1 else ''}): {listed}. Each fix needs a new run from stage 1; "
                          "this checkpoint works as it is with vistune chat / infer / serve.")


# --------------------------------------------------------------------------------------------------
# the directory


def write_hf_llava(model, directory: Path) -> None:
    """Write weights, config, generation config, tokenizer and processor into `directory`, then check prompts."""
    from transformers import AutoProcessor

    check_exportable({"model": dataclasses.asdict(model.config), "vision_tower": model.vision_tower.config_dict()})
    try:
        check_whole_prompt_tokenization(model.renderer)
    except TokenizerMismatch as e:
        raise ExportError(f"cannot export exactly: {e}") from None
    tokenizer, image_token_id = _tokenizer_with_image_token(model.tokenizer)
    config, generation_config, weights = build_llava(model, image_token_id)
    config.save_pretrained(directory)
    generation_config.save_pretrained(directory)
    save_weights(weights, directory)
    processor = build_processor(model, tokenizer)
    processor.save_pretrained(directory)
    keep_legacy_flag(tokenizer, directory)
    _pin_image_processor_type(directory, type(processor.image_processor).__name__)
    processor = AutoProcessor.from_pretrained(directory)  # exactly what a user gets
    check_prompt_parity(model, processor, image_token_id, several_images=True)


def _stored_dtype(checkpoint: Path) -> torch.dtype:
    """The dtype the LLM's weights were saved in (the export keeps it)."""
    cfg = json.loads((checkpoint / "llm" / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _tokenizer_with_image_token(tokenizer):
    """A copy of the tokenizer with `<image>` as a special token; returns (tokenizer, its id)."""
    import copy

    from transformers import AddedToken

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    ids = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise ExportError(f"the tokenizer does not encode {IMAGE_TOKEN!r} as one token after adding it ({ids})")
    return tokenizer, ids[0]


def _llm_without_adapters(llm):
    if is_peft_model(llm):
        import copy

        return copy.deepcopy(llm).merge_and_unload()
    return llm


def build_llava(model, image_token_id: int):
    """(LlavaConfig, GenerationConfig, weights in the llava-hf file layout) for the model, its vocabulary grown to
    hold `image_token_id`. The weight names are checked against a `LlavaForConditionalGeneration` on the meta
    device. An anyres model gives `LlavaNextConfig` / `LlavaNextForConditionalGeneration`."""
    from transformers import GenerationConfig

    if model.anyres is not None:
        from transformers import LlavaNextConfig as LlavaConfig
        from transformers import LlavaNextForConditionalGeneration as LlavaForConditionalGeneration
        extra = {"image_grid_pinpoints": [list(p) for p in model.anyres.pinpoints]}
    else:
        from transformers import LlavaConfig, LlavaForConditionalGeneration
        extra = {}

    tower, projector = model.vision_tower, model.projector
    llm = _llm_without_adapters(model.llm)
    embed = llm.get_input_embeddings().weight  # (V, D)
    head = llm.get_output_embeddings().weight  # (V, D), the same tensor when tied
    tied = head.data_ptr() == embed.data_ptr()
    rows = max(embed.shape[0], image_token_id + 1)
    new_embed = _grow(embed, rows, zero_row=image_token_id if image_token_id >= embed.shape[0] else None)
    new_head = new_embed if tied else _grow(head, rows, zero_row=image_token_id if image_token_id >= head.shape[0]
                                            else None)

    text_config = llm.config.__class__.from_dict(llm.config.to_dict())
    text_config.vocab_size = rows
    vision_config = tower.model.config.__class__.from_dict(tower.model.config.to_dict())
    if tower.num_extra > 1 and tower.drop:
        raise ExportError(f"the tower has {tower.num_extra} non-patch tokens; llava-hf drops at most one")
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=model.num_image_tokens,
        vision_feature_layer=int(tower.layer),
        # "default" drops the first (CLS) token, "full" keeps every token
        vision_feature_select_strategy="default" if tower.drop == 1 else "full",
        projector_hidden_act="gelu" if projector.kind == "mlp2x_gelu" else "linear",
        multimodal_projector_bias=projector.linear_1.bias is not None,
        tie_word_embeddings=tied,
        **extra,
    )
    config.architectures = [LlavaForConditionalGeneration.__name__]

    state = {f"model.vision_tower.{k}": v for k, v in tower.model.state_dict().items()}
    state.update({f"model.language_model.{k}": v for k, v in llm.get_decoder().state_dict().items()})
    state["model.language_model.embed_tokens.weight"] = new_embed
    state["lm_head.weight"] = new_head
    p = "model.multi_modal_projector."
    state[p + "linear_1.weight"], state[p + "linear_1.bias"] = projector.folded_linear_1()
    if projector.kind == "mlp2x_gelu":
        state[p + "linear_2.weight"] = projector.linear_2.weight
        state[p + "linear_2.bias"] = projector.linear_2.bias
    else:  # identity second layer: x @ I + 0 is exact
        w = projector.linear_1.weight
        state[p + "linear_2.weight"] = torch.eye(w.shape[0], dtype=w.dtype)
        state[p + "linear_2.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    if projector.image_newline is not None:
        state["model.image_newline"] = projector.image_newline
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}

    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    expected = set(llava.state_dict())
    if set(state) != expected:
        raise ExportError(f"weights do not map onto {LlavaForConditionalGeneration.__name__}: missing "
                          f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")

    gen = GenerationConfig.from_dict(llm.generation_config.to_dict()) if llm.generation_config is not None \
        else GenerationConfig()
    eot = model.renderer.end_of_turn_ids()
    gen.eos_token_id = eot if len(eot) != 1 else eot[0]
    gen.pad_token_id = model.tokenizer.pad_token_id
    gen.bos_token_id = model.tokenizer.bos_token_id
    gen.suppress_tokens = sorted(set(gen.suppress_tokens or []) | {image_token_id})
    prefix = "" if hasattr(tower.model, "vision_model") else "vision_model."
    return config, gen, _canonical_names(state, prefix, tied)


def _canonical_names(state: dict, vision_prefix: str, tied: bool) -> dict:
    """transformers 5's module names -> the llava-hf file layout that every loader reads (transformers 4.x and 5.x,
    vLLM, SGLang): `language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
    `multi_modal_projector.*` (and llava-next's `image_newline`). A tied LM head is not stored."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.language_model."):
            out["language_model.model." + k[len("model.language_model."):]] = v
        elif k == "lm_head.weight":
            if not tied:
                out["language_model.lm_head.weight"] = v
        elif k.startswith("model.vision_tower."):
            out["vision_tower." + vision_prefix + k[len("model.vision_tower."):]] = v
        elif k.startswith("model.multi_modal_projector.") or k == "model.image_newline":
            out[k[len("model."):]] = v
        else:
            raise ExportError(f"unexpected weight name {k!r}")
    return out


def save_weights(state: dict, directory: Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Safetensors shards of at most `max_shard_bytes` (one file when it fits), with an index when sharded."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]
    size = 0
    for k in sorted(state):
        n = state[k].numel() * state[k].element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += n
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _grow(weight: torch.Tensor, rows: int, zero_row: int | None) -> torch.Tensor:
    """(V, D) -> (rows, D); new rows are zero (the image token's embedding is replaced by features anyway)."""
    out = torch.zeros(rows, weight.shape[1], dtype=weight.dtype)
    out[: weight.shape[0]] = weight.detach().cpu()
    if zero_row is not None:
        out[zero_row] = 0
    return out


def build_processor(model, tokenizer):
    """A `LlavaProcessor` (anyres: `LlavaNextProcessor`) whose image processor and chat template reproduce vistune's
    preprocessing."""
    from transformers import LlavaProcessor

    c = model.image_processor.config
    tower = model.vision_tower
    if c.crop_size != tower.image_size:
        raise ExportError(f"images are cropped to {c.crop_size} px but the tower expects {tower.image_size} px")
    common = dict(
        do_resize=True, size={"shortest_edge": c.size}, resample=3,  # PIL bicubic
        do_center_crop=True, crop_size={"height": c.crop_size, "width": c.crop_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(c.mean), image_std=list(c.std), do_convert_rgb=True,
    )
    processor_cls = LlavaProcessor
    # LLaVA-1.5's pad-to-square (mean colour, centred) is LlavaImageProcessor's do_pad
    if c.pinpoints is not None:
        from transformers import LlavaNextImageProcessor, LlavaNextProcessor

        # do_pad: every image's tiles padded to the batch's most (the model reads each image's own from its size)
        image_processor = LlavaNextImageProcessor(**common, do_pad=True,
                                                  image_grid_pinpoints=[list(p) for p in c.pinpoints])
        processor_cls = LlavaNextProcessor
    elif c.pad_to_square:
        from transformers import LlavaImageProcessor

        image_processor = LlavaImageProcessor(**common, do_pad=True)
    else:
        from transformers import CLIPImageProcessor

        image_processor = CLIPImageProcessor(**common)
    template = chat_template(model.config.template, model.tokenizer, model.config.system_prompt)
    tokenizer.chat_template = template
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(tower.model.config.patch_size),
        vision_feature_select_strategy="default" if tower.drop == 1 else "full",
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(tower.num_extra),
    )


def _pin_image_processor_type(directory: Path, saved_name: str) -> None:
    """Without torchvision transformers hands out `CLIPImageProcessorPil`; save the portable base name instead
    (older transformers and serving stacks know only that one)."""
    base = saved_name[: -len("Pil")] if saved_name.endswith("Pil") else saved_name
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        node = data.get("image_processor", data)
        if node.get("image_processor_type") == saved_name:
            node["image_processor_type"] = base
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# chat templates

# Multimodal messages ({"type": "image"} / {"type": "text"} items) become strings as vistune writes them:
# items joined by newlines, so [image, text] gives "<image>\n" + text (vistune's inference layout).
_NORMALISE = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
    "{%- else -%}{%- set parts = namespace(items=[]) -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{%- set parts.items = parts.items + ['<image>'] -%}"
    "{%- elif c['type'] == 'text' -%}{%- set parts.items = parts.items + [c['text']] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = parts.items | join('\\n') -%}{%- endif -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': text}] -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs %}"
)

_SPLIT_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set body = messages[1:] -%}"
    "{%- else -%}{%- set system = DEFAULT -%}{%- set body = messages -%}{%- endif -%}"
)


def _lit(text: str) -> str:
    """A Jinja string literal."""
    return json.dumps(text)


def chat_template(template: str, tokenizer, system: str | None = None) -> str:
    """A Jinja chat template that renders vistune's `template` as text (special tokens written as text);
    `system` is the checkpoint's system prompt, added when a conversation brings none."""
    prelude = _NORMALISE
    if system is not None:
        prelude += ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                    "{%- set messages = [{'role': 'system', 'content': " + _lit(system) + "}] + messages -%}"
                    "{%- endif -%}")
    return _chat_template(template, tokenizer, prelude)


def _chat_template(template: str, tokenizer, prelude: str) -> str:
    t = TEMPLATES[template]
    if template == "plain":
        return prelude + (
            "{%- for m in messages -%}"
            "{%- if m['role'] == 'user' and '<image>' in m['content'] -%}{{ '<image>' }}"
            "{%- elif m['role'] == 'assistant' -%}{{ m['content'] + '\\n' }}{%- endif -%}"
            "{%- endfor -%}"
        )
    if template in ("v0", "vicuna_v1"):
        if template == "vicuna_v1":
            if tokenizer.eos_token is None:
                raise ExportError("the vicuna_v1 template needs an end-of-sequence token; the tokenizer has none")
            answer_end = _lit(tokenizer.eos_token)
        else:
            answer_end = _lit("\n###")
        return prelude + _SPLIT_SYSTEM.replace("DEFAULT", _lit(t.system)) + (
            "{{- system + " + _lit(t.system_suffix) + " -}}"
            "{%- for m in body -%}"
            "{%- if m['role'] == 'user' -%}"
            "{{- (" + _lit((t.first_user_tag or t.user_tag) + " ") + " if loop.first else " + _lit(t.user_tag + " ")
            + ") + m['content'] + " + _lit(t.user_suffix + t.assistant_tag) + " -}}"
            "{%- else -%}{{- " + _lit(t.answer_prefix) + " + m['content'] + " + answer_end + " -}}{%- endif -%}"
            "{%- endfor -%}"
        )
    if template == "llama_2":
        if tokenizer.bos_token is None or tokenizer.eos_token is None:
            raise ExportError("the llama_2 template needs beginning- and end-of-sequence tokens")
        return prelude + _SPLIT_SYSTEM.replace("DEFAULT", _lit(LLAMA2_SYSTEM)) + (
            "{%- for m in body -%}"
            "{%- if m['role'] == 'user' -%}"
            "{%- if not loop.first -%}{{- " + _lit(tokenizer.bos_token) + " -}}{%- endif -%}"
            "{{- '[INST] ' -}}"
            "{%- if loop.first and system -%}{{- '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}"
            "{{- m['content'] + ' [/INST]' -}}"
            "{%- else -%}{{- ' ' + m['content'] + ' ' + " + _lit(tokenizer.eos_token) + " -}}{%- endif -%}"
            "{%- endfor -%}"
        )
    if template == "chat_template":
        own = getattr(tokenizer, "chat_template", None)
        if not own or not isinstance(own, str):
            raise ExportError("the checkpoint uses the tokenizer's chat template, but the tokenizer has none "
                              "(or several named ones)")
        return prelude + own
    raise ExportError(f"template {template!r} has no llava-hf chat template")


# --------------------------------------------------------------------------------------------------
# prompt parity


def _probes(several_images: bool = False
            ) -> list[tuple[str, list[tuple[str, str]], str, str | None, str | None, list[int]]]:
    """(label, history, prompt, answer for a training-form render or None, system or None, the question each image
    leads); with `several_images`, also conversations with two images."""
    probes = [
        ("a first question", [], "What is in the picture?", None, None, [0]),
        ("a single-turn training sample", [], "Describe the image in detail.", "A red square beside a blue circle.",
         None, [0]),
        ("a first question with a system message", [], "Is there a cat?", None, "You answer briefly.", [0]),
        ("a follow-up question", [("What colour is the square?", "It is red.")], "And the circle?", None, None, [0]),
        ("a two-turn training sample", [("Count the shapes.", "There are 2 shapes.")], "Which is bigger?",
         "The circle is bigger.", None, [0]),
    ]
    if several_images:
        probes += [
            ("two images before one question", [], "Which picture has more shapes?", None, None, [0, 0]),
            ("a second image in a follow-up question", [("Count the shapes.", "There are 2 shapes.")],
             "And in this picture?", None, None, [0, 1]),
            ("a two-image training sample", [("Count the shapes.", "There are 2 shapes.")], "And in this picture?",
             "There are 3 shapes.", None, [0, 1]),
        ]
    return probes


def check_prompt_parity(model, processor, image_token_id: int, several_images: bool = False) -> None:
    """The processor's input_ids must equal vistune's rendered ids (image span = the `<image>` id) on probe
    conversations, at generation time and in training form; raise ExportError naming the first difference.
    `several_images`: also on conversations with two images (an image in a later turn, two in one turn)."""
    from PIL import Image

    size = model.image_processor.config.crop_size
    image = Image.new("RGB", (size + 7, size), (120, 60, 30))  # anyres: a 1x2 grid, the padding unpadded
    tok = processor.tokenizer
    checked = 0
    for label, history, prompt, answer, system, image_turns in _probes(several_images):
        messages = conversation_messages(prompt, history, system=system, image_turns=image_turns)
        if answer is not None:
            messages = [*messages, Message("assistant", answer)]
        try:
            rendered = model.renderer.render(messages, num_images=len(image_turns),
                                             add_generation_prompt=answer is None,
                                             image_sizes=[image.size] * len(image_turns))
        except RenderError:
            continue  # vistune itself cannot render this shape with this template (plain: one turn only)
        expected = [image_token_id if t == IMAGE_TOKEN_ID else t for t in rendered.input_ids]
        hf_messages = _hf_messages(history, prompt, answer, system, image_turns)
        text = processor.apply_chat_template(hf_messages, add_generation_prompt=answer is None, tokenize=False)
        got = processor(text=text, images=[image] * len(image_turns), return_tensors="pt")["input_ids"][0].tolist()
        if got != expected:
            k = first_difference(got, expected)
            raise ExportError(
                f"template {model.config.template!r} cannot be exported exactly with this tokenizer: on "
                f"{label}, llava-hf's processor gives different token ids than vistune (first difference at "
                f"position {k}: processor {tok.convert_ids_to_tokens(got[k:k + 4])}, vistune "
                f"{tok.convert_ids_to_tokens(expected[k:k + 4])}): the exported chat template does not write the "
                "same text as vistune's template"
            )
        checked += 1
    if checked == 0:
        raise ExportError("no probe conversation could be rendered to check the exported chat template")


def _hf_messages(history, prompt, answer, system, image_turns=(0,)) -> list[dict]:
    """The same conversation in transformers' multimodal message format (each question's images before it)."""
    out: list[dict] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    turns = [*history, (prompt, answer)]
    for i, (q, a) in enumerate(turns):
        content = [{"type": "image"}] * list(image_turns).count(i) + [{"type": "text", "text": q}]
        out.append({"role": "user", "content": content})
        if a is not None:
            out.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return out
