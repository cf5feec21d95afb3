"""`vistune serve` under hostile input: extreme sampling values, long prompts, a full queue, clients that leave,
remote image URLs aimed at internal addresses, malformed JSON, cross-site requests and API keys.

Remote-image address rules are checked with a stubbed resolver and httpx.MockTransport, so no test can open a
connection outside loopback even when the check under test is broken."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time

import httpx
import pytest
from PIL import Image
from test_inference import random_image
from test_serve import (  # noqa: F401  (module fixtures)
    MODEL,
    USER,
    LiveServer,
    _assert_error,
    _post,
    engine,
    expected,
    image_message,
    image_root,
    server,
)

from vistune.inference.engine import Engine, EngineBusy, EngineWorker, Job, Request
from vistune.inference.generate import SamplingParams
from vistune.serve.app import create_app
from vistune.serve.images import FETCH_FAILED, is_public_address
from vistune.serve.schemas import ServeLimits


def _chat(live, **body):
    return _post(live, {"model": MODEL, "messages": USER, "max_tokens": 4, **body})


# -------------------------------------------------------------------------------------------------
# one request's values fail that request alone


def test_extreme_sampling_values_fail_alone_or_work(server, engine):
    bodies = [dict(temperature=1e-300), dict(temperature=1e-300, top_p=1e-300), dict(temperature=2.0, top_p=1e-300),
              dict(temperature=0), dict(temperature=1.0, seed=2**64 - 1), dict(temperature=1.0, seed=-(2**63))]
    results: dict[int, httpx.Response] = {}

    def ask(i):
        results[i] = _chat(server, max_tokens=6, **bodies[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values()]
    greedy = expected(engine, "Hi", None, 6)
    # a vanishing temperature or nucleus is greedy decoding in the limit
    assert {results[i].json()["choices"][0]["message"]["content"] for i in range(4)} == {greedy}
    for seed in (2**64, 2**70, -(2**63) - 1):
        _assert_error(_chat(server, temperature=1.0, seed=seed), 400, "seed", "invalid_value")


class _FailsOnSecondStep(SamplingParams):
    """Sampling parameters whose row raises at its second token (a failure inside a shared batch)."""

    calls = 0

    @property
    def greedy(self) -> bool:
        type(self).calls += 1
        if type(self).calls > 2:
            raise RuntimeError("boom")
        return True


def test_a_row_that_fails_inside_a_batch_fails_alone(engine):
    worker = EngineWorker(engine)
    gate = threading.Event()
    events: dict[int, list] = {0: [], 1: [], 2: []}

    def on(i):
        def record(kind, payload):
            events[i].append((kind, payload))
            if kind in ("done", "error") and all(e and e[-1][0] in ("done", "error") for e in events.values()):
                gate.set()
        return record

    reqs = [Request.of("Hi", max_new_tokens=8), Request.of("Hi", params=_FailsOnSecondStep(max_new_tokens=8)),
            Request.of("Tell me more.", max_new_tokens=8)]
    for i, r in enumerate(reqs):  # queued before the thread starts, so that all three share one batch
        worker._queue.put(Job(r, on(i)))
    worker.start()
    assert gate.wait(60)
    worker.stop()
    assert events[1][-1][0] == "error" and str(events[1][-1][1]) == "boom"
    alone = engine.generate([Request.of("Hi", max_new_tokens=8), Request.of("Tell me more.", max_new_tokens=8)])
    assert [events[i][-1][1].text for i in (0, 2)] == [c.text for c in alone]
    assert worker.stats.finished["error"] == 1 and worker.stats.max_rows == 3


# -------------------------------------------------------------------------------------------------
# long prompts, a bounded queue, clients that leave


class _RecordingEngine(Engine):
    """Records the threads that tokenize, and can hold the engine thread at a gate."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.render_threads: set[str] = set()
        self.renders = 0
        self.gate = threading.Event()
        self.gate.set()

    def render(self, request):
        self.render_threads.add(threading.current_thread().name)
        self.renders += 1
        return super().render(request)

    def prepare(self, requests):
        assert self.gate.wait(60)
        return super().prepare(requests)


