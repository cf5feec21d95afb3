"""A SentencePiece `tokenizer.model` rebuilt from a Llama-style `tokenizer.json`, for llama.cpp's converter.

llama.cpp tokenizes a Llama vocabulary (`tokenizer.ggml.model = llama`) the SentencePiece way: adjacent symbols
merge by the score of the piece they form, highest first. `tokenizer.json` has no scores, only merge ranks, and
llama.cpp's converter then writes the same score for every piece, so llama.cpp merges differently from the
tokenizer the model was trained with ("polite" -> "polit" + "e" instead of "pol" + "ite"). A SentencePiece BPE
vocabulary's merges are ordered by the score of the piece they form, so each piece's score is minus the rank of
the first merge that forms it: the order the checkpoint's tokenizer merges in. `sentencepiece_model` writes that
model; `mismatches` checks it against the tokenizer itself on the texts it is given.
"""

from __future__ import annotations

import json
import re

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPACE = "\u2581"  # SentencePiece's visible space


def tokenizer_json(tokenizer) -> dict | None:
    """The fast tokenizer's serialised form (None for a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def is_sentencepiece_bpe(spec: dict | None) -> bool:
    """A `tokenizer.json` that llama.cpp converts as a SentencePiece (`llama`) vocabulary: BPE with byte
    fallback and a decoder sequence (Llama, Mistral, Vicuna), not a byte-level BPE (GPT-2, Llama 3, Qwen)."""
    if not spec:
        return False
    model = spec.get("model", {})
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback"))
            and (spec.get("decoder") or {}).get("type") == "Sequence")


def dummy_prefix(tokenizer) -> bool:
    """Whether the tokenizer writes a space before the start of a text ("a" -> "▁a")."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids[:1]) == [SPACE + "a"]


def prefix_after_special(tokenizer) -> bool:
    """Whether text after a special token starts with a space as at the start of a text (`legacy=True` Llama
    tokenizers) or not (`legacy=False`). llama.cpp's `add_space_prefix` does the former for every text piece."""
    special = tokenizer.eos_token or tokenizer.bos_token
    ids = tokenizer(f"a{special}b", add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)[-1] == SPACE + "b"


# SentencePiece's piece types, numbered as GGUF vocabularies number them too
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_model(tokenizer) -> bytes:
    """A serialised SentencePiece BPE `ModelProto` with the tokenizer's pieces in id order, scores from its merge
    ranks and byte / control / unknown types. Raises ValueError for a tokenizer it cannot describe."""
    spec = tokenizer_json(tokenizer)
    if not is_sentencepiece_bpe(spec):
        raise ValueError("not a SentencePiece-style BPE tokenizer (BPE with byte fallback)")
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = spec["model"].get("merges", [])
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the vocabulary's ids are not 0..n-1")
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        first_rank.setdefault(left + right, rank)
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    unk = spec["model"].get("unk_token") or tokenizer.unk_token

    pieces = []
    for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece == unk:
            pieces.append((piece, 0.0, UNKNOWN))
        elif piece in special:
            pieces.append((piece, 0.0, CONTROL))
        elif BYTE_PIECE.fullmatch(piece):
            pieces.append((piece, 0.0, BYTE))
        else:  # formed by a merge: minus its rank; a single symbol: below every merge
            pieces.append((piece, float(-first_rank.get(piece, len(merges) + vocab[piece])), NORMAL))
    ids = [vocab.get(unk, 0) if unk is not None else 0] + [
        -1 if i is None else i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id)]
    return bpe_model(pieces, *ids, add_dummy_prefix=dummy_prefix(tokenizer))


def bpe_model(pieces: list[tuple[str, float, int]], unk_id: int, bos_id: int, eos_id: int,
              add_dummy_prefix: bool) -> bytes:
    """A serialised SentencePiece BPE `ModelProto` of `pieces` (text, score, type), in id order: byte fallback,
    whitespace kept as it is, no normalisation (Llama's settings)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for piece, score, kind in pieces:
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = len(pieces)
    trainer.byte_fallback = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = unk_id, bos_id, eos_id, -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = add_dummy_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def mismatches(tokenizer, model: bytes, texts: list[str]) -> list[str]:
    """The texts (special tokens aside) that the SentencePiece `model` splits differently from `tokenizer`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    return [text for text in texts
            if sp.encode(text) != list(tokenizer(text, add_special_tokens=False)["input_ids"])]
