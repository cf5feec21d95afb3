"""Property-based tests (hypothesis) of the data path and the request parser: the renderer over any valid
conversation and every template, record validation over arbitrary JSON, and the chat request parser over
arbitrary JSON: right answers for valid input, named reasons for bad input, never an unexpected exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_conversation import end_marker, supervised_runs
from vistune.conversation import IGNORE_INDEX, IMAGE_TOKEN_ID, TEMPLATE_NAMES, Message, Renderer, get_template
from vistune.data.dataset import REASONS
from vistune.data.inspect import check_dataset, check_records
from vistune.serve.schemas import APIError, ChatRequest, ServeLimits, parse_chat_request

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

WORDS = st.text(alphabet=st.sampled_from(list("abcdefghij XYZ.,?!'-0123456789éüñ漢字🙂\t")), min_size=1, max_size=40)
TEXT = WORDS.map(str.strip).filter(bool)

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4), max_leaves=20)


@st.composite
def conversations(draw, template: str) -> list[Message]:
    turns = 1 if template == "plain" else draw(st.integers(1, 3))
    messages = []
    if template != "plain" and draw(st.booleans()):
        messages.append(Message("system", draw(TEXT)))
    for t in range(turns):
        question = draw(TEXT)
        if t == 0:
            question = f"<image>\n{question}" if draw(st.booleans()) else f"{question}\n<image>"
        messages += [Message("user", question), Message("assistant", draw(TEXT))]
    return messages


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_any_valid_conversation_renders_consistently(tokenizer, template):
    @SETTINGS
    @given(messages=conversations(template), n=st.integers(1, 9))
    def check(messages, n):
        rendered = Renderer(tokenizer, template, n).render(messages, num_images=1)
        assert len(rendered.input_ids) == len(rendered.labels)
        assert rendered.input_ids.count(IMAGE_TOKEN_ID) == n
        assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(rendered.input_ids, rendered.labels))
        answers = [m.content for m in messages if m.role == "assistant"]
        runs = supervised_runs(rendered)
        assert len(runs) == len(answers)
        prefix = get_template(template).answer_prefix
        for run, answer in zip(runs, answers):
            assert tokenizer.decode(run) == prefix + answer + end_marker(template, tokenizer)

    check()


@st.composite
def records(draw):
    """Mostly record-shaped objects with random faults, sometimes arbitrary JSON."""
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON)
    turns = []
    for i in range(draw(st.integers(0, 5))):
        turn = {"from": draw(st.sampled_from(["human", "gpt", "system", "robot", 3, None, ["human"]])),
                "value": draw(st.one_of(TEXT, st.just(""), st.just("<image>\nQ"), st.integers(), st.none(),
                                        st.just("x" * 200_000)))}
        if draw(st.integers(0, 9)) == 0:
            turn.pop(draw(st.sampled_from(["from", "value"])))
        turns.append(turn)
    record = {"id": draw(st.one_of(st.text(max_size=6), st.integers(), st.none(), st.lists(st.integers()))),
              "conversations": turns if draw(st.integers(0, 9)) else draw(JSON)}
    if draw(st.booleans()):
        record["image"] = draw(st.one_of(st.just("a.png"), st.just(""), st.none(), st.integers(), st.lists(TEXT),
                                         st.just("../../etc/passwd"), st.just("x" * 5000)))
    return record


@SETTINGS
@given(batch=st.lists(records(), max_size=8))
def test_check_records_names_every_bad_record_and_never_raises(tokenizer, tmp_path_factory, batch):
    folder = tmp_path_factory.getbasetemp() / "no-images"
    folder.mkdir(exist_ok=True)
    renderer = Renderer(tokenizer, "chat_template", 4)
    bad = check_records(batch, str(folder), renderer, 4096)
    assert [b["index"] for b in bad] == sorted({b["index"] for b in bad})
    for b in bad:
        assert b["reason"] in REASONS and isinstance(b["detail"], str) and isinstance(b["id"], str)
    flagged = {b["index"] for b in bad}
    for i, record in enumerate(batch):
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) \
                or not record["conversations"] or record.get("image") not in (None, ""):
            assert i in flagged, record  # no valid shape, or an image that is not in the (empty) folder


def test_check_dataset_reports_malformed_files_by_line(tmp_path):
    good = {"id": "ok", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"id": "broken", "conversations": [\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: invalid JSON line"):
        check_dataset(path)
    path.write_text("[" + json.dumps(good) + ", 1, \"x\", {\"conversations\": 5}]")
    report = check_dataset(path)
    assert report.records == 4 and [b["index"] for b in report.bad] == [1, 2, 3]


@st.composite
def chat_bodies(draw):
    """Request bodies near the accepted shape, with random faults, sometimes arbitrary JSON."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON)
    part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(TEXT, st.integers())}),
                     st.fixed_dictionaries({"type": st.just("image_url"),
                                            "image_url": st.one_of(st.fixed_dictionaries({"url": st.text()}),
                                                                   st.text(), st.none())}),
                     JSON)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", 1]),
                                     "content": st.one_of(TEXT, st.lists(part, max_size=3), JSON)})
    body = {"messages": draw(st.one_of(st.lists(message, max_size=4), JSON))}
    for key, values in {"model": st.one_of(st.text(max_size=5), st.integers()),
                        "max_tokens": st.one_of(st.integers(-5, 10**6), st.floats(), st.text(max_size=3)),
                        "temperature": st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.booleans()),
                        "top_p": st.one_of(st.floats(), st.just(1e-300)),
                        "seed": st.one_of(st.integers(), st.integers(2**63, 2**80), st.floats()),
                        "n": st.integers(-2, 3), "stream": JSON, "stream_options": JSON,
                        "stop": st.one_of(st.text(), st.lists(st.one_of(st.text(), st.integers()), max_size=6))}.items():
        if draw(st.booleans()):
            body[key] = draw(values)
    return body


@settings(max_examples=300, deadline=None)
@given(body=chat_bodies())
def test_request_parser_accepts_or_names_the_problem(body):
    limits = ServeLimits()
    try:
        parsed = parse_chat_request(body, limits)
    except APIError as e:
        assert e.status == 400 and e.message and e.type == "invalid_request_error"
        assert set(e.body()["error"]) == {"message", "type", "param", "code"}
        return
    assert isinstance(parsed, ChatRequest) and parsed.messages[-1].role == "user"
    assert 1 <= parsed.max_tokens <= limits.max_tokens and 0 <= parsed.temperature <= 2 and 0 < parsed.top_p <= 1
    assert len(parsed.image_urls) <= limits.max_images