def test_prompts_are_tokenized_off_the_engine_thread_and_long_ones_refused_early(engine):
    recording = _RecordingEngine(engine.model)
    app = create_app(recording, model_name=MODEL, limits=ServeLimits(max_prompt_chars=50_000))
    with LiveServer(app) as live:
        assert _chat(live).status_code == 200
        _assert_error(_chat(live, messages=[{"role": "user", "content": "word " * 6000}]), 400, "messages",
                      "invalid_value")  # too many tokens: found in a server thread
        renders = recording.renders
        _assert_error(_chat(live, messages=[{"role": "user", "content": "x" * 3_000_000}]), 400, "messages",
                      "context_length_exceeded")  # too many characters: refused before tokenizing
        assert recording.renders == renders
    assert recording.render_threads and "vistune-engine" not in recording.render_threads


def test_a_full_server_answers_503_at_once(engine):
    recording = _RecordingEngine(engine.model)
    app = create_app(recording, model_name=MODEL, limits=ServeLimits(max_pending=2))
    with LiveServer(app) as live:
        recording.gate.clear()  # the engine thread stalls: admitted requests pile up
        results = []
        threads = [threading.Thread(target=lambda: results.append(_chat(live))) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while app.state.worker.pending() + (1 if not recording.gate.is_set() else 0) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        r = _chat(live)
        err = _assert_error(r, 503, None, "server_overloaded")
        assert err["type"] == "server_error" and r.headers["retry-after"] == "1"
        recording.gate.set()
        for t in threads:
            t.join(60)
        assert [x.status_code for x in results] == [200, 200]
        assert _chat(live).status_code == 200  # the slots were released


def test_worker_queue_is_bounded(engine):
    worker = EngineWorker(engine, max_queue=2)
    worker._started = True  # never run: submissions stay queued
    worker.submit(Request.of("a"), lambda *a: None)
    worker.submit(Request.of("b"), lambda *a: None)
    with pytest.raises(EngineBusy):
        worker.submit(Request.of("c"), lambda *a: None)
    assert worker.pending() == 2 and worker.stats.rejected == 1


def test_a_non_streaming_client_that_leaves_is_cancelled(server):
    worker: EngineWorker = server.app.state.worker
    before = worker.stats.finished["cancelled"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk forever."}], "max_tokens": 4000,
            "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    deadline = time.time() + 30
    while worker.stats.finished["cancelled"] == before and time.time() < deadline:
        time.sleep(0.05)
    reason, tokens = worker.stats.last
    assert reason == "cancelled" and tokens < 4000


# -------------------------------------------------------------------------------------------------
# malformed JSON and strings


@pytest.mark.parametrize("content", [
    b"[" * 10_000 + b"]" * 10_000,
    b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]}).encode(),
    json.dumps({"model": MODEL, "messages": USER, "stop": ["\udfff"]}).encode(),
    json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "\ud83d"}]}).encode(),
])
def test_deep_nesting_and_lone_surrogates_are_400(server, content):
    _assert_error(_post(server, content), 400, None, "invalid_json")


def test_nul_and_odd_file_urls_are_400(server, image_root):
    for url in [f"file://{image_root}/pics/inside.png\0.txt", "file:///%00", f"file://{image_root}/pics/%00x.png",
                "file://" + "a/" * 5000, "file:///" + "x" * 10000]:
        _assert_error(_post(server, {"model": MODEL, "messages": [image_message("x", url)]}), 400)


# -------------------------------------------------------------------------------------------------
# cross-site requests, Host header, API key


