"""Rendered ids equal the tokenizer's ids for the whole prompt, for Llama-style SentencePiece tokenizers (slow and
fast, legacy true and false) and byte-level BPE alike; labels are exactly the answers' tokens and end markers."""

import pytest
from conftest import LLAMA_CORPUS, make_llama_tokenizer
from test_conversation import supervised_runs

from vistune.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    PROBES,
    Message,
    Renderer,
    TokenizerMismatch,
    check_whole_prompt_tokenization,
    get_template,
)
from vistune.data.inspect import check_records

N = 4
TEMPLATES = ("v0", "vicuna_v1", "llama_2", "chat_template")
# a Llama-2-like chat template for the SentencePiece tokenizers (the end marker is </s>, a special token)
LLAMA_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}"
    "{% endfor %}"
)
CONVERSATION = (
    Message("user", "<image>\nWhat colour is the star?"), Message("assistant", "The star is red."),
    Message("user", "How many circles are there?"), Message("assistant", "There are 3 circles."),
)


def _fast_classes():
    import transformers

    classes = {id(getattr(transformers, n)): n for n in ("LlamaTokenizer", "LlamaTokenizerFast")
               if hasattr(transformers, n)}
    return sorted(classes.values())


KINDS = [("slow", "SentencePieceBackend")] + [("fast", n) for n in _fast_classes()]


@pytest.fixture(scope="module", params=[(k, c, legacy) for k, c in KINDS for legacy in (True, False)],
                ids=lambda p: f"{p[1]}-legacy{p[2]}")
def sp_tokenizer(request, llama_sp_dir):
    kind, cls, legacy = request.param
    tok = make_llama_tokenizer(llama_sp_dir, kind, legacy)
    if kind == "fast":
        import transformers

        assert isinstance(tok, getattr(transformers, cls))
    tok.chat_template = LLAMA_CHAT
    return tok


def _collapse(renderer, ids):
    """Each image span back to the one special token that stands for it in the whole text."""
    out, k = [], 0
    while k < len(ids):
        if ids[k] == IMAGE_TOKEN_ID:
            out.append(renderer.image_stand_in[1])
            k += renderer.num_image_tokens
        else:
            out.append(ids[k])
            k += 1
    return out


def _decode(tok, ids):
    """Text of ids; the SentencePiece backend's own decode does not map byte-fallback pieces, so use its model."""
    if not hasattr(tok, "sp_model"):
        return tok.decode(ids)
    out, run = [], []
    for i in ids + [None]:
        if i is None or i in tok.all_special_ids:
            out.append(tok.sp_model.decode(run))
            run = []
            if i is not None:
                out.append(tok.convert_ids_to_tokens(i))
        else:
            run.append(i)
    return "".join(out)


