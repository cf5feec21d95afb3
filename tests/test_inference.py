"""Inference engine: batched = one-at-a-time (greedy), KV-cache reuse = re-processing, streaming, stops,
sampling, and the `vistune chat` / `vistune infer` commands, on tiny random models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistune.cli import main
from vistune.conversation import IMAGE_TOKEN_ID, conversation_messages
from vistune.inference.assistant import Assistant
from vistune.inference.chat import ChatSession
from vistune.inference.engine import (
    PREFIX_MIN,
    Engine,
    Request,
    RequestError,
    image_digest,
)
from vistune.inference.generate import SamplingError, SamplingParams, TextStream
from vistune.model.checkpoint import save_checkpoint
from vistune.model.tiny import tiny_vlm

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "data" / "images"
GOOD_IMAGES = [EXAMPLE_IMAGES / "circles.png", EXAMPLE_IMAGES / "square.png"]


def chatty_tiny_vlm(tower: str = "clip", template: str = "chat_template", seed: int = 0):
    """A tiny random model whose LLM weights are large enough that greedy answers are varied text (at the
    default init it repeats one token), so that comparisons of answers can fail."""
    model = tiny_vlm(tower=tower, template=template, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def random_image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(chatty_tiny_vlm(), max_batch_size=8)


def mixed_requests(n_tokens: int = 12) -> list[Request]:
    p = SamplingParams(max_new_tokens=n_tokens)
    return [
        Request.of("What is in the picture?", random_image(0), params=p),
        Request.of("Hi", None, params=p),
        Request.of("Describe this image in a great deal of detail: every object, colour and position.",
                   random_image(1, (64, 30)), params=p),
        Request.of("And the colour?", random_image(2), history=[("What is it?", "A square on grass.")], params=p),
        Request.of("Count to five, please.", None, params=SamplingParams(max_new_tokens=5)),
    ]


def test_batched_greedy_answers_equal_one_at_a_time(engine):
    requests = mixed_requests()
    single = [engine.generate([r])[0] for r in requests]
    batched = engine.generate(requests, batch_size=8)
    assert len({len(engine.render(r)) for r in requests}) == len(requests)  # really mixed lengths
    for s, b in zip(single, batched):
        assert b.token_ids == s.token_ids
        assert b.text == s.text
        assert b.prompt_tokens == s.prompt_tokens
    assert any(s.text for s in single)
    assert [c.completion_tokens for c in single] == [12, 12, 12, 12, 5]
    assert engine.generate_batch(requests, batch_size=2) == [s.text for s in single]


def test_prompts_joining_a_running_batch_get_their_one_at_a_time_answers(engine):
    requests = mixed_requests()
    single = [engine.generate([r])[0].token_ids for r in requests]
    prepared = engine.prepare(requests)
    decoder = engine.decoder(prepared[:2], indices=[0, 1])
    for _ in range(3):
        decoder.step()
    assert decoder.can_add
    decoder.add([p.embeds for p in prepared[2:]], [p.params for p in prepared[2:]], [2, 3, 4])
    assert len(decoder.rows) == 5
    rows = decoder.run()
    assert [rows[i].token_ids for i in range(5)] == single
    # the server's way: joiners start from the kept prompt starts (only what follows them runs)
    decoder = engine.decoder(prepared[:2], indices=[0, 1])
    decoder.step()
    engine.join(decoder, prepared[2:], [2, 3, 4])
    assert [r.prompt_tokens for r in decoder.rows[2:]] == [len(p.input_ids) - len(engine.opening())
                                                          for p in prepared[2:]]
    rows = decoder.run()
    assert [rows[i].token_ids for i in range(5)] == single


def test_followup_with_cache_reuse_equals_reprocessing(engine):
    image = random_image(3)
    params = SamplingParams(max_new_tokens=10)
    session = ChatSession(engine, image, params)
    questions = ["What is in the picture?", "What colour is it?", "Anything else?"]
    history: list[tuple[str, str]] = []
    for k, q in enumerate(questions):
        answer = session.ask(q)
        full = Request.of(q, image, history=history, params=params)
        reference = engine.generate([full])[0]
        assert answer == reference.text
        assert answer  # non-empty, so the turn joined the history
        if k > 0:  # only the new question (and the previous answer's tail) ran through the model
            assert session.last_prefill_tokens < 0.5 * reference.prompt_tokens
            assert session.last_prefill_tokens < 40
        history.append((q, answer))
    assert session.history == history
    session.reset(random_image(4))
    assert session.history == [] and session.ask("What is in the picture?") == engine.generate(
        [Request.of("What is in the picture?", random_image(4), params=params)])[0].text


def test_stream_pieces_join_to_the_answer_and_model_chat_delegates(engine):
    image = random_image(5)
    request = Request.of("Tell me about it.", image, params=SamplingParams(max_new_tokens=16))
    full = engine.generate([request])[0]
    pieces = list(engine.stream(request))
    assert len(pieces) > 1 and "".join(pieces) == full.text
    model = Assistant.wrap(engine.model)
    assert model.chat(image, "Tell me about it.", max_new_tokens=16) == full.text
    assert "".join(model.chat_stream(image, "Tell me about it.", max_new_tokens=16)) == full.text
    model.train()
    try:
        short = model.chat(image, "Tell me about it.", max_new_tokens=4)
        assert short and full.text.startswith(short)
        assert model.training  # a quick answer does not switch a training model to eval mode
    finally:
        model.eval()
    assert model.decode_answer(full.token_ids) == full.text


def test_generation_stops_at_end_of_turn_stop_string_and_length(engine):
    request = Request.of("Hi there", None, params=SamplingParams(max_new_tokens=12))
    free = engine.generate([request])[0]
    assert free.finish_reason == "length" and free.completion_tokens == 12

    eot = Engine(engine.model)
    eot.end_of_turn_ids = [free.token_ids[4]]  # pretend the 5th token ends the turn
    stopped = eot.generate([request])[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[:5]
    assert stopped.text == engine.model.tokenizer.decode(free.token_ids[:4], skip_special_tokens=True).strip()

    words = free.text.split()
    stop = words[len(words) // 2]
    cut = engine.generate([Request.of("Hi there", None, params=SamplingParams(max_new_tokens=12, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)].strip()
    assert stop not in cut.text


def test_sampling_is_seeded_and_greedy_is_deterministic(engine):
    def run(**kw):
        return engine.generate([Request.of("Say something.", None, max_new_tokens=10, **kw)])[0].token_ids

    assert run(temperature=0.0) == run(temperature=0.0)
    a, b = run(temperature=1.0, seed=1), run(temperature=1.0, seed=1)
    assert a == b
    assert run(temperature=1.0, seed=2) != a
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run(temperature=0.0)  # nucleus of one = greedy


def test_text_stream_holds_back_partial_stop_strings():
    from vistune.model.llm import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok.encode(" Hello world ### more", add_special_tokens=False)
    stream = TextStream(tok, ("###",))
    pieces = []
    for t in ids:
        pieces.append(stream.push(t))
        assert "#" not in "".join(pieces)
        if stream.stopped:
            break
    pieces.append(stream.finish())
    assert stream.stopped and "".join(pieces) == "Hello world" == stream.text


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0),
                                    dict(top_p=1.5), dict(temperature=float("nan")), dict(max_new_tokens=True)])
def test_bad_sampling_params_are_rejected(kwargs):
    with pytest.raises(SamplingError):
        SamplingParams(**kwargs)


def test_bad_requests_raise_request_error(engine):
    with pytest.raises(RequestError, match="image"):  # a placeholder without an image
        engine.generate([Request(Request.of("q", random_image(0)).messages, [])])
    with pytest.raises(RequestError, match="at most"):
        engine.generate([Request.of("word " * 5000, None)])


def test_siglip_tower_and_a_template_with_stop_strings_batch_consistently():
    engine = Engine(chatty_tiny_vlm(tower="siglip", template="v0", seed=1))
    requests = mixed_requests(8)[:3]
    assert engine.generate_batch(requests) == [engine.generate_batch([r])[0] for r in requests]


# -------------------------------------------------------------------------------------------------
# commands


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, engine) -> Path:
    return save_checkpoint(engine.model, tmp_path_factory.mktemp("ckpt") / "tiny-chatty")


def test_chat_command_answers_once(checkpoint, engine, capsys):
    image = GOOD_IMAGES[0]
    code = main(["chat", "--model", str(checkpoint), "--image", str(image), "--prompt", "What is this?",
                 "--temperature", "0", "--max-new-tokens", "9"])
    assert code == 0
    expected = engine.generate([Request.of("What is this?", Image.open(image).convert("RGB"), max_new_tokens=9)])[0]
    assert capsys.readouterr().out.strip() == expected.text


def test_chat_command_interactive_session(checkpoint, engine, capsys, monkeypatch):
    images = GOOD_IMAGES
    lines = ["What is this?", "And then?", f"/image {images[1]}", "Describe it.", "/image /no/such.png", "/image",
             "/reset", "Once more?", "/quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(["chat", "--model", str(checkpoint), "--image", str(images[0]), "--temperature", "0",
                 "--max-new-tokens", "6"])
    assert code == 0
    captured = capsys.readouterr()
    answers = [line.split("assistant> ", 1)[1] for line in captured.out.splitlines() if "assistant> " in line]
    first, second = (Image.open(p).convert("RGB") for p in images)
    params = SamplingParams(max_new_tokens=6)
    a1 = engine.generate([Request.of("What is this?", first, params=params)])[0].text
    a2 = engine.generate([Request.of("And then?", first, history=[("What is this?", a1)], params=params)])[0].text
    # /image adds the second image to the conversation: it leads the next question, the history stays
    both = conversation_messages("Describe it.", [("What is this?", a1), ("And then?", a2)], image_turns=[0, 2])
    a3 = engine.generate([Request(both, [first, second], params)])[0].text
    a4 = engine.generate([Request.of("Once more?", first, params=params)])[0].text  # /reset: back to --image only
    assert answers == [a1, a2, a3, a4]
    assert "file not found" in captured.err and "usage: /image PATH" in captured.err
    assert "image 2 added" in captured.err


def test_images_added_mid_conversation_reuse_the_cache_and_equal_reprocessing(engine):
    a, b, c = random_image(21), random_image(22, (30, 50)), random_image(23)
    params = SamplingParams(max_new_tokens=8)
    n = engine.model.num_image_tokens
    for start in (a, None):  # a conversation that starts with an image, and one that starts with text only
        session = ChatSession(engine, start, params)
        images, turns, history = ([a], [0], []) if start is not None else ([], [], [])
        for k, (question, added) in enumerate([("What is it?", []), ("And this one?", [b]), ("Go on.", []),
                                                ("Compare these two.", [c, a])]):
            for image in added:
                session.add_image(image)
            assert session.pending_images == len(added) + (k == 0 and start is not None)
            images, turns = images + added, turns + [k] * len(added)
            answer = session.ask(question)
            reference = engine.generate([Request(conversation_messages(question, history, image_turns=turns),
                                                 images, params)])[0]
            assert answer == reference.text and answer
            if k > 0:  # the earlier turns and images come from the cache; only the new images ran
                assert len(added) * n <= session.last_prefill_tokens < len(added) * n + 40
            history.append((question, answer))
        assert session.images == images and session.history == history and len(session._features) == len(images)
    session.add_image(b)  # a pending image leads the next question, after the history
    request = session.request("Last one?")
    assert request.images == [*images, b] and request.messages[-1].content == "<image>\nLast one?"
    session.reset()
    assert session.images == [] and session.pending_images == 0 and session.image is None


def _questions(path: Path, n: int) -> list[dict]:
    names = [p.name for p in GOOD_IMAGES]
    qs = [{"question_id": f"q{i}", "image": names[i % len(names)] if i % 3 else None,
           "text": "What is shown?" + " Be brief." * (i % 4)} for i in range(n)]
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))
    return qs


def test_infer_command_batches_and_resumes(checkpoint, engine, tmp_path):
    qs = _questions(tmp_path / "q.jsonl", 7)
    out = tmp_path / "answers.jsonl"
    args = ["infer", "--model", str(checkpoint), "--questions", str(tmp_path / "q.jsonl"), "--images",
            str(EXAMPLE_IMAGES), "--out", str(out), "--batch-size", "3", "--max-new-tokens", "6"]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in records] == [q["question_id"] for q in qs]
    assert all(r["model_id"] == "tiny-chatty" and r["prompt"] == q["text"] for r, q in zip(records, qs))
    for r, q in zip(records, qs):
        image = Image.open(EXAMPLE_IMAGES / q["image"]).convert("RGB") if q["image"] else None
        assert r["text"] == engine.generate([Request.of(q["text"], image, max_new_tokens=6)])[0].text

    # a crash mid-write leaves a torn line: the re-run cuts it and answers the rest
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:10])
    assert main(args) == 0
    assert out.read_text() == "".join(lines)
    assert main(args) == 0 and out.read_text() == "".join(lines)  # nothing left to do


def test_infer_command_reports_bad_input(checkpoint, tmp_path, capsys):
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "missing.png", "text": "What?"}\n'
                                      '{"question_id": 2, "text": "Hi"}\n'
                                      '{"question_id": 3, "image": "broken.png", "text": "What?"}\n')
    out = tmp_path / "a.jsonl"
    args = ["infer", "--model", str(checkpoint), "--questions", str(tmp_path / "q.jsonl"), "--images",
            str(EXAMPLE_IMAGES), "--out", str(out), "--max-new-tokens", "3"]
    assert main(args) == 1
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == [2]
    err = capsys.readouterr().err
    assert "missing.png" in err and "broken.png" in err and "failed 2" in err
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    assert main(args[:4] + [str(tmp_path / "bad.jsonl")] + args[5:]) == 2
    assert "duplicate question_id" in capsys.readouterr().err


def test_infer_reads_image_lists_and_answers_with_every_image(checkpoint, engine, tmp_path):
    from vistune.inference.batch import QuestionsError, read_questions

    names = [p.name for p in GOOD_IMAGES]
    qs = [{"question_id": "two", "image": names, "text": "Which is larger?"},
          {"question_id": "swapped", "image": names[::-1], "text": "Which is larger?"},
          {"question_id": "one", "image": [names[0]], "text": "What is it?"},
          {"question_id": "none", "image": [], "text": "Hi"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    out = tmp_path / "a.jsonl"
    assert main(["infer", "--model", str(checkpoint), "--questions", str(tmp_path / "q.jsonl"), "--images",
                 str(EXAMPLE_IMAGES), "--out", str(out), "--max-new-tokens", "6"]) == 0
    got = {r["question_id"]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    pics = [Image.open(p).convert("RGB") for p in GOOD_IMAGES]
    params = SamplingParams(max_new_tokens=6)
    two = Request(conversation_messages("Which is larger?", image_turns=[0, 0]), pics, params)
    swapped = Request(two.messages, pics[::-1], params)
    assert engine.render(two).count(-200) == 2 * engine.model.num_image_tokens
    assert got["two"] == engine.generate([two])[0].text
    assert got["swapped"] == engine.generate([swapped])[0].text != got["two"]  # the order of the images matters
    assert got["one"] == engine.generate([Request.of("What is it?", pics[0], params=params)])[0].text
    assert got["none"] == engine.generate([Request.of("Hi", None, params=params)])[0].text
    for bad in ('{"question_id": 1, "image": ["a.png", 2], "text": "q"}', '{"question_id": 1, "image": 5, "text": "q"}'):
        (tmp_path / "bad.jsonl").write_text(bad + "\n")
        with pytest.raises(QuestionsError, match="bad.jsonl:1: 'image' must be a path string or a list"):
            read_questions(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "q"}\n{oops\n')
    with pytest.raises(QuestionsError, match="bad.jsonl:2: invalid JSON"):
        read_questions(tmp_path / "bad.jsonl")


def test_kept_prompt_starts_change_no_answer_and_run_once():
    model = chatty_tiny_vlm()
    plain, reuse = Engine(model, prefix_reuse=False), Engine(model)
    # a mixed batch (text-only and image prompts): the text every prompt shares, the template's system turn
    requests = mixed_requests()
    ids = [reuse.render(r) for r in requests]
    n = len(reuse.opening())  # the template's system turn and the opening of the user's turn
    assert n >= PREFIX_MIN and all(x[:n] == reuse.opening() for x in ids)
    assert IMAGE_TOKEN_ID not in ids[0][:n] and ids[0][n] == IMAGE_TOKEN_ID  # LLaVA's layout: the image next
    reference = plain.generate(requests, batch_size=8)
    answers = reuse.generate(requests, batch_size=8)
    assert [c.token_ids for c in answers] == [c.token_ids for c in reference]
    assert [c.prompt_tokens for c in answers] == [c.prompt_tokens for c in reference]
    (kept_key, kept), = reuse._kept.items()
    assert kept_key == (tuple(ids[0][:n]), None) and kept[0][0].shape[2] == n  # decoding extended copies, not it
    first = reuse.decoder(reuse.prepare(requests[:3]))  # a later batch: its next-token logits equal a whole prefill's
    assert reuse._kept[kept_key] is kept and first.cache.get_seq_length() == max(len(x) for x in ids[:3])
    torch.testing.assert_close(first.logits, plain.decoder(plain.prepare(requests[:3])).logits, atol=1e-4, rtol=1e-4)
    assert "".join(reuse.stream(requests[2])) == reference[2].text  # one request alone reuses it too

    # every prompt opens with text, then an image: the start is kept per image, so a second question about an
    # image runs only the question
    p = SamplingParams(max_new_tokens=8)
    images = [random_image(10 + k) for k in range(3)]
    first_round = [Request.of("What is in the picture?", im, params=p) for im in images]
    second_round = [Request.of(q, im, params=p) for q, im in zip(["Which colour?", "Is it big?", "Where?"], images)]
    reuse.clear_prefix()
    for k, batch in enumerate((first_round, second_round, first_round[:1] + second_round[1:])):
        assert [c.token_ids for c in reuse.generate(batch)] == [c.token_ids for c in plain.generate(batch)]
        if k == 0:
            starts = dict(reuse._kept)
        # one start per image, kept from the first round on, and the text before the images they continue
        assert sorted(d is None for _, d in starts) == [False, False, False, True]
        assert all(reuse._kept[key] is start for key, start in starts.items()) and len(reuse._kept) == 4
    decoder = reuse.decoder(reuse.prepare(second_round))
    image_end = reuse.prepare(second_round[:1])[0].image_end
    assert image_end == reuse.render(second_round[0]).index(IMAGE_TOKEN_ID) + model.num_image_tokens
    assert decoder.rows[0].prompt_tokens == len(reuse.render(second_round[0])) - image_end  # only the question ran
    # the kept starts are bounded in bytes: the least recently used go first
    per_start = max(sum(k.nbytes + v.nbytes for k, v in start) for start in starts.values())
    small = Engine(model, prefix_cache_mb=1.5 * per_start / 2**20)
    assert [c.token_ids for c in small.generate(first_round)] == [c.token_ids for c in plain.generate(first_round)]
    assert len(small._kept) == 1 and small._kept_bytes == per_start
    assert next(iter(small._kept))[1] == image_digest(images[2])  # the last one kept
    tiny = Engine(model, prefix_cache_mb=0.5 * per_start / 2**20)  # a start larger than the bound is not kept
    assert [c.token_ids for c in tiny.generate(first_round)] == [c.token_ids for c in plain.generate(first_round)]
    assert not tiny._kept and tiny._kept_bytes == 0


class _Calls:
    """Counts a module's forward calls and the positions each call ran (a forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        x = kwargs.get("inputs_embeds", kwargs.get("input_ids", args[0] if args else None))
        self.lengths.append(x.shape[1])