def test_cross_site_posts_and_foreign_host_names_are_refused(engine):
    app = create_app(engine, model_name=MODEL, allowed_hosts=["vistune.internal"], worker=EngineWorker(engine))
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 2})
    with LiveServer(app) as live:
        url = live.url + "/v1/chat/completions"
        _assert_error(httpx.post(url, content=body, headers={"content-type": "text/plain"}), 415, None,
                      "unsupported_media_type")
        _assert_error(httpx.post(url, content=body, headers={"content-type": "application/x-www-form-urlencoded"}),
                      415)
        _assert_error(httpx.post(url, content=body, headers={"content-type": "application/json",
                                                             "origin": "http://evil.example"}), 403, None,
                      "cross_origin")
        _assert_error(httpx.post(url, content=body, headers={"content-type": "application/json", "origin": "null"}),
                      403)
        for host in ["evil.example", "evil.example:8000", "localhost.evil.example"]:
            _assert_error(httpx.get(live.url + "/v1/models", headers={"host": host}), 421, None, "host_not_allowed")
            _assert_error(httpx.post(url, content=body, headers={"content-type": "application/json", "host": host}),
                          421)
        for host in ["localhost", f"localhost:{live.port}", f"127.0.0.1:{live.port}", "[::1]:80", "vistune.internal",
                     "VISTUNE.internal:1"]:
            assert httpx.get(live.url + "/v1/models", headers={"host": host}).status_code == 200, host
        same_origin = {"content-type": "application/json; charset=utf-8", "origin": live.url}
        assert httpx.post(url, content=body, headers=same_origin).status_code == 200


def test_every_endpoint_but_health_needs_the_key_and_it_is_never_logged(engine, caplog):
    key = "k3y-" + "s3cret" * 4
    app = create_app(engine, model_name=MODEL, api_key=key, worker=EngineWorker(engine))
    caplog.set_level(logging.DEBUG)
    with LiveServer(app) as live:
        for auth in [None, "Bearer wrong", f"Bearer {key[:-1]}", f"Bearer {key}x", f"Basic {key}", key,
                     b"Bearer \xff\xfe"]:
            headers = {"authorization": auth} if auth else {}
            _assert_error(httpx.get(live.url + "/v1/models", headers=headers), 401, None, "invalid_api_key")
            _assert_error(httpx.post(live.url + "/v1/chat/completions", headers=headers,
                                     json={"model": MODEL, "messages": USER}), 401, None, "invalid_api_key")
        good = {"authorization": f"Bearer {key}"}
        assert httpx.get(live.url + "/v1/models", headers=good).status_code == 200
        assert httpx.post(live.url + "/v1/chat/completions", headers=good,
                          json={"model": MODEL, "messages": USER, "max_tokens": 2}).status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200
        for path in ["/v1/nothing", "/openapi.json", "/docs"]:
            assert httpx.get(live.url + path).status_code in (401, 404)
    assert key not in caplog.text and "s3cret" not in caplog.text


# -------------------------------------------------------------------------------------------------
# remote images: address rules with a stubbed resolver and transport


def _png(seed: int = 31) -> bytes:
    buf = io.BytesIO()
    random_image(seed).save(buf, format="PNG")
    return buf.getvalue()


class _Stub:
    """A resolver and an httpx transport that answer from tables and record what was asked."""

    def __init__(self, names: dict[str, list[str]], routes: dict[str, httpx.Response]) -> None:
        self.names, self.routes, self.requests = names, routes, []
        self.transport = httpx.MockTransport(self.handle)

    async def resolve(self, host: str, port: int) -> list[str]:
        if host not in self.names:
            raise socket.gaierror("no such host")
        return self.names[host]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.routes.get(f"{request.headers['host']}{request.url.path}", httpx.Response(404))


PUBLIC = "93.184.216.34"


