"""Released LLaVA checkpoints in: the llava-hf format and the original repository's format become vistune checkpoints.

- `import_llava_hf`: a transformers `LlavaForConditionalGeneration` directory (CLIP or SigLIP tower, linear or
  two-layer GELU projector, any causal LM) with its processor, or a `LlavaNextForConditionalGeneration` one
  (LLaVA-NeXT: anyres tiles, `spatial_unpad` with its `image_newline`). The tower, projector and LLM keep their weights;
  the processor's image settings become vistune's image processing, and its chat template (or a named vistune
  template) the conversation format, checked against the processor's token ids on probe conversations.
- `import_llava`: the original repository's `LlavaLlamaForCausalLM` directory (`model_type: llava_llama`, Llama
  weights beside `model.mm_projector.*` and, when it was trained, `model.vision_tower.*`; LLaVA-NeXT's
  `image_aspect_ratio: anyres` with `mm_patch_merge_type` flat or spatial_unpad and `model.image_newline`), or a
  stage-1 `mm_projector.bin` (with the `config.json` saved beside it) plus its base LLM and tower.

Weights are read from safetensors, or from `.bin` files with `torch.load(..., weights_only=True)` (tensors only,
never arbitrary unpickling). Anything vistune cannot compute exactly as the source does is refused with a message
that names the key; the output directory appears only when the whole import succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import torch

from vistune.config import ConfigError, ModelConfig
from vistune.conversation import TEMPLATE_NAMES
from vistune.data.image import ImageProcessor, ImageProcessorConfig
from vistune.errors import UserError
from vistune.model.projector import Projector
from vistune.model.vision import HFVisionTower
from vistune.model.vlm import VisionLanguageModel

SUPPORTED_TOWERS = ("clip_vision_model", "siglip_vision_model")
ORIGINAL_PROJECTORS = ("linear", "mlp2x_gelu")

# A chat template for multimodal messages ({"type": "image"|"text"} items) also receives vistune's plain string
# contents: a string becomes one text item (vistune writes any `<image>` placeholder into the text itself).
STRING_CONTENT_PRELUDE = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': [{'type': 'text', 'text': m['content']}]}] -%}"
    "{%- else -%}{%- set ns.msgs = ns.msgs + [m] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs -%}"
)
from vistune.conversation import RenderError, check_whole_prompt_tokenization
from vistune.model.checkpoint import save_checkpoint
from vistune.model.export import ExportError, check_prompt_parity


class ImportRefused(UserError, ValueError):
    """A source checkpoint that vistune cannot represent exactly; the message names the key and the file."""


# --------------------------------------------------------------------------------------------------
# entry points


def import_llava_hf(src: str | os.PathLike, out: str | os.PathLike, template: str | None = None,
                    system_prompt: str | None = None) -> Path:
    """Write a vistune checkpoint at `out` for the llava-hf directory `src`.

    `template` (None: the processor's chat template, checked against the processor's ids) names the
    conversation format; `system_prompt` is added to conversations that bring none."""
    from transformers import AutoProcessor, AutoTokenizer

    src = Path(src)
    _check_out(out, src)
    config_path = src / "config.json"
    raw = _read_json(config_path)
    if raw.get("model_type") not in ("llava", "llava_next"):
        raise ImportRefused(f"{config_path}: model_type is {raw.get('model_type')!r}, not 'llava' "
                            "(LlavaForConditionalGeneration) or 'llava_next' (LlavaNextForConditionalGeneration); for "
                            "the original repository's format use --from llava")
    next_ = raw["model_type"] == "llava_next"
    if next_:
        from transformers import LlavaNextConfig as LlavaConfig
        from transformers import LlavaNextForConditionalGeneration as LlavaForConditionalGeneration
    else:
        from transformers import LlavaConfig, LlavaForConditionalGeneration
    config = LlavaConfig.from_pretrained(src)
    tower_type = config.vision_config.model_type
    if tower_type not in SUPPORTED_TOWERS:
        raise ImportRefused(f"{config_path}: vision_config.model_type={tower_type!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_TOWERS)})")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ImportRefused(f"{config_path}: vision_feature_layer={layer!r} concatenates several layers' features; "
                            "vistune feeds the projector one layer")
    act = config.projector_hidden_act
    if act not in ("gelu", "linear"):
        raise ImportRefused(f"{config_path}: projector_hidden_act={act!r} has no vistune projector (gelu: "
                            "mlp2x_gelu; linear with an identity second layer: linear)")

    model, info = LlavaForConditionalGeneration.from_pretrained(src, dtype="auto", weights_only=True,
                                                                output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise ImportRefused(f"{src}: the weights do not match its config.json (missing "
                            f"{sorted(info['missing_keys'])[:5]}, unexpected {sorted(info['unexpected_keys'])[:5]})")
    processor = AutoProcessor.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    processor_dict = _image_processor_dict(processor.image_processor)
    if next_:  # llava-next's do_pad pads the tile count of a batch, not the image to a square
        processor_dict["do_pad"] = False
    image_config = image_processor_config(processor_dict, src / "preprocessor_config.json")

    vision = model.model.vision_tower
    tower = HFVisionTower(vision, layer, "patch", {"image_mean": list(image_config.mean),
                                                   "image_std": list(image_config.std)})
    strategy = config.vision_feature_select_strategy
    if strategy == "default" and tower.num_extra != 1:
        raise ImportRefused(f"{config_path}: vision_feature_select_strategy='default' drops the first token, but "
                            f"this {tower_type} tower has {tower.num_extra} non-patch tokens, so a patch token would "
                            "be lost; vistune drops exactly the non-patch tokens")
    if strategy == "full" and tower.num_extra:
        if next_:
            raise ImportRefused(f"{config_path}: vision_feature_select_strategy='full' keeps the CLS token, which "
                                "llava-next's tile grid cannot hold; vistune's spatial_unpad takes grid tokens only")
        tower = HFVisionTower(vision, layer, "cls_patch", tower.processor_defaults)
    projector = _llava_hf_projector(model.model.multi_modal_projector, act, config_path)
    anyres = {}
    if next_:
        anyres = _next_settings(config.image_grid_pinpoints, processor_dict.get("image_grid_pinpoints"), tower,
                                config_path)
        image_config = dataclasses.replace(image_config, pinpoints=tuple(map(tuple, anyres["image_grid_pinpoints"])))
        projector.image_newline = torch.nn.Parameter(model.model.image_newline.detach().clone())
    llm = _causal_lm(config.text_config, model.model.language_model, model.lm_head,
                     bool(config.tie_word_embeddings))
    _check_image_size(image_config, tower, src / "preprocessor_config.json")

    derived = template is None
    if derived:
        chat = processor.chat_template if isinstance(processor.chat_template, str) else None
        if not chat:
            raise ImportRefused(f"{src} has no chat template (processor chat_template): pass --template "
                                f"(one of {', '.join(TEMPLATE_NAMES)})")
        tokenizer.chat_template = STRING_CONTENT_PRELUDE + chat
        template = "chat_template"
    model_config = ModelConfig(vision_tower=str(src), vision_layer=layer, vision_select=tower.select,
                               projector=projector.kind, llm=str(src), template=template,
                               system_prompt=system_prompt,
                               **{"image_aspect_ratio": "pad" if image_config.pad_to_square else "square", **anyres})
    vlm = VisionLanguageModel(model_config, tower, projector, llm, tokenizer, ImageProcessor(image_config))
    if derived:
        try:
            check_prompt_parity(vlm, processor, int(config.image_token_id))
        except ExportError as e:
            raise ImportRefused(f"{src}: the processor's chat template cannot be reproduced by vistune's renderer "
                                f"({e}); pass --template with the conversation format the model was trained "
                                f"with (one of {', '.join(TEMPLATE_NAMES)})") from None
    return _save(vlm, out, {"format": "llava-next-hf" if next_ else "llava-hf", "source": str(src)})


def import_llava(src: str | os.PathLike | None, out: str | os.PathLike, projector: str | os.PathLike | None = None,
                 llm: str | os.PathLike | None = None, vision_tower: str | os.PathLike | None = None,
                 template: str | None = None, system_prompt: str | None = None) -> Path:
    """Write a vistune checkpoint at `out` for an original-repository LLaVA checkpoint.

    Either `src`, a full `LlavaLlamaForCausalLM` directory, or `projector`, a stage-1 `mm_projector.bin` (or
    `.safetensors`) whose training `config.json` lies beside it, with `llm`, the base LLM directory.
    `vision_tower` is a local directory for the tower named by `mm_vision_tower` (None: that name as it is).
    `template` defaults to `vicuna_v1` (LLaVA v1 / v1.5's `llava_v1`) for a full model and `plain` for stage 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if (src is None) == (projector is None):
        raise ImportRefused("give either a full LLaVA directory or a stage-1 projector file (--projector), not "
                            f"{'both' if src is not None else 'neither'}")
    if projector is not None:
        if llm is None:
            raise ImportRefused("a stage-1 projector needs its base LLM directory (--llm DIR)")
        projector_file = Path(projector)
        config_path = projector_file.parent / "config.json"
        if not config_path.is_file():
            raise ImportRefused(f"{config_path} is missing: a stage-1 projector is read with the config.json its "
                                "training saved beside it (mm_projector_type, mm_vision_tower, mm_vision_select_*)")
        config = _read_json(config_path)
        state = {k: v for k, v in _read_tensors(projector_file).items()}
        source, template = projector_file, template or "plain"
    else:
        src = Path(src)
        config_path = src / "config.json"
        config = _read_json(config_path)
        if config.get("model_type") != "llava_llama":
            raise ImportRefused(f"{config_path}: model_type is {config.get('model_type')!r}, not 'llava_llama' "
                                "(for transformers' LlavaForConditionalGeneration use --from llava-hf)")
        state = read_weights(src)
        source, template = src, template or "vicuna_v1"
    settings = original_settings(config, config_path)
    _check_out(out, source)

    tower_name = str(vision_tower) if vision_tower is not None else settings["mm_vision_tower"]
    tower = _original_tower(tower_name, settings, state, config_path, vision_tower is not None)
    projector_module = _original_projector(settings["mm_projector_type"], state, tower.hidden_size, config_path)

    if projector is None:
        llm_state = {k: v for k, v in state.items()
                     if not k.startswith(("model.mm_projector.", "model.vision_tower.", "model.image_newline"))}
        llm_config = LlamaConfig.from_dict({k: v for k, v in config.items() if k not in _LLAVA_KEYS})
        llm_model = _causal_lm_from_state(llm_config, llm_state, f"{src}: the language model's weights")
        tokenizer = AutoTokenizer.from_pretrained(src)
        llm_name = str(src)
    else:
        llm_model = AutoModelForCausalLM.from_pretrained(llm, dtype="auto", weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(llm)
        llm_name = str(llm)
    llm_dim = llm_model.get_input_embeddings().weight.shape[1]
    if projector_module.linear_1.out_features != llm_dim:
        raise ImportRefused(f"{config_path}: the projector writes {projector_module.linear_1.out_features}-wide "
                            f"tokens but the LLM's hidden_size is {llm_dim}")

    pad = settings["image_aspect_ratio"] == "pad"
    image_config = tower.processor_config(pad_to_square=pad)
    tower_processor = Path(tower_name) / "preprocessor_config.json"
    if tower_processor.is_file():
        image_config = image_processor_config({**_read_json(tower_processor), "do_pad": pad}, tower_processor)
        _check_image_size(image_config, tower, tower_processor)
    anyres = {}
    if settings["image_aspect_ratio"] == "anyres":
        # the original lists pinpoints as (width, height); vistune and transformers as (height, width)
        points = settings["image_grid_pinpoints"]
        anyres = _next_settings(None if points is None else [[h, w] for w, h in points], None, tower, config_path)
        anyres["patch_merge"] = settings["mm_patch_merge_type"]
        image_config = dataclasses.replace(image_config, pinpoints=tuple(map(tuple, anyres["image_grid_pinpoints"])))
        if anyres["patch_merge"] == "spatial_unpad":
            if "model.image_newline" not in state:
                raise ImportRefused(f"{config_path}: mm_patch_merge_type='spatial_unpad' but the weights have no "
                                    "model.image_newline")
            projector_module.image_newline = torch.nn.Parameter(state["model.image_newline"].clone())
    model_config = ModelConfig(vision_tower=tower_name, vision_layer=tower.layer, vision_select=tower.select,
                               projector=projector_module.kind, llm=llm_name, template=template,
                               system_prompt=system_prompt,
                               **{"image_aspect_ratio": settings["image_aspect_ratio"], **anyres})
    vlm = VisionLanguageModel(model_config, tower, projector_module.to(llm_model.dtype), llm_model, tokenizer,
                              ImageProcessor(image_config))
    return _save(vlm, out, {"format": "llava" if projector is None else "llava-stage1", "source": str(source)})


# --------------------------------------------------------------------------------------------------
# the original repository's config keys

# keys of an original LLaVA config.json that describe the multimodal parts, not the Llama
_LLAVA_KEYS = {"model_type", "architectures", "image_aspect_ratio", "image_grid_pinpoints", "freeze_mm_mlp_adapter",
               "freeze_mm_vision_resampler", "tune_mm_mlp_adapter", "tune_mm_vision_resampler", "use_mm_proj",
               "unfreeze_mm_vision_tower", "tokenizer_model_max_length", "tokenizer_padding_side", "mm_hidden_size",
               "mm_projector_lr", "mm_projector_type", "mm_use_im_patch_token", "mm_use_im_start_end",
               "mm_vision_select_feature", "mm_vision_select_layer", "mm_vision_tower", "mm_patch_merge_type",
               "mm_resampler_type", "mm_vision_tower_lr", "s2", "s2_scales", "_name_or_path"}


def original_settings(config: dict, path: Path) -> dict:
    """The multimodal settings of an original LLaVA config, each checked; ImportRefused names the first key vistune
    cannot represent."""
    def refuse(key: str, why: str):
        raise ImportRefused(f"{path}: {key}={config.get(key)!r} {why}")

    if config.get("mm_use_im_start_end"):
        refuse("mm_use_im_start_end", "wraps each image in <im_start>/<im_end> tokens; vistune's templates place "
                                      "the image tokens alone")
    aspect = config.get("image_aspect_ratio", "square")
    if aspect not in (None, "square", "pad", "anyres"):
        refuse("image_aspect_ratio", "has no vistune counterpart (supported: square, i.e. resize and centre-crop, "
                                     "pad, i.e. pad to a square, and anyres, LLaVA-NeXT's tiles)")
    merge = config.get("mm_patch_merge_type", "flat")
    if merge not in ("flat", "spatial_unpad") or (merge != "flat" and aspect != "anyres"):
        refuse("mm_patch_merge_type", "has no vistune counterpart (supported: flat, and spatial_unpad with "
                                      "image_aspect_ratio=anyres)")
    kind = config.get("mm_projector_type", "linear")
    if kind not in ORIGINAL_PROJECTORS:
        refuse("mm_projector_type", f"has no vistune projector (supported: {', '.join(ORIGINAL_PROJECTORS)})")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        refuse("mm_vision_select_feature", "is not one of 'patch', 'cls_patch'")
    layer = config.get("mm_vision_select_layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        refuse("mm_vision_select_layer", "must be an integer layer index")
    tower = config.get("mm_vision_tower") or config.get("vision_tower")
    if not isinstance(tower, str) or not tower:
        refuse("mm_vision_tower", "must name the vision tower (a hub id or a directory)")
    if config.get("s2"):
        refuse("s2", "(multi-scale S2 features) has no vistune counterpart")
    return {"mm_use_im_start_end": False, "image_aspect_ratio": aspect or "square", "mm_projector_type": kind,
            "mm_patch_merge_type": merge, "image_grid_pinpoints": config.get("image_grid_pinpoints"),
            "mm_vision_select_feature": select, "mm_vision_select_layer": layer, "mm_vision_tower": tower,
            "mm_hidden_size": config.get("mm_hidden_size")}


def _next_settings(pinpoints, processor_pinpoints, tower, config_path: Path) -> dict:
    """The anyres model keys of a LLaVA-NeXT source: its pinpoints (height, width) checked against the tower."""
    if processor_pinpoints is not None and pinpoints is not None and \
            [list(p) for p in processor_pinpoints] != [list(p) for p in pinpoints]:
        raise ImportRefused(f"{config_path}: image_grid_pinpoints {pinpoints} differ from the image processor's "
                            f"{processor_pinpoints}")
    keys = {"image_aspect_ratio": "anyres", "patch_merge": "spatial_unpad",
            "image_grid_pinpoints": None if pinpoints is None else [list(p) for p in pinpoints]}
    try:
        model = ModelConfig(vision_select=tower.select, **keys)
        keys["image_grid_pinpoints"] = [list(p) for p in model.grid_pinpoints(tower.image_size)]
    except ConfigError as e:
        raise ImportRefused(f"{config_path}: {e}") from None
    return keys


def _original_tower(name: str, settings: dict, state: dict, config_path: Path, from_flag: bool) -> HFVisionTower:
    """The tower named by mm_vision_tower (or --vision-tower), with the checkpoint's own tower weights over it when
    it saved them (`model.vision_tower.vision_tower.*`)."""
    from transformers import AutoConfig

    what = "--vision-tower" if from_flag else f"mm_vision_tower={name!r} in {config_path}"
    try:
        cfg = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ImportRefused(f"{what}: cannot read a vision tower there ({str(e).splitlines()[0]}); pass "
                            "--vision-tower DIR with a local copy of the tower") from None
    vision_type = getattr(cfg, "vision_config", cfg).model_type
    if vision_type != "clip_vision_model":
        raise ImportRefused(f"{what}: a {vision_type!r} tower; the original LLaVA uses CLIP (its patch selection "
                            "drops the first token, which only CLIP's CLS is)")
    tower = HFVisionTower.from_pretrained(name, settings["mm_vision_select_layer"],
                                          settings["mm_vision_select_feature"])
    prefix = "model.vision_tower.vision_tower."
    saved = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if saved:
        missing, unexpected = tower.model.load_state_dict(saved, strict=False)
        missing = [k for k in missing if not k.startswith("vision_model.post_layernorm")]
        if missing or unexpected:
            raise ImportRefused(f"{config_path.parent}: its model.vision_tower.* weights do not fit the tower at "
                                f"{name} (missing {missing[:5]}, unexpected {unexpected[:5]})")
        tower.to(next(iter(saved.values())).dtype)
    if settings["mm_hidden_size"] is not None and settings["mm_hidden_size"] != tower.hidden_size:
        raise ImportRefused(f"{config_path}: mm_hidden_size={settings['mm_hidden_size']} but the tower at {name} is "
                            f"{tower.hidden_size} wide")
    return tower


def _original_projector(kind: str, state: dict, vision_dim: int, config_path: Path) -> Projector:
    """`model.mm_projector.weight/bias` (linear) or `model.mm_projector.{0,2}.weight/bias` (mlp2x_gelu)."""
    names = {"linear_1.weight": "weight", "linear_1.bias": "bias"} if kind == "linear" else {
        "linear_1.weight": "0.weight", "linear_1.bias": "0.bias", "linear_2.weight": "2.weight",
        "linear_2.bias": "2.bias"}
    found = {k[k.index("mm_projector.") + len("mm_projector."):]: v for k, v in state.items() if "mm_projector." in k}
    missing = sorted(set(names.values()) - set(found))
    extra = sorted(set(found) - set(names.values()))
    if missing or extra:
        raise ImportRefused(f"mm_projector_type={kind!r} in {config_path} expects mm_projector weights "
                            f"{sorted(names.values())}, found {sorted(found)}")
    weights = {ours: found[theirs] for ours, theirs in names.items()}
    llm_dim, dim = weights["linear_1.weight"].shape
    if dim != vision_dim:
        raise ImportRefused(f"{config_path}: mm_projector reads {dim}-wide features but the tower gives {vision_dim}")
    projector = Projector(kind, vision_dim, llm_dim)
    projector.load_state_dict(weights)
    return projector


# --------------------------------------------------------------------------------------------------
# llava-hf parts


def _llava_hf_projector(module, act: str, config_path: Path) -> Projector:
    """llava-hf's `linear_1 -> act -> linear_2` as vistune's projector: GELU gives mlp2x_gelu; an identity
    activation with an identity second layer (what vistune's export writes for `linear`) gives linear."""
    w1, w2 = module.linear_1.weight, module.linear_2.weight  # (Dl, Dv), (Dl, Dl)
    b1 = module.linear_1.bias if module.linear_1.bias is not None else torch.zeros(w1.shape[0], dtype=w1.dtype)
    b2 = module.linear_2.bias if module.linear_2.bias is not None else torch.zeros(w2.shape[0], dtype=w2.dtype)
    if act == "linear":
        if not (torch.equal(w2, torch.eye(w2.shape[0], dtype=w2.dtype)) and not torch.count_nonzero(b2)):
            raise ImportRefused(f"{config_path}: projector_hidden_act='linear' with a second layer that is not the "
                                "identity: two stacked matrices have no exact vistune projector")
        projector = Projector("linear", w1.shape[1], w1.shape[0])
        projector.load_state_dict({"linear_1.weight": w1, "linear_1.bias": b1})
    else:
        projector = Projector("mlp2x_gelu", w1.shape[1], w1.shape[0])
        projector.load_state_dict({"linear_1.weight": w1, "linear_1.bias": b1, "linear_2.weight": w2,
                                   "linear_2.bias": b2})
    return projector.to(w1.dtype)


def _causal_lm(text_config, decoder, lm_head, tied: bool):
    """The text model and head of a llava-hf model as a standalone causal LM of the text config's family."""
    from transformers import AutoModelForCausalLM

    config = text_config.__class__.from_dict(text_config.to_dict())
    config.tie_word_embeddings = tied
    prefix = AutoModelForCausalLM._model_mapping[type(config)].base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in decoder.state_dict().items()}
    if not tied:
        state["lm_head.weight"] = lm_head.weight
    return _causal_lm_from_state(config, state, "the language model's weights")


def _causal_lm_from_state(config, state: dict[str, torch.Tensor], what: str):
    """A causal LM of `config`'s family holding exactly `state` (in its dtype); refused when names differ."""
    from transformers import AutoModelForCausalLM

    model_cls = AutoModelForCausalLM._model_mapping[type(config)]
    model, info = model_cls.from_pretrained(None, config=config, state_dict=state, dtype=_weights_dtype(state),
                                            output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ImportRefused(f"{what} do not rebuild as {model_cls.__name__} (missing "
                            f"{sorted(info['missing_keys'])[:5]}, unexpected {sorted(info['unexpected_keys'])[:5]})")
    return model.eval()


def _image_processor_dict(image_processor) -> dict:
    d = image_processor.to_dict()
    d["image_processor_type"] = type(image_processor).__name__
    return d


def image_processor_config(d: dict, path: Path) -> ImageProcessorConfig:
    """A transformers CLIP/Llava image processor's settings (`preprocessor_config.json`) as vistune's image
    processing; ImportRefused names the first setting vistune would compute differently."""
    def refuse(key: str, why: str):
        raise ImportRefused(f"{path}: {key}={d.get(key)!r} {why}")

    pad = bool(d.get("do_pad", False))
    if d.get("do_resize", True) is not True:
        refuse("do_resize", "(images are not resized); vistune always resizes")
    if int(d.get("resample", 3)) != 3:
        refuse("resample", "is not bicubic (3), the only resampling vistune uses")
    if d.get("do_rescale", True) is not True or abs(float(d.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        refuse("rescale_factor", "(or do_rescale) differs from 1/255")
    if d.get("do_normalize", True) is not True:
        refuse("do_normalize", "(no normalisation); vistune always normalises with image_mean / image_std")
    size = d.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = d.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" in size:
        short = int(size["shortest_edge"])
    elif size.get("height") is not None and size.get("height") == size.get("width") and pad:
        short = int(size["height"])  # a padded square image: a fixed square resize is the shortest-edge resize
    else:
        refuse("size", "resizes to a fixed height and width (changing the aspect ratio); vistune resizes the "
                       "shortest edge and centre-crops")
    if d.get("do_center_crop", True):
        if crop.get("height") != crop.get("width") or crop.get("height") is None:
            refuse("crop_size", "is not a square crop")
        side = int(crop["height"])
    elif pad:
        side = short  # square after padding and resizing
    else:
        refuse("do_center_crop", "is false without padding, which leaves non-square images; vistune centre-crops")
    mean, std = d.get("image_mean"), d.get("image_std")
    if not (isinstance(mean, (list, tuple)) and len(mean) == 3 and isinstance(std, (list, tuple)) and len(std) == 3):
        refuse("image_mean", "(with image_std) must be three numbers each")
    return ImageProcessorConfig(size=short, crop_size=side, mean=tuple(float(x) for x in mean),
                                std=tuple(float(x) for x in std), pad_to_square=pad)


def _check_image_size(config: ImageProcessorConfig, tower, path: Path) -> None:
    if config.crop_size != tower.image_size:
        raise ImportRefused(f"{path}: crop_size={config.crop_size} but the tower runs at {tower.image_size} px")


# --------------------------------------------------------------------------------------------------
# files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ImportRefused(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise ImportRefused(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ImportRefused(f"{path}: expected a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or a `.bin` read with `weights_only=True` (tensors only)."""
    if not path.is_file():
        raise ImportRefused(f"{path} is missing")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:  # not tensors, or corrupt
        raise ImportRefused(f"{path}: cannot be read as a tensors-only checkpoint ({str(e).splitlines()[0]})") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImportRefused(f"{path}: expected a mapping of names to tensors")
    return state


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers-style directory: safetensors (one file or an index) where present, else
    `pytorch_model.bin` (one file or an index)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / index).is_file():
            files = sorted(set(_read_json(directory / index).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(_read_tensors(directory / name))
            return state
        if (directory / single).is_file():
            return _read_tensors(directory / single)
    raise ImportRefused(f"{directory}: no model.safetensors or pytorch_model.bin (nor their index files)")


def _weights_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)


def _check_out(out: str | os.PathLike, src: Path) -> None:
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise ImportRefused("--out must differ from the source")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportRefused(f"{out} already exists and is not an empty directory; choose another --out")


def _save(model: VisionLanguageModel, out: str | os.PathLike, source: dict) -> Path:
    """Check that the template renders with this tokenizer exactly as whole-prompt tokenization, then save the
    checkpoint atomically at `out` (an empty directory there is replaced)."""
    try:
        check_whole_prompt_tokenization(model.renderer)
    except RenderError as e:
        raise ImportRefused(f"template {model.config.template!r} with this tokenizer: {e}") from None
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    return save_checkpoint(model.eval(), out, extra={"imported_from": source})


__all__ = ["STRING_CONTENT_PRELUDE", "ImportRefused", "image_processor_config", "import_llava", "import_llava_hf",
           "original_settings", "read_weights"]
