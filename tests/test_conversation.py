"""Rendering: ids and labels built together; supervised tokens are exactly the answers and their end markers."""

import random

import pytest

from vistune.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_ID,
    TEMPLATE_NAMES,
    Message,
    Renderer,
    RenderError,
    get_template,
    messages_from_llava,
    sample_rng,
)

N = 5
MULTI = [
    Message("user", "<image>\nWhat colour is the star?"),
    Message("assistant", "The star is red."),
    Message("user", "How many circles are there?"),
    Message("assistant", "There are 3 circles."),
    Message("user", "Is anything green?"),
    Message("assistant", "No."),
]


def supervised_runs(rendered):
    """Maximal runs of consecutive supervised label ids."""
    runs, cur = [], []
    for label in rendered.labels:
        if label == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(label)
    if cur:
        runs.append(cur)
    return runs


def end_marker(template, tokenizer):
    return {"plain": "\n", "v0": "\n###", "vicuna_v1": tokenizer.eos_token, "llama_2": " " + tokenizer.eos_token,
            "chat_template": "<|im_end|>"}[template]


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_supervised_tokens_decode_to_answers_plus_end_markers(tokenizer, template):
    messages = MULTI[:2] if template == "plain" else MULTI
    rendered = Renderer(tokenizer, template, N).render(messages, num_images=1)
    answers = [m.content for m in messages if m.role == "assistant"]
    runs = supervised_runs(rendered)
    assert len(runs) == len(answers)
    t = get_template(template)
    for run, answer in zip(runs, answers):
        assert tokenizer.decode(run) == t.answer_prefix + answer + end_marker(template, tokenizer)
    # labels equal ids wherever supervised; nothing supervised inside the image span
    for i, (tok, lab) in enumerate(zip(rendered.input_ids, rendered.labels)):
        assert lab == IGNORE_INDEX or lab == tok
    assert len(rendered.input_ids) == len(rendered.labels)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_image_placeholder_becomes_exactly_n_positions(tokenizer, template):
    messages = MULTI[:2] if template == "plain" else MULTI
    for n in (1, 7, 49):
        rendered = Renderer(tokenizer, template, n).render(messages, num_images=1)
        assert rendered.input_ids.count(IMAGE_TOKEN_ID) == n
        (start, end), = rendered.image_spans
        assert end - start == n
        assert rendered.input_ids[start:end] == [IMAGE_TOKEN_ID] * n
        assert all(label == IGNORE_INDEX for label in rendered.labels[start:end])


def test_plain_template_drops_instruction(tokenizer):
    rendered = Renderer(tokenizer, "plain", N).render(
        [Message("user", "Describe briefly.\n<image>"), Message("assistant", "A red star.")], num_images=1)
    text = tokenizer.decode([i for i in rendered.input_ids if i >= 0])
    assert text == "A red star.\n"
    assert rendered.input_ids[:N] == [IMAGE_TOKEN_ID] * N


def test_chat_template_uses_tokenizers_own_template(tokenizer):
    messages = [Message("user", "Hello there"), Message("assistant", "Hi!")]
    rendered = Renderer(tokenizer, "chat_template", N).render(messages)
    expected = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False)
    assert tokenizer.decode(rendered.input_ids) == expected


def test_generation_prompt_ends_where_the_answer_starts(tokenizer):
    r = Renderer(tokenizer, "chat_template", N)
    prompt = r.render(MULTI[:3], num_images=1, add_generation_prompt=True)
    full = r.render(MULTI[:4], num_images=1, placement="front")
    # the prompt is a prefix of the training rendering (same placement)
    assert full.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert full.labels[: len(prompt.labels)] == prompt.labels
    assert full.labels[len(prompt.labels)] != IGNORE_INDEX  # the answer starts right after the prompt