def test_remote_images_only_from_public_addresses(engine):
    png = _png()
    stub = _Stub(
        names={"public.test": [PUBLIC], "internal.test": ["10.1.2.3"], "mixed.test": [PUBLIC, "192.168.0.9"],
               "meta.test": ["169.254.169.254"], "v6local.test": ["fe80::1"], "rebind.test": ["127.0.0.1"]},
        routes={"public.test/a.png": httpx.Response(200, content=png),
                "public.test/to-local": httpx.Response(302, headers={"location": "http://127.0.0.1:8000/a.png"}),
                "public.test/to-internal": httpx.Response(301, headers={"location": "http://internal.test/a.png"}),
                "public.test/to-public": httpx.Response(307, headers={"location": "/a.png"}),
                "public.test/loop": httpx.Response(302, headers={"location": "/loop"})})
    app = create_app(engine, model_name=MODEL, allow_remote_images=True, resolver=stub.resolve,
                     image_transport=stub.transport, worker=EngineWorker(engine))
    with LiveServer(app) as live:
        for url in ["http://public.test/a.png", "http://public.test/to-public", f"http://{PUBLIC}/a.png"]:
            stub.requests.clear()
            r = _post(live, {"model": MODEL, "messages": [image_message("What?", url)], "max_tokens": 4,
                             "temperature": 0})
            if url.endswith(f"{PUBLIC}/a.png"):  # an IP literal: no route in the table for that Host
                _assert_error(r, 400, None, "image_fetch_failed")
                continue
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == expected(engine, "What?",
                                                                            Image.open(io.BytesIO(png)), 4)
            # the connection goes to the checked address, the name travels in the Host header
            assert {q.url.host for q in stub.requests} == {PUBLIC}
            assert {q.headers["host"] for q in stub.requests} == {"public.test"}
        refused = ["http://127.0.0.1/a.png", "http://127.0.0.2:8000/a.png", "http://[::1]/a.png",
                   "http://[::ffff:127.0.0.1]/a.png", "http://[64:ff9b::7f00:1]/a.png", "http://2130706433/a.png",
                   "http://0.0.0.0/a.png", "http://10.0.0.1/a.png", "http://172.16.0.1/a.png",
                   "http://192.168.1.1/a.png", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/",
                   "http://[fd00::1]/a.png", "http://100.64.0.1/a.png", "http://224.0.0.1/a.png",
                   "http://internal.test/a.png", "http://mixed.test/a.png", "http://meta.test/a.png",
                   "http://v6local.test/a.png", "http://rebind.test/a.png", "http://nosuch.test/a.png",
                   "https://localhost/a.png", "http://user@127.0.0.1/a.png"]
        for url in refused:
            stub.requests.clear()
            err = _assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", url)]}), 400, None,
                                "image_fetch_failed")
            assert err["message"] == FETCH_FAILED and not stub.requests, url
        for path in ["/to-local", "/to-internal", "/loop", "/missing.png"]:
            stub.requests.clear()
            err = _assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", "http://public.test" +
                                                                                       path)]}), 400)
            assert err["message"] == FETCH_FAILED
            assert {q.url.host for q in stub.requests} <= {PUBLIC}  # the redirect target was never contacted


@pytest.mark.parametrize("ip,public", [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False),
                                       ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False), ("::", False),
                                       ("fe80::1%eth0", False), ("not-an-ip", False), ("::ffff:8.8.8.8", True)])
def test_public_address_rule(ip, public):
    assert is_public_address(ip) is public


def test_remote_failures_look_the_same_whatever_the_port_state(engine):
    """With private hosts allowed (loopback only here), a closed port, an open port answering 404 or 500 and a
    port that never answers all give one message."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    app = create_app(engine, model_name=MODEL, allow_remote_images=True, allow_private_image_hosts=True,
                     limits=ServeLimits(remote_timeout_s=0.5), worker=EngineWorker(engine))
    try:
        with LiveServer(app) as live:
            urls = [f"http://127.0.0.1:{closed_port}/a.png", f"http://127.0.0.1:{web.server_address[1]}/404",
                    f"http://127.0.0.1:{web.server_address[1]}/500", f"http://127.0.0.1:{silent.getsockname()[1]}/"]
            bodies = {json.dumps(_assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", u)]}),
                                               400)) for u in urls}
            assert len(bodies) == 1
    finally:
        web.shutdown()
        silent.close()
