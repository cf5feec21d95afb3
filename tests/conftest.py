import os

import pytest

# Offline, quiet, and reproducible on 2 cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from vistune.model.llm import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def examples_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples" / "data"


LLAMA_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What colour is the star? ASSISTANT: The star is red.",
    "### Human: How many circles are there? ### Assistant: There are 3 circles beside the square.",
    "[INST] <<SYS>> You are a helpful language and vision assistant. <</SYS>> Is anything green? [/INST] No.",
    "Describe the image in detail. Which shape is bigger? Count the shapes in the picture.",
)


@pytest.fixture(scope="session")
def llama_sp_dir(tmp_path_factory):
    """A directory with a SentencePiece `tokenizer.model` trained here with Llama's settings (BPE, byte fallback,
    digits split, a dummy prefix, whitespace kept, ids 0/1/2 = <unk>/<s>/</s>)."""
    import io

    import sentencepiece as spm

    out = tmp_path_factory.mktemp("llama-sp")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(LLAMA_CORPUS * 20), model_writer=model, model_type="bpe", vocab_size=600,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        allow_whitespace_only_pieces=True, character_coverage=1.0, split_by_whitespace=True, minloglevel=2,
        hard_vocab_limit=False)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    return out


def make_llama_tokenizer(sp_dir, kind: str, legacy: bool):
    """`kind` "fast": transformers' LlamaTokenizer (tokenizers backend, converted from the .model file);
    "slow": the SentencePiece backend on the same file."""
    if kind == "fast":
        from transformers import LlamaTokenizer

        return LlamaTokenizer.from_pretrained(sp_dir, legacy=legacy, add_bos_token=True)
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend(vocab_file=str(sp_dir / "tokenizer.model"), legacy=legacy, bos_token="<s>",
                                eos_token="</s>", unk_token="<unk>")