def test_image_placement_random_is_seeded_and_both_sides_occur(tokenizer):
    r = Renderer(tokenizer, "chat_template", N)
    starts = []
    for i in range(40):
        a = r.render(MULTI, num_images=1, placement="random", rng=sample_rng(3, i))
        b = r.render(MULTI, num_images=1, placement="random", rng=sample_rng(3, i))
        assert a.input_ids == b.input_ids and a.labels == b.labels
        starts.append(a.image_spans[0][0])
    assert len(set(starts)) == 2  # before and after the question
    front = r.render(MULTI, num_images=1, placement="front")
    assert front.image_spans[0][0] == min(starts)


def test_image_placement_is_fixed_at_inference(tokenizer):
    r = Renderer(tokenizer, "chat_template", N)
    spans = {r.render(MULTI[:1], num_images=1, add_generation_prompt=True).image_spans[0] for _ in range(5)}
    assert len(spans) == 1


@pytest.mark.parametrize("messages, match", [
    ([Message("assistant", "Hi"), Message("user", "<image>\nQ")], "first turn"),
    ([Message("user", "<image>\nQ"), Message("user", "Q2"), Message("assistant", "A")], "alternate"),
    ([Message("user", "<image>\nQ"), Message("assistant", "  ")], "empty"),
    ([Message("user", "<image>\nQ")], "end with an assistant"),
    ([Message("user", "Q"), Message("assistant", "A <image>")], "user turns"),
])
def test_inconsistent_conversations_raise(tokenizer, messages, match):
    with pytest.raises(RenderError, match=match):
        Renderer(tokenizer, "chat_template", N).render(messages)


def test_image_count_mismatch_raises(tokenizer):
    r = Renderer(tokenizer, "vicuna_v1", N)
    with pytest.raises(RenderError, match="1 image placeholder.*0 image"):
        r.render(MULTI, num_images=0)
    with pytest.raises(RenderError, match="0 image placeholder.*1 image"):
        r.render([Message("user", "Q"), Message("assistant", "A")], num_images=1)


def test_messages_from_llava_maps_roles_and_rejects_unknown():
    msgs = messages_from_llava([{"from": "human", "value": " Q "}, {"from": "gpt", "value": "A"}])
    assert msgs == [Message("user", "Q"), Message("assistant", "A")]
    with pytest.raises(RenderError, match="unknown speaker"):
        messages_from_llava([{"from": "robot", "value": "x"}])


def test_rendering_is_reproducible_across_renderers(tokenizer):
    a = Renderer(tokenizer, "v0", N).render(MULTI, num_images=1, placement="random", rng=random.Random("x"))
    b = Renderer(tokenizer, "v0", N).render(MULTI, num_images=1, placement="random", rng=random.Random("x"))
    assert (a.input_ids, a.labels, a.image_spans) == (b.input_ids, b.labels, b.image_spans)


def test_system_message_overrides_default(tokenizer):
    msgs = [Message("system", "Be terse."), *MULTI[:2]]
    ids = Renderer(tokenizer, "vicuna_v1", N).render(msgs, num_images=1).input_ids
    text = tokenizer.decode([i for i in ids if i >= 0])
    assert text.startswith("Be terse.") and "curious user" not in text


def test_renderer_system_prompt_applies_when_the_conversation_has_none(tokenizer):
    r = Renderer(tokenizer, "chat_template", N, system="Answer about the image.")
    text = tokenizer.decode([i for i in r.render(MULTI[:2], num_images=1).input_ids if i >= 0])
    assert text.startswith("<|im_start|>system\nAnswer about the image.<|im_end|>") and "SmolLM" not in text
    own = [Message("system", "Be terse."), *MULTI[:2]]
    text = tokenizer.decode([i for i in r.render(own, num_images=1).input_ids if i >= 0])
    assert "Be terse." in text and "Answer about the image." not in text


# --------------------------------------------------------------------------------------------------
# Exact text of each template where it matches the original release (differences: docs/templates.md)

TWO_ROUNDS = [Message("user", "<image>\nQ1?"), Message("assistant", "A1."), Message("user", "Q2?"),
              Message("assistant", "A2.")]