def _assert_whole_prompt_and_labels(tok, template, end_marker):
    r = Renderer(tok, template, N)
    rendered = r.render(CONVERSATION, num_images=1)
    text = r.text(CONVERSATION).replace("<image>", r.image_stand_in[0])
    assert _collapse(r, rendered.input_ids) == tok(text).input_ids
    runs = supervised_runs(rendered)
    answers = [m.content for m in CONVERSATION if m.role == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert _decode(tok, run).strip() == (answer + end_marker).strip()
        assert tok.convert_ids_to_tokens(run[:1]) != ["▁"]  # no stray dummy-prefix token leads an answer
    assert check_whole_prompt_tokenization(r) > 0
    return r, rendered


@pytest.mark.parametrize("template", TEMPLATES)
def test_sentencepiece_renders_the_whole_prompts_ids(sp_tokenizer, template):
    end = {"v0": "\n###", "vicuna_v1": "</s>", "llama_2": " </s>", "chat_template": "</s>"}[template]
    r, rendered = _assert_whole_prompt_and_labels(sp_tokenizer, template, end)
    # the generation prompt is a prefix of the training rendering and the answer starts right after it
    prompt = r.render(CONVERSATION[:3], num_images=1, add_generation_prompt=True)
    assert rendered.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert rendered.labels[len(prompt.input_ids)] != IGNORE_INDEX


@pytest.mark.parametrize("template", TEMPLATES)
def test_byte_level_bpe_renders_the_whole_prompts_ids(tokenizer, template):
    end = {"v0": "\n###", "vicuna_v1": tokenizer.eos_token, "llama_2": " " + tokenizer.eos_token,
           "chat_template": "<|im_end|>"}[template]
    _assert_whole_prompt_and_labels(tokenizer, template, end)


def test_tokenizing_pieces_separately_would_differ(llama_sp_dir):
    """What the whole-prompt rendering avoids: a piece starting with a space gains a stray dummy-prefix token."""
    tok = make_llama_tokenizer(llama_sp_dir, "slow", True)
    whole = tok.encode("ASSISTANT: The", add_special_tokens=False)
    pieces = tok.encode("ASSISTANT:", add_special_tokens=False) + tok.encode(" The", add_special_tokens=False)
    assert pieces != whole and tok.convert_ids_to_tokens(pieces).count("▁") > tok.convert_ids_to_tokens(whole).count("▁")
    rendered = Renderer(tok, "vicuna_v1", N).render(CONVERSATION[:2], num_images=1)
    first = next(i for i, label in enumerate(rendered.labels) if label != IGNORE_INDEX)
    assert tok.convert_ids_to_tokens(rendered.input_ids[first:first + 1]) == ["▁The"]


@pytest.mark.parametrize("template", ["v0", "vicuna_v1", "llama_2"])
def test_shipped_templates_pass_the_check_on_probes(sp_tokenizer, template):
    r = Renderer(sp_tokenizer, template, N)
    assert check_whole_prompt_tokenization(r) == sum(1 + sum(m.role == "user" for m in p) for p in PROBES)


def _merging_tokenizer():
    """A tokenizer whose vocabulary has ": " as one token, so `ASSISTANT:` and the answer's leading space merge."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab[": "] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(":", " ")], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_a_tokenizer_merging_across_the_answer_boundary_is_refused():
    tok = _merging_tokenizer()
    r = Renderer(tok, "vicuna_v1", N)
    with pytest.raises(TokenizerMismatch, match="merges across a template boundary") as e:
        check_whole_prompt_tokenization(r)
    whole = tok(r.text(list(PROBES[0])).replace("<image>", r.image_stand_in[0])).input_ids
    assert whole[e.value.position] == tok.convert_tokens_to_ids(": ")  # the token spanning "ASSISTANT:| The"
    records = [{"id": "a", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}]
    with pytest.raises(TokenizerMismatch, match="character .* token"):
        check_records(records, None, r, 2048)
    # with a template whose answers follow "[/INST]" (no colon) the same records pass
    assert check_records(records, None, Renderer(tok, get_template("llama_2"), N), 2048) == []


SPM_TEXTS = LLAMA_CORPUS + ("Count the 12 shapes:\n\n- a star\tand  two circles", "ünïcödé ✓ 🙂 text")


def test_a_rebuilt_sentencepiece_model_splits_as_the_tokenizer_and_its_source(llama_sp_dir):
    """The `tokenizer.model` a GGUF export writes for llama.cpp, rebuilt from tokenizer.json's merge order, splits
    as the tokenizer does and as the SentencePiece file the tokenizer came from."""
    import sentencepiece as spm

    from vistune.model.spm_vocab import mismatches, sentencepiece_model

    tok = make_llama_tokenizer(llama_sp_dir, "fast", legacy=False)
    rebuilt = sentencepiece_model(tok)
    assert mismatches(tok, rebuilt, list(SPM_TEXTS)) == []
    source = spm.SentencePieceProcessor(model_file=str(llama_sp_dir / "tokenizer.model"))
    ours = spm.SentencePieceProcessor(model_proto=rebuilt)
    assert [ours.encode(t) for t in SPM_TEXTS] == [source.encode(t) for t in SPM_TEXTS]
    assert ours.vocab_size() == source.vocab_size() and ours.IsByte(source.PieceToId("<0x0A>"))
    assert ours.IsControl(1) and ours.IsControl(2) and ours.IsUnknown(0)


def test_merges_that_are_not_in_sentencepiece_order_are_found(llama_sp_dir):
    """A BPE vocabulary that cannot form one of its pieces (its merges removed) splits differently under
    SentencePiece's score order, which forms every piece it has: the export's check says where."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from vistune.model.spm_vocab import mismatches, sentencepiece_model

    tok = make_llama_tokenizer(llama_sp_dir, "fast", legacy=False)
    spec = json.loads(tok.backend_tokenizer.to_str())
    longest = max(tok.tokenize(LLAMA_CORPUS[0]), key=len)  # a piece the text uses
    spec["model"]["merges"] = [m for m in spec["model"]["merges"]
                               if "".join(m if isinstance(m, list) else m.split(" ", 1)) != longest]
    crippled = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>",
                                       bos_token="<s>", eos_token="</s>")
    assert longest not in crippled.tokenize(LLAMA_CORPUS[0])
    assert mismatches(crippled, sentencepiece_model(crippled), list(SPM_TEXTS)) == [LLAMA_CORPUS[0]]


@pytest.mark.parametrize("legacy", [True, False])
def test_a_saved_tokenizer_keeps_how_it_splits_after_special_tokens(llama_sp_dir, tmp_path, legacy):
    """transformers does not save `legacy`; vistune's checkpoints and exports do, so a reloaded tokenizer gives
    the ids the model was trained with around images and end-of-turn tokens."""
    from transformers import AutoTokenizer

    from vistune.model.llm import save_tokenizer

    tok = make_llama_tokenizer(llama_sp_dir, "fast", legacy)
    text = "USER: <s>\nWhat colour is the star?</s>The star is red."
    save_tokenizer(tok, tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == tok(text).input_ids
    pieces = again.convert_ids_to_tokens(again(text).input_ids)
    assert pieces[pieces.index("</s>") + 1].startswith("\u2581") is legacy