def test_a_prompt_runs_in_one_pass_and_a_repeated_image_runs_only_the_question():
    model = chatty_tiny_vlm()
    plain, reuse = Engine(model, prefix_reuse=False), Engine(model)
    llm, tower = _Calls(model.llm), _Calls(model.vision_tower)
    image = random_image(30)
    first, again = (Request.of(q, image, max_new_tokens=1) for q in ("What is it?", "And its colour, please?"))
    assert reuse.generate([first])[0].token_ids == plain.generate([first])[0].token_ids
    assert llm.lengths == [len(reuse.render(first))] * 2  # one pass each for the whole prompt, nothing kept yet
    assert len(tower.lengths) == 2
    image_end = reuse.prepare([first])[0].image_end
    assert len(tower.lengths) == 2  # the image's features were kept
    llm.lengths.clear()
    assert reuse.generate([again])[0].token_ids == plain.generate([again])[0].token_ids
    assert llm.lengths == [len(reuse.render(again)) - image_end, len(reuse.render(again))]  # kept start: the question
    assert len(tower.lengths) == 3  # only the plain engine encoded the image again


def test_kept_starts_and_features_are_forgotten_when_the_weights_change():
    model = chatty_tiny_vlm()
    engine = Engine(model)
    requests = [Request.of("What is in the picture?", random_image(31), max_new_tokens=8),
                Request.of("Count to five, please.", None, max_new_tokens=8)]
    def answers(e: Engine) -> list[list[int]]:
        return [e.generate([r])[0].token_ids for r in requests]

    before = answers(engine)
    assert len(engine._kept) == 2 and len(engine._features) == 1  # the opening, and the opening with the image
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        for p in [*model.llm.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    after = answers(Engine(model, prefix_reuse=False))
    assert after[0] != before[0] and after[1] != before[1]  # the change matters to both answers
    assert answers(engine) == after


def test_assistant_chat_keeps_one_engine_in_eval_mode():
    model = Assistant.wrap(chatty_tiny_vlm())
    llm = _Calls(model.llm)
    image = random_image(32)
    answer = model.chat(image, "What is it?", max_new_tokens=1)
    assert model.engine() is model.engine() and len(llm.lengths) == 1
    for _ in range(2):  # the same question again: only the question runs
        assert model.chat(image, "What is it?", max_new_tokens=1) == answer
    full = len(model.engine().render(Request.of("What is it?", image)))
    assert llm.lengths[0] == full and llm.lengths[1:] == [full - model.engine().prepare(
        [Request.of("What is it?", image)])[0].image_end] * 2
    model.train()
    try:
        assert model.engine() is not model.engine()
    finally:
        model.eval()


@pytest.mark.parametrize("prefix_reuse", [False, True])
def test_every_lever_on_and_off_gives_the_same_greedy_tokens(engine, prefix_reuse):
    """Kept prompt starts and image features, one-pass prefill, and batches joining the decoded rows: the same
    tokens as one request at a time with every lever off, twice (the second pass reuses what the first kept),
    and streaming gives the same text."""
    model = engine.model
    image = random_image(40)
    requests = mixed_requests(10) + [Request.of(q, image, max_new_tokens=10) for q in ("What is it?", "Where?")]
    off = Engine(model, prefix_reuse=False, decode_rows=1)
    reference = [off.generate([r])[0] for r in requests]
    for decode_rows in (2, 6):  # batches of 2 decoded alone, or joining the running rows
        e = Engine(model, prefix_reuse=prefix_reuse, decode_rows=decode_rows)
        for _ in range(2):
            assert [c.token_ids for c in e.generate(requests, batch_size=2)] == [c.token_ids for c in reference]
        assert ["".join(e.stream(r)) for r in requests[-2:]] == [c.text for c in reference[-2:]]
