"""The engine's text stream and memory under many requests: incremental detokenizing equals decoding the whole
answer (multi-byte characters split across tokens included), and a worker keeps no per-request history."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_inference import chatty_tiny_vlm
from vistune.inference.engine import Engine, EngineWorker, Request
from vistune.inference.generate import TextStream
from vistune.model.llm import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


class _CountingTokenizer:
    """Wraps a tokenizer, counting the ids it is asked to decode."""

    def __init__(self, tok) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self.tok.decode(ids, **kw)


TEXTS = st.text(alphabet=st.sampled_from(list("ab c\n.,!é漢字🙂ß ñü—#")), max_size=60)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, stop=st.sampled_from([(), ("###",), ("\n\n", "字🙂")]))
@example(text="éa—c 字🙂", stop=("\n\n", "字🙂"))  # the space before a held-back stop prefix was shown, then cut
@example(text="漢ü,\n 字🙂b#", stop=("\n\n", "字🙂"))
def test_streamed_pieces_join_to_the_whole_decode(tokenizer, text, stop):
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = TextStream(tokenizer, stop)
    pieces = []
    for t in ids:
        pieces.append(stream.push(t))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    whole = tokenizer.decode(ids, skip_special_tokens=True).strip()
    for s in stop:
        whole = whole[:whole.index(s)].rstrip() if s in whole else whole
    cut = min([whole.find(s) for s in stop if s in whole], default=-1)
    assert "".join(pieces) == stream.text
    if cut < 0:
        assert stream.text == whole
    assert not any(s in stream.text for s in stop)
    assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 49151), max_size=40))
def test_arbitrary_ids_stream_like_the_whole_decode(tokenizer, ids):
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(pieces) == stream.text == tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_decoding_cost_is_linear_in_the_answer_length(tokenizer):
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 60, add_special_tokens=False)
    counting = _CountingTokenizer(tokenizer)
    stream = TextStream(counting)
    for t in ids:
        stream.push(t)
    stream.finish()
    assert stream.text == tokenizer.decode(ids).strip()
    assert counting.decoded < 8 * len(ids)  # re-decoding the whole answer each time would be ~len(ids)**2 / 2


def test_worker_state_does_not_grow_with_requests():
    engine = Engine(chatty_tiny_vlm(), max_batch_size=4)
    worker = EngineWorker(engine).start()

    def run(n: int) -> None:
        done = threading.Semaphore(0)
        for i in range(n):
            worker.submit(Request.of(f"Question {i}?", max_new_tokens=3),
                          lambda kind, payload: done.release() if kind in ("done", "error") else None)
        for _ in range(n):
            assert done.acquire(timeout=120)

    run(8)
    size_after_warmup = _held_items(worker), _held_items(worker.stats), _held_items(engine)
    run(40)
    worker.stop()
    assert (_held_items(worker), _held_items(worker.stats), _held_items(engine)) == size_after_warmup
    assert worker.stats.answered == 48 and worker.pending() == 0


def _held_items(obj) -> int:
    """Attributes plus the items of every container attribute: what an object holds."""
    return sum(1 + (len(v) if isinstance(v, (list, dict, set, tuple)) else 0) for v in vars(obj).values())