@pytest.mark.parametrize("template, expected", [
    ("v0", "{V0}\n\n### Human: <image>\nQ1?\n### Assistant: A1.\n### Human: Q2?\n### Assistant: A2.\n###"),
    ("vicuna_v1", "{VICUNA} USER: <image>\nQ1? ASSISTANT: A1.{eos}USER: Q2? ASSISTANT: A2.{eos}"),
    ("llama_2", "[INST] <<SYS>>\n{LLAMA2}\n<</SYS>>\n\n<image>\nQ1? [/INST] A1. {eos}{bos}[INST] Q2? [/INST] A2. {eos}"),
])
def test_template_text_is_the_originals(tokenizer, template, expected):
    from vistune.conversation import LLAMA2_SYSTEM, V0_SYSTEM, VICUNA_SYSTEM

    r = Renderer(tokenizer, template, N)
    want = expected.format(V0=V0_SYSTEM, VICUNA=VICUNA_SYSTEM, LLAMA2=LLAMA2_SYSTEM, eos=tokenizer.eos_token,
                           bos=tokenizer.bos_token)
    assert r.text(TWO_ROUNDS) == want
    # a generation prompt ends with the assistant's role tag (no trailing space), as the original's prompt does
    prompt = r.text(TWO_ROUNDS[:3], add_generation_prompt=True)
    assert want.startswith(prompt) and prompt.endswith({"v0": "### Assistant:", "vicuna_v1": "ASSISTANT:",
                                                        "llama_2": "[/INST]"}[template])


def test_plain_template_text_is_the_originals(tokenizer):
    r = Renderer(tokenizer, "plain", N)
    assert r.text([Message("user", "Describe briefly.\n<image>"), Message("assistant", "A red star.")]) == \
        "<image>A red star.\n"


def test_llava15_recipes_put_the_image_first():
    from pathlib import Path

    from vistune.config import load_run_config

    root = Path(__file__).resolve().parent.parent / "configs"
    for name in ("llava15_stage2.yaml", "llava15_stage2_lora.yaml"):
        assert load_run_config(root / name, read_init_from=False).data.placement == "front"


def test_several_images_keep_the_authors_layout_under_any_placement(tokenizer):
    from vistune.conversation import place_image

    two = [Message("user", "What colour is the star?\n<image>"), Message("assistant", "Red."),
           Message("user", "<image>\nAnd here?"), Message("assistant", "Blue.")]
    assert place_image(two, "front", None) == two and place_image(two, "random", random.Random(0)) == two
    one = [Message("user", "What colour is the star?\n<image>"), Message("assistant", "Red.")]
    assert place_image(one, "front", None)[0].content == "<image>\nWhat colour is the star?"
    r = Renderer(tokenizer, "chat_template", N)
    spans = {tuple(r.render(two, num_images=2, placement="random", rng=sample_rng(0, i)).image_spans)
             for i in range(10)}
    assert len(spans) == 1
    ((a, b), (c, d)), = spans
    ids = r.render(two, num_images=2).input_ids
    assert "star" in tokenizer.decode(ids[:a]) and "Red." in tokenizer.decode(ids[b:c])  # each at its place
    assert "And here?" in tokenizer.decode(ids[d:])


def test_conversation_messages_puts_each_image_before_its_question():
    from vistune.conversation import conversation_messages

    history = [("Q1", "A1"), ("Q2", "A2")]
    assert conversation_messages("Q3", history) == conversation_messages("Q3", history, image_turns=[0])
    assert [m.content for m in conversation_messages("Q3", history, image_turns=[0, 2, 2])] == [
        "<image>\nQ1", "A1", "Q2", "A2", "<image>\n<image>\nQ3"]
    assert [m.content for m in conversation_messages("Q3 <image>", history, has_image=False)][::2] == [
        "Q1", "Q2", "Q3"]
    for bad in ([3], [1, 0], [-1]):
        with pytest.raises(ValueError, match="image_turns"):
            conversation_messages("Q3", history, image_turns=bad)
