"""Export a checkpoint for llama.cpp: `model.gguf` (language model, tokenizer, chat template), `mmproj.gguf`
(vision tower + projector in libmtmd's `clip` format) and a README saying how to run them.

- `mmproj.gguf` is written with the `gguf` package: architecture `clip`, the llava `mlp` projector (libmtmd runs
  `mm.0 -> GELU -> mm.2`), the tower's transformer blocks up to the feature layer (`clip.vision.feature_layer`
  names the hidden state vistune takes; no post-layernorm, since hidden states are taken before it), the
  checkpoint's image mean and std, `clip.use_gelu` true for SigLIP's tanh GELU and false for CLIP's quick GELU.
  The `linear` projector becomes `mm.0 = s[W; -W]`, `mm.2 = [I, -I]/s`: gelu(x) - gelu(-x) = x for every GELU
  of the form x·Φ(x), and with s a power of two that puts every pre-activation beyond ±10 (where libmtmd's GELU
  returns x or 0 exactly instead of reading its fp16 table) the projection is exact in f32.
- `model.gguf` comes from llama.cpp's own `convert_hf_to_gguf.py` (found in llama.cpp's source tree; `make
  install` keeps one in the virtual environment) run on the LLM, its tokenizer and a chat template that renders
  the checkpoint's conversation template around libmtmd's media marker.

What libmtmd cannot run is refused from `config.json` before anything is written, with every reason at once.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vistune.config import ModelConfig, from_dict
from vistune.conversation import PROBES, TEMPLATES
from vistune.model.checkpoint import load_checkpoint, read_config
from vistune.model.export import ExportError, _chat_template, _llm_without_adapters, _lit
from vistune.model.llm import save_tokenizer
from vistune.model.spm_vocab import (
    dummy_prefix,
    is_sentencepiece_bpe,
    mismatches,
    prefix_after_special,
    sentencepiece_model,
    tokenizer_json,
)
from vistune.utils.io import atomic_dir

OUTTYPES = ("f32", "f16", "q8_0")
MEDIA_MARKER = "<__media__>"  # libmtmd's default marker: where an image goes in the prompt text
# transformers towers libmtmd's llava graph runs, and the `clip.use_gelu` each activation needs
GGUF_TOWERS = ("clip_vision_model", "siglip_vision_model")
TOWER_ACTIVATIONS = {"quick_gelu": False, "gelu_pytorch_tanh": True, "gelu_new": True}
TEXT_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
LLAMA_CPP_ENV = "VISTUNE_LLAMA_CPP"
GGUF_RECIPES = "configs/llava15_*.yaml or configs/paper_*.yaml"


# --------------------------------------------------------------------------------------------------
# entry point and refusals


def export_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, outtype: str = "f32",
                llama_cpp: str | os.PathLike | None = None) -> Path:
    """Write `out/model.gguf`, `out/mmproj.gguf` and `out/README.md`; nothing appears at `out` unless it all
    succeeds. `llama_cpp`: a llama.cpp source tree holding `convert_hf_to_gguf.py` (default: $VISTUNE_LLAMA_CPP,
    else the copy `make install` keeps in the virtual environment)."""
    checkpoint, out = Path(checkpoint), Path(out)
    config = read_config(checkpoint)
    converter = find_converter(llama_cpp)
    blockers = gguf_blockers(config, _llm_config(checkpoint))
    if outtype not in OUTTYPES:
        blockers.append(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    if isinstance(converter, str):
        blockers.append(converter)
    _refuse(blockers)
    if out.resolve() == checkpoint.resolve():
        raise ExportError("--out must differ from --model (the export would overwrite the checkpoint)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty directory; choose another --out")

    model = load_checkpoint(checkpoint, dtype=torch.float32)
    with atomic_dir(out) as tmp:  # replaces an empty `out` (checked above)
        write_mmproj(model, tmp / "mmproj.gguf", outtype)
        write_text_model(model, tmp / "model.gguf", outtype, converter)
        (tmp / "README.md").write_text(readme(model, outtype, out.name))
    return out


def _refuse(blockers: list[str]) -> None:
    if blockers:
        listed = "; ".join(f"({i}) {b}" for i, b in enumerate(blockers, 1))
        raise ExportError(f"this checkpoint cannot be exported to gguf ({len(blockers)} blocker"
                          f"{'s' if len(blockers) > 1 else ''}): {listed}. Nothing was written; the checkpoint "
                          "works as it is with vistune chat / infer / serve.")


def _llm_config(checkpoint: Path) -> dict:
    path = checkpoint / "llm" / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def gguf_blockers(config: dict, llm_config: dict) -> list[str]:
    """Every reason, from `config.json` (and the LLM's), that llama.cpp cannot run this checkpoint as vistune does,
    each with its fix (empty: exportable)."""
    model_config = from_dict(ModelConfig, config["model"], prefix="model.")
    tower = config["vision_tower"]
    blockers = []
    if tower.get("kind") != "hf":
        blockers.append(
            f"its vision tower {tower.get('name', tower.get('kind'))!r} is a CNN, and llama.cpp's multimodal runtime "
            f"(libmtmd) runs vision transformers only: train with a CLIP or SigLIP tower ({GGUF_RECIPES}, or "
            "model.vision_tower=<a CLIP/SigLIP hub id or directory>)")
    else:
        vision = tower.get("config", {})
        if vision.get("model_type") not in GGUF_TOWERS:
            blockers.append(f"vision tower type {vision.get('model_type')!r} has no libmtmd form here: train with "
                            f"one of {', '.join(GGUF_TOWERS)}")
        elif vision.get("hidden_act") not in TOWER_ACTIVATIONS:
            blockers.append(f"the tower's activation {vision.get('hidden_act')!r} is not one libmtmd computes "
                            f"(it has {', '.join(TOWER_ACTIVATIONS)}): use a tower with one of those")
    if model_config.vision_select != "patch":
        blockers.append(f"model.vision_select={model_config.vision_select} keeps the CLS token, and libmtmd's llava "
                        "projector passes patch tokens only: train with model.vision_select=patch")
    # model.feature_norm=channel is an affine map of the inputs: it folds into mm.0 (Projector.folded_linear_1)
    if model_config.feature_norm == "token":
        blockers.append("model.feature_norm=token (each image token standardised by its own mean and spread) has "
                        "no GGUF form: train with model.feature_norm=none or channel")
    if model_config.projector_norm == "rms":
        blockers.append("model.projector_norm=rms (image tokens rescaled after the projector) has no GGUF form: "
                        "train with model.projector_norm=none")
    if model_config.projector not in ("linear", "mlp2x_gelu"):
        blockers.append(f"projector {model_config.projector!r} has no GGUF form (libmtmd's llava projector is "
                        "linear, GELU, linear): train with model.projector=mlp2x_gelu or linear")
    if getattr(model_config, "image_aspect_ratio", "square") == "anyres":
        blockers.append("model.image_aspect_ratio=anyres (LLaVA-NeXT tiles) is not exported to GGUF here: train with "
                        "model.image_aspect_ratio=square or pad")
    if model_config.template not in TEMPLATES:
        blockers.append(f"template {model_config.template!r} has no chat-template export: train with one of "
                        f"{', '.join(TEMPLATES)}")
    arch = (llm_config.get("architectures") or [None])[0]
    if llm_config and arch not in TEXT_ARCHITECTURES:
        blockers.append(f"the language model {arch!r} is not one this export converts (it converts "
                        f"{', '.join(TEXT_ARCHITECTURES)}): train with a Llama, Mistral, Qwen2/3 or SmolLM LLM")
    return blockers


CLS_ORDER_ISSUE = (
    "llama.cpp's llava graph (up to at least the llama.cpp inside llama-cpp-python 0.3.36) puts a CLIP tower's CLS "
    "token after the patches while its inputs assume it first: each patch gets its neighbour's position, the first "
    "patch is dropped and the CLS output becomes an image token (ggml-org/llama.cpp#25814), so image features differ "
    "from vistune's until llama.cpp fixes it; SigLIP towers (no CLS) are not affected")


def gguf_warnings(config: dict) -> list[str]:
    """What an export of this checkpoint runs differently in today's llama.cpp (not blockers: the files are right)."""
    vision = config.get("vision_tower", {}).get("config", {})
    return [CLS_ORDER_ISSUE] if vision.get("model_type") == "clip_vision_model" else []


def find_converter(llama_cpp: str | os.PathLike | None = None) -> Path | str:
    """llama.cpp's `convert_hf_to_gguf.py`, or a sentence saying where it was looked for and how to get it."""
    candidates = [Path(llama_cpp)] if llama_cpp is not None else (
        [Path(os.environ[LLAMA_CPP_ENV])] if os.environ.get(LLAMA_CPP_ENV) else [])
    candidates.append(Path(sys.prefix) / "llama.cpp" / "src")
    for root in candidates:
        if (root / "convert_hf_to_gguf.py").is_file():
            return root / "convert_hf_to_gguf.py"
    return (f"llama.cpp's convert_hf_to_gguf.py was not found (looked in {', '.join(map(str, candidates))}): run "
            "`make install`, or unpack llama-cpp-python's source package (pip download --no-binary :all: --no-deps "
            f"llama-cpp-python) and pass --llama-cpp <it>/vendor/llama.cpp or set {LLAMA_CPP_ENV}")


# --------------------------------------------------------------------------------------------------
# mmproj.gguf


def feature_layer(tower) -> int:
    """The tower's feature layer as a hidden-state index 0..L (0: the embeddings after any pre-layernorm)."""
    return int(tower.layer) % (int(tower.model.config.num_hidden_layers) + 1)


def mmproj_tensors(model) -> dict[str, torch.Tensor]:
    """The tower (blocks up to the feature layer) and projector under libmtmd's tensor names, in fp32."""
    tower = model.vision_tower
    vision = getattr(tower.model, "vision_model", tower.model)
    emb = vision.embeddings
    t: dict[str, torch.Tensor] = {"v.patch_embd.weight": emb.patch_embedding.weight,  # (D, 3, p, p)
                                  "v.position_embd.weight": emb.position_embedding.weight}  # (positions, D)
    if emb.patch_embedding.bias is not None:
        t["v.patch_embd.bias"] = emb.patch_embedding.bias
    if getattr(emb, "class_embedding", None) is not None:
        t["v.class_embd"] = emb.class_embedding  # (D,)
    if getattr(vision, "pre_layrnorm", None) is not None:
        t["v.pre_ln.weight"], t["v.pre_ln.bias"] = vision.pre_layrnorm.weight, vision.pre_layrnorm.bias
    hidden, ff = int(tower.model.config.hidden_size), int(tower.model.config.intermediate_size)
    # libmtmd swaps ffn_up / ffn_down when ffn_down's input width equals the embedding width (files from an old
    # converter named them the other way round); with square FFN matrices it always swaps, so name them swapped
    up, down = ("ffn_down", "ffn_up") if ff == hidden else ("ffn_up", "ffn_down")
    for i, layer in enumerate(vision.encoder.layers[: feature_layer(tower)]):
        attn, mlp = layer.self_attn, layer.mlp
        for name, module in (("attn_q", attn.q_proj), ("attn_k", attn.k_proj), ("attn_v", attn.v_proj),
                             ("attn_out", attn.out_proj), ("ln1", layer.layer_norm1), ("ln2", layer.layer_norm2),
                             (up, mlp.fc1), (down, mlp.fc2)):
            t[f"v.blk.{i}.{name}.weight"], t[f"v.blk.{i}.{name}.bias"] = module.weight, module.bias
    t.update(projector_tensors(model.projector))
    return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


def projector_tensors(projector) -> dict[str, torch.Tensor]:
    """`mm.0` / `mm.2` for libmtmd's `mm.0 -> GELU -> mm.2`; weights (out, in)."""
    w1, b1 = projector.folded_linear_1()  # (Dl, Dv), (Dl,)
    w1, b1 = w1.detach().float(), (b1.detach().float() if b1 is not None else torch.zeros(w1.shape[0]))
    if projector.kind == "mlp2x_gelu":
        w2, b2 = projector.linear_2.weight.detach().float(), projector.linear_2.bias
        b2 = b2.detach().float() if b2 is not None else torch.zeros(w2.shape[0])
        return {"mm.0.weight": w1, "mm.0.bias": b1, "mm.2.weight": w2, "mm.2.bias": b2}
    # linear: gelu(s·h) - gelu(-s·h) = s·h, exactly once |s·h| >= 10 (libmtmd's GELU returns x or 0 there);
    # s = 2^20 leaves only |h| < 1e-5 to the fp16 table, and scaling by a power of two rounds nothing
    s = 2.0 ** 20
    eye = torch.eye(w1.shape[0])
    return {"mm.0.weight": torch.cat([w1, -w1]) * s, "mm.0.bias": torch.cat([b1, -b1]) * s,  # (2Dl, Dv)
            "mm.2.weight": torch.cat([eye, -eye], dim=1) / s, "mm.2.bias": torch.zeros(w1.shape[0])}  # (Dl, 2Dl)


def write_mmproj(model, path: Path, outtype: str = "f32") -> None:
    """The tower and projector as a libmtmd `clip` GGUF. f16 / q8_0 store the tower's matrices in f16 (libmtmd's
    own files do; quantising the tower costs accuracy for little space); the projector stays f32."""
    import gguf

    tower = model.vision_tower
    cfg = tower.model.config
    c = model.image_processor.config
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(f"vistune {model.config.vision_tower} + {model.config.projector}")
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    w.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
    w.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    w.add_uint32(gguf.Keys.ClipVision.IMAGE_SIZE, int(cfg.image_size))
    w.add_uint32(gguf.Keys.ClipVision.PATCH_SIZE, int(cfg.patch_size))
    w.add_uint32(gguf.Keys.ClipVision.EMBEDDING_LENGTH, int(cfg.hidden_size))
    w.add_uint32(gguf.Keys.ClipVision.FEED_FORWARD_LENGTH, int(cfg.intermediate_size))
    w.add_uint32(gguf.Keys.ClipVision.PROJECTION_DIM, int(model.llm.get_input_embeddings().weight.shape[1]))
    w.add_uint32(gguf.Keys.ClipVision.BLOCK_COUNT, feature_layer(tower))
    w.add_uint32(gguf.Keys.ClipVision.Attention.HEAD_COUNT, int(cfg.num_attention_heads))
    w.add_float32(gguf.Keys.ClipVision.Attention.LAYERNORM_EPS, float(cfg.layer_norm_eps))
    # explicit, so libmtmd runs exactly these blocks (without it, its llava graph runs one block fewer than stored)
    w.add_array("clip.vision.feature_layer", [feature_layer(tower)])  # not in every gguf release
    w.add_array(gguf.Keys.ClipVision.IMAGE_MEAN, [float(m) for m in c.mean])
    w.add_array(gguf.Keys.ClipVision.IMAGE_STD, [float(s) for s in c.std])
    w.add_bool(gguf.Keys.ClipVision.USE_GELU, TOWER_ACTIVATIONS[cfg.hidden_act])
    for name, tensor in mmproj_tensors(model).items():
        half = outtype != "f32" and name.startswith("v.") and tensor.ndim >= 2 and name != "v.position_embd.weight"
        w.add_tensor(name, tensor.numpy().astype(np.float16 if half else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------------
# model.gguf


def gguf_chat_template(model, leading_space: bool = False) -> str:
    """A Jinja chat template rendering the checkpoint's conversation template with libmtmd's media marker where
    each image goes: contents as strings (`<__media__>` or `<image>` in the text) or as lists of image / text
    items (joined by newlines), each marker followed by exactly one newline, as vistune lays out an image before
    its question. `leading_space`: the prompt starts with a space (the tokenizer's prefix, written out for a
    GGUF whose `add_space_prefix` is off)."""
    m = _lit(MEDIA_MARKER)
    prelude = (
        "{%- set ns = namespace(msgs=[]) -%}"
        "{%- for msg in messages -%}"
        "{%- if msg['content'] is string -%}{%- set text = msg['content'] -%}"
        "{%- else -%}{%- set parts = namespace(items=[]) -%}"
        "{%- for c in msg['content'] -%}"
        "{%- if c['type'] in ['image', 'image_url'] -%}{%- set parts.items = parts.items + [" + m + "] -%}"
        "{%- elif c['type'] == 'text' -%}{%- set parts.items = parts.items + [c['text']] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = parts.items | join('\\n') -%}{%- endif -%}"
        "{%- if msg['role'] == 'user' -%}"
        "{%- set text = text | replace('<image>', " + m + ") | replace(" + _lit(MEDIA_MARKER + "\n") + ", " + m
        + ") | replace(" + m + ", " + _lit(MEDIA_MARKER + "\n") + ") -%}{%- endif -%}"
        "{%- set ns.msgs = ns.msgs + [{'role': msg['role'], 'content': text}] -%}"
        "{%- endfor -%}"
        "{%- set messages = ns.msgs %}"
    )
    system = model.config.system_prompt
    if system is not None:
        prelude += ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                    "{%- set messages = [{'role': 'system', 'content': " + _lit(system) + "}] + messages -%}"
                    "{%- endif -%}")
    if leading_space:
        prelude += "{{- ' ' -}}"
    template = _chat_template(model.config.template, model.tokenizer, prelude)
    # `plain` writes the image itself (the instruction is dropped): the marker instead of `<image>`
    return template.replace("'<image>'", m) if model.config.template == "plain" else template


def write_text_model(model, path: Path, outtype: str, converter: Path) -> None:
    """The LLM, its tokenizer and `gguf_chat_template` through llama.cpp's `convert_hf_to_gguf.py`. A
    SentencePiece-style vocabulary goes with a `tokenizer.model` carrying its merge order (`sentencepiece_vocab`)."""
    tokenizer = copy.deepcopy(model.tokenizer)
    spm = sentencepiece_vocab(model) if is_sentencepiece_bpe(tokenizer_json(tokenizer)) else None
    tokenizer.chat_template = gguf_chat_template(model, leading_space=spm is not None and spm.leading_space)
    with tempfile.TemporaryDirectory(prefix="vistune-gguf-", dir=path.parent) as tmp:
        hf = Path(tmp) / "llm"
        _llm_without_adapters(model.llm).save_pretrained(hf)
        save_tokenizer(tokenizer, hf)
        # what the converter writes as tokenizer.ggml.add_bos_token / add_space_prefix (it guesses when unset)
        intended = {"add_bos_token": model.renderer.bos_id is not None}
        if spm is not None:
            (hf / "tokenizer.model").write_bytes(spm.model)
            intended["add_space_prefix"] = spm.add_space_prefix
        config_path = hf / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config["add_bos_token"] = intended["add_bos_token"]
        if "add_space_prefix" in intended:
            config["add_prefix_space"] = intended["add_space_prefix"]
        config_path.write_text(json.dumps(config, indent=2))
        cmd = [sys.executable, str(converter), str(hf), "--outfile", str(path), "--outtype", outtype]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not path.is_file():
            tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
            raise ExportError(f"llama.cpp's convert_hf_to_gguf.py failed on the language model:\n{tail}")
    _check_written(path, intended)


def _check_written(path: Path, intended: dict[str, bool]) -> None:
    """The converted file's tokenizer flags are the ones asked for (the converter can override them)."""
    import gguf

    fields = gguf.GGUFReader(path).fields  # only the flags are read (not the vocabulary's arrays)
    written = {key: fields[f"tokenizer.ggml.{key}"].contents() if f"tokenizer.ggml.{key}" in fields else "unset"
               for key in intended}
    wrong = [f"{key} is {written[key]} (vistune's prompts need {value})"
             for key, value in intended.items() if written[key] is not value]
    if wrong:
        raise ExportError("llama.cpp's converter wrote a vocabulary that splits prompts differently from vistune: "
                          + "; ".join(wrong))


@dataclass(frozen=True)
class SentencePieceVocab:
    model: bytes  # a serialised SentencePiece ModelProto (`spm_vocab.sentencepiece_model`)
    add_space_prefix: bool  # llama.cpp writes a space before every text piece of a prompt (images split it)
    leading_space: bool  # the chat template writes the prompt's first space itself


def sentencepiece_vocab(model) -> SentencePieceVocab:
    """How a SentencePiece-style vocabulary goes to llama.cpp so that it splits prompts as vistune does: a
    `tokenizer.model` in the checkpoint tokenizer's merge order, checked against it on a rendered prompt and the
    tokenizer probes; `add_space_prefix` as the tokenizer treats text after a special token (llama.cpp tokenizes
    the text between images separately and prefixes each piece or none), and the prompt's first space written by
    the template where the prefix is off but the tokenizer has one at the start."""
    tokenizer = model.tokenizer
    try:
        spm = sentencepiece_model(tokenizer)
    except ImportError as err:
        raise ExportError("exporting a SentencePiece-style vocabulary needs the sentencepiece and protobuf "
                          "packages (pip install 'vistune[gguf]')") from err
    except ValueError as err:
        raise ExportError(f"the tokenizer's vocabulary has no llama.cpp form: {err}") from err
    template = gguf_chat_template(model)
    sample = _render(template, tokenizer, [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}])
    prompts = [sample] + [_render(template, tokenizer, [{"role": m.role, "content": m.content} for m in probe])
                          for probe in PROBES]
    specials = [t for t in tokenizer.all_special_tokens if t] + [MEDIA_MARKER]
    # each text piece as the tokenizer continues it mid-prompt (a piece's first space is the prefix rules' concern)
    texts = [t.lstrip(" ") for p in prompts for t in re.split("|".join(map(re.escape, specials)), p) if t.strip()]
    if bad := mismatches(tokenizer, spm, texts):
        raise ExportError(f"llama.cpp would split {bad[0]!r} differently from the checkpoint's tokenizer (its "
                          "tokenizer.json merges are not in SentencePiece order); nothing was written")
    prefix = prefix_after_special(tokenizer)
    starts_with_text = not any(sample.startswith(s) for s in specials)
    return SentencePieceVocab(spm, prefix, not prefix and dummy_prefix(tokenizer) and starts_with_text)


def _render(template: str, tokenizer, messages: list[dict]) -> str:
    """`template` filled as llama-cpp-python's chat handlers fill it, with the generation prompt."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")


# --------------------------------------------------------------------------------------------------
# README.md


def readme(model, outtype: str, name: str) -> str:
    """How to run the export with llama.cpp and ollama, and what differs from vistune."""
    c = model.image_processor.config
    size = model.vision_tower.image_size
    matches = c.pad_to_square and c.size == c.crop_size
    settings = ("This checkpoint pads to a square (`pad_to_square: true`) and resizes without cropping, as "
                "llama.cpp does, so any image gets the same geometry up to the resampling filter's rounding."
                if matches else
                "This checkpoint crops (`pad_to_square: false`): for a non-square image vistune keeps the centre "
                "square and llama.cpp keeps the whole image, padded; square images agree. Checkpoints trained with "
                "`model.pad_to_square: true` (the LLaVA-1.5 recipes) match llama.cpp's geometry.")
    cls = ""
    if getattr(model.vision_tower.model.config, "model_type", "") == "clip_vision_model":
        cls = f"- **CLIP towers.** {CLS_ORDER_ISSUE[0].upper()}{CLS_ORDER_ISSUE[1:]}.\n"
    stop = ""
    if model.renderer.stop_strings:
        stop = ("\nThe conversation template ends answers with the text "
                + " / ".join(f"`{s!r}`" for s in model.renderer.stop_strings)
                + ", which is not a token: pass it as a stop string (`-r` in llama-cli, `stop` in the server's "
                  "API, `PARAMETER stop` in ollama).\n")
    return f"""# {name}: a vistune checkpoint for llama.cpp

| file | content |
|---|---|
| `model.gguf` | the language model ({outtype}), its tokenizer and a chat template that renders vistune's `{model.config.template}` conversation template |
| `mmproj.gguf` | the vision tower ({model.vision_tower.model.config.model_type}, {size} px, hidden state {feature_layer(model.vision_tower)}) and the `{model.config.projector}` projector, for llama.cpp's multimodal runtime (libmtmd) |

## Run it

```
llama-mtmd-cli -m model.gguf --mmproj mmproj.gguf --image photo.jpg -p "What is in the picture?" --temp 0
llama-server -m model.gguf --mmproj mmproj.gguf --port 8080
```

`llama-server` speaks the OpenAI chat API: send the image as an `image_url` content part before the question, as
vistune places it. With ollama, a `Modelfile` beside the two files:

```
FROM ./model.gguf
ADAPTER ./mmproj.gguf
PARAMETER temperature 0
```

then `ollama create {name} -f Modelfile` and `ollama run {name} "What is in the picture? ./photo.jpg"` (ollama's
own vision models use its own format; whether it runs a separate mmproj depends on its version).
{stop}
## What differs from vistune

- **Pixels.** llama.cpp pads a non-square image to a square (grey 122/116/104) and resizes it to {size}x{size}
  with its own bicubic filter; CLIP's processor, which vistune follows, resizes the short side and crops the
  centre. {settings} For exactly the same pixels, give llama.cpp square images of {size}x{size}.
- **GELU.** llama.cpp computes GELU with the tanh formula read from an fp16 table; vistune's `mlp2x_gelu`
  projector uses the exact (erf) GELU, so image features differ in about the fourth significant digit. The
  `linear` projector is exported in a form that avoids the table and is exact in f32.
- **Precision.** `f32` keeps vistune's weights; `f16` and `q8_0` round the language model (and, at f16, the
  tower's matrices), so answers can drift from vistune's after some tokens.
{cls}"""
