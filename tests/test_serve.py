"""`vistune serve`: the OpenAI-compatible API driven with the official openai client over real loopback HTTP,
with a tiny random checkpoint: answers, streaming, concurrency, disconnects, image URL rules, bad requests."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image
from test_inference import GOOD_IMAGES, chatty_tiny_vlm, random_image

from vistune.inference.engine import Engine, EngineWorker, Request
from vistune.inference.generate import SamplingParams
from vistune.model.checkpoint import load_checkpoint, save_checkpoint
from vistune.serve.app import create_app
from vistune.serve.schemas import ServeLimits

MODEL = "tiny-chatty"


class LiveServer:
    """uvicorn serving `app` in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0,
                             timeout=kw.pop("timeout", 120), **kw)


def data_url(image: Image.Image | bytes, kind: str = "png") -> str:
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    return f"data:image/{kind};base64," + base64.b64encode(image).decode()


def image_message(text: str, url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = save_checkpoint(chatty_tiny_vlm(), tmp_path_factory.mktemp("serve") / MODEL)
    return Engine(load_checkpoint(path), max_batch_size=16)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "pics").mkdir()
    random_image(11).save(root / "pics" / "inside.png")
    outside = tmp_path_factory.mktemp("outside")
    random_image(12).save(outside / "secret.png")
    (root / "pics" / "link.png").symlink_to(outside / "secret.png")
    return root


@pytest.fixture(scope="module")
def server(engine, image_root):
    app = create_app(engine, model_name=MODEL, image_root=image_root, limits=ServeLimits(max_image_bytes=200_000))
    with LiveServer(app) as live:
        live.app = app
        yield live


def expected(engine: Engine, question: str, image: Image.Image | None, max_tokens: int, **kw) -> str:
    return engine.generate([Request.of(question, image, params=SamplingParams(max_new_tokens=max_tokens, **kw))])[0].text


def test_chat_completion_with_image_and_usage(server, engine):
    image = random_image(1)
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=[image_message("What is in the image?", data_url(image))],
                                       temperature=0, max_tokens=12)
    want = engine.generate([Request.of("What is in the image?", image, max_new_tokens=12)])[0]
    assert r.choices[0].message.content == want.text and want.text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == want.prompt_tokens > engine.model.num_image_tokens
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == want.prompt_tokens + 12
    assert r.model == MODEL


def test_streaming_matches_non_streaming_and_ends_with_done(server, engine):
    image = random_image(2)
    messages = [image_message("Describe it.", data_url(image)), {"role": "assistant", "content": "A picture."},
                {"role": "user", "content": "More detail?"}]
    client = server.client()
    plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10)
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 == plain.usage.completion_tokens
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_temperature_zero_is_greedy_not_the_default(server, engine):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}
    answers = {httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
               ["content"] for _ in range(3)}
    assert answers == {expected(engine, "Say hello.", None, 8)}


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == [MODEL]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_sixteen_concurrent_clients_all_answered_and_batched(server, engine):
    questions = [f"Question number {i}: what do you see?" + " Really?" * (i % 5) for i in range(16)]
    images = [random_image(100 + i) if i % 2 else None for i in range(16)]
    worker: EngineWorker = server.app.state.worker
    worker.stats.max_rows = 0
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        content = image_message(questions[i], data_url(images[i])) if images[i] else {"role": "user",
                                                                                         "content": questions[i]}
        stream = i % 4 == 0
        r = server.client().chat.completions.create(model=MODEL, messages=[content], temperature=0, max_tokens=8,
                                                    stream=stream)
        results[i] = "".join(c.choices[0].delta.content or "" for c in r) if stream else r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(results) == list(range(16))
    reference = engine.generate([Request.of(q, im, max_new_tokens=8) for q, im in zip(questions, images)])
    assert [results[i] for i in range(16)] == [c.text for c in reference]
    assert worker.stats.max_rows > 1  # concurrent requests shared a batch


def test_client_disconnect_stops_its_generation(server):
    worker: EngineWorker = server.app.state.worker
    before = worker.stats.finished["cancelled"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk forever."}], "max_tokens": 4000,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 3:
                break
    deadline = time.time() + 30
    while worker.stats.finished["cancelled"] == before and time.time() < deadline:
        time.sleep(0.05)
    reason, tokens = worker.stats.last
    assert reason == "cancelled" and tokens < 4000
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200


def _post(server, body, **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + "/v1/chat/completions", content=content, timeout=60,
                      headers={"content-type": "application/json", **kw.pop("headers", {})})


def _assert_error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text and "File \"" not in r.text
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


USER = [{"role": "user", "content": "Hi"}]
TINY_PNG = data_url(random_image(7, (8, 8)))


@pytest.mark.parametrize("body,status,param,code", [
    (b"{not json", 400, None, "invalid_json"),
    ({"model": MODEL}, 400, "messages", "missing_required_parameter"),
    ({"model": MODEL, "messages": []}, 400, "messages", None),
    ({"model": MODEL, "messages": "hello"}, 400, "messages", None),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", None),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", None),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     400, "messages[0].content[0].type", "unsupported_content_type"),
    ({"model": MODEL, "messages": [image_message("x", "data:image/png;base64,AAAA")]}, 400,
     "messages[0].content[0].image_url", "invalid_image"),
    ({"model": MODEL, "messages": [image_message("x", "data:image/png;base64,@@@")]}, 400, None, "invalid_image_url"),
    ({"model": MODEL, "messages": [image_message("x", "data:text/html;base64,AAAA")]}, 400, None, "invalid_image_url"),
    ({"model": MODEL, "messages": [image_message("x", "ftp://host/a.png")]}, 400, None, "invalid_image_url"),
    ({"model": MODEL, "messages": [image_message("x", TINY_PNG), image_message("y", TINY_PNG)]}, 400, None,
     "too_many_images"),
    ({"model": MODEL, "messages": USER, "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": MODEL, "messages": USER, "max_tokens": 10**9}, 400, "max_tokens", None),
    ({"model": MODEL, "messages": USER, "max_tokens": "12"}, 400, "max_tokens", None),
    ({"model": MODEL, "messages": USER, "temperature": -0.5}, 400, "temperature", None),
    ({"model": MODEL, "messages": USER, "temperature": True}, 400, "temperature", None),
    ({"model": MODEL, "messages": USER, "top_p": 0}, 400, "top_p", None),
    ({"model": MODEL, "messages": USER, "n": 2}, 400, "n", None),
    ({"model": MODEL, "messages": USER, "stop": [1]}, 400, "stop", None),
    ({"model": MODEL, "messages": USER, "stream": "yes"}, 400, "stream", None),
    ({"model": "gpt-4o", "messages": USER}, 404, "model", "model_not_found"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 6000}]}, 400, None, None),
    ([1, 2, 3], 400, None, None),
])
def test_bad_requests_get_openai_errors_and_the_server_survives(server, body, status, param, code):
    _assert_error(_post(server, body), status, param, code)
    assert _post(server, {"model": MODEL, "messages": USER, "max_tokens": 2}).status_code == 200


def test_oversized_images_are_rejected(server):
    big_bytes = data_url(b"\x89PNG" + b"\0" * 300_000)
    _assert_error(_post(server, {"model": MODEL, "messages": [image_message("x", big_bytes)]}), 400, None,
                  "image_too_large")
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 M pixels in a few kilobytes
    assert len(buf.getvalue()) < 200_000
    _assert_error(_post(server, {"model": MODEL, "messages": [image_message("x", data_url(buf.getvalue()))]}), 400,
                  None, "image_too_large")
    too_long = b"{" + b" " * (17 * 1024 * 1024) + b"}"
    _assert_error(_post(server, too_long), 413, None, "request_too_large")
    assert _post(server, {"model": MODEL, "messages": USER, "max_tokens": 2}).status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_shape(server):
    _assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    _assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_file_urls_only_inside_the_image_root(server, engine, image_root):
    inside = image_root / "pics" / "inside.png"
    r = _post(server, {"model": MODEL, "messages": [image_message("What?", inside.as_uri())], "max_tokens": 6,
                       "temperature": 0})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == expected(engine, "What?", Image.open(inside).convert("RGB"), 6)
    for url in [(image_root / "pics" / "link.png").as_uri(),  # a symlink pointing outside
                f"file://{image_root}/pics/../../{Path(image_root).parent.name}/x.png",
                "file:///etc/passwd", (image_root / "pics" / "missing.png").as_uri(),
                "file://otherhost/etc/passwd"]:
        err = _assert_error(_post(server, {"model": MODEL, "messages": [image_message("x", url)]}), 400)
        assert str(image_root) not in err["message"]


def test_file_and_remote_urls_are_off_by_default(engine):
    app = create_app(engine, model_name=MODEL, worker=EngineWorker(engine))
    with LiveServer(app) as live:
        url = GOOD_IMAGES[0].as_uri()
        _assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", url)]}), 400, None,
                      "image_url_not_allowed")
        _assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", "http://127.0.0.1:9/a.png")]}),
                      400, None, "image_url_not_allowed")


class _ImageHandler(BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(3)
        body = self.payload if self.path != "/big.png" else b"\0" * 500_000
        self.send_response(200 if self.path != "/404.png" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_remote_images_with_limits(engine):
    buf = io.BytesIO()
    image = random_image(21)
    image.save(buf, format="PNG")
    _ImageHandler.payload = buf.getvalue()
    images = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    app = create_app(engine, model_name=MODEL, allow_remote_images=True, allow_private_image_hosts=True,
                     worker=EngineWorker(engine), limits=ServeLimits(max_image_bytes=200_000, remote_timeout_s=1.0))
    try:
        with LiveServer(app) as live:
            r = _post(live, {"model": MODEL, "messages": [image_message("What?", base + "/a.png")], "max_tokens": 5,
                             "temperature": 0})
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == expected(engine, "What?", image, 5)
            for path, code in [("/big.png", "image_too_large"), ("/slow.png", "image_fetch_failed"),
                               ("/404.png", "image_fetch_failed")]:
                t = time.time()
                _assert_error(_post(live, {"model": MODEL, "messages": [image_message("x", base + path)]}), 400,
                              None, code)
                assert time.time() - t < 2.5
    finally:
        images.shutdown()


def test_api_key_required_when_set(engine):
    app = create_app(engine, model_name=MODEL, api_key="s3cret", worker=EngineWorker(engine))
    with LiveServer(app) as live:
        with pytest.raises(openai.AuthenticationError):
            live.client(api_key="wrong").chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        _assert_error(httpx.get(live.url + "/v1/models"), 401, None, "invalid_api_key")
        r = live.client(api_key="s3cret").chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
        assert r.usage.completion_tokens == 2
        assert httpx.get(live.url + "/health").status_code == 200


class _FailingEngine(Engine):
    def prepare(self, requests):
        raise RuntimeError("secret internal detail /opt/weights")


def test_unexpected_errors_are_500_without_internals(engine):
    broken = _FailingEngine(engine.model)
    app = create_app(broken, model_name=MODEL)
    with LiveServer(app) as live:
        for stream in (False, True):
            r = _post(live, {"model": MODEL, "messages": USER, "max_tokens": 2, "stream": stream})
            err = _assert_error(r, 500)
            assert err["type"] == "server_error" and "secret" not in r.text


def test_serve_command_refuses_a_missing_key_variable(tmp_path, monkeypatch, capsys):
    from vistune.cli import main

    monkeypatch.delenv("VISTUNE_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--model", str(tmp_path), "--api-key-env", "VISTUNE_TEST_NO_SUCH_KEY"]) == 2
    assert "VISTUNE_TEST_NO_SUCH_KEY" in capsys.readouterr().err


@pytest.mark.slow
def test_vistune_serve_command_in_a_subprocess(engine, tmp_path):
    import os
    import subprocess
    import sys

    checkpoint = save_checkpoint(engine.model, tmp_path / "served")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "VISTUNE_TEST_KEY": "k-123"}
    proc = subprocess.Popen([sys.executable, "-m", "vistune", "serve", "--model", str(checkpoint), "--port", str(port),
                             "--ui", "--api-key-env", "VISTUNE_TEST_KEY", "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
        assert "<title>vistune chat</title>" in httpx.get(url + "/").text
        assert "/v1/chat/completions" in httpx.get(url + "/static/app.js").text
        client = openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0)
        r = client.chat.completions.create(model="served", messages=[image_message("What?", TINY_PNG)],
                                           temperature=0, max_tokens=4)
        image = Image.open(io.BytesIO(base64.b64decode(TINY_PNG.split(",", 1)[1]))).convert("RGB")
        assert r.choices[0].message.content == expected(engine, "What?", image, 4)
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)


def test_several_images_in_one_or_several_messages_up_to_max_images(engine):
    from vistune.conversation import Message

    a, b, c = random_image(31), random_image(32, (40, 56)), random_image(33)
    app = create_app(engine, model_name=MODEL, limits=ServeLimits(max_images=2))
    params = SamplingParams(max_new_tokens=8)

    def image_part(image):
        return {"type": "image_url", "image_url": {"url": data_url(image)}}

    cases = [  # (messages, vistune's conversation with <image> at each part's place, images)
        ([{"role": "user", "content": [image_part(a), {"type": "text", "text": "Compare with"}, image_part(b)]}],
         [Message("user", "<image>\nCompare with\n<image>")], [a, b]),
        ([image_message("What is it?", data_url(b)), {"role": "assistant", "content": "A thing."},
          image_message("And this?", data_url(a))],
         [Message("user", "<image>\nWhat is it?"), Message("assistant", "A thing."),
          Message("user", "<image>\nAnd this?")], [b, a]),
    ]
    with LiveServer(app) as live:
        answers = []
        for messages, conversation, images in cases:
            r = _post(live, {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8})
            assert r.status_code == 200, r.text
            want = engine.generate([Request(conversation, images, params)])[0]
            assert r.json()["choices"][0]["message"]["content"] == want.text and want.text
            assert r.json()["usage"]["prompt_tokens"] == want.prompt_tokens > 2 * engine.model.num_image_tokens
            answers.append(want.text)
        swapped = engine.generate([Request(cases[1][1], [a, b], params)])[0].text
        assert swapped != answers[1]  # the order of the images shows in the answer
        three = [{"role": "user", "content": [image_part(a), {"type": "text", "text": "and"}, image_part(b)]},
                 {"role": "assistant", "content": "Two."}, image_message("And this?", data_url(c))]
        _assert_error(_post(live, {"model": MODEL, "messages": three}), 400, "messages[2].content[0]",
                      "too_many_images")
        assert _post(live, {"model": MODEL, "messages": USER, "max_tokens": 2}).status_code == 200


def test_serve_command_passes_max_images(engine, tmp_path, monkeypatch, capsys):
    import uvicorn

    from vistune.cli import main

    seen = {}
    monkeypatch.setattr("vistune.cli.use.load_engine", lambda args: engine)
    monkeypatch.setattr("vistune.serve.app.create_app", lambda engine, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    assert main(["serve", "--model", str(tmp_path), "--max-images", "3"]) == 0
    assert seen["app"] == "app" and seen["limits"].max_images == 3
    assert main(["serve", "--model", str(tmp_path)]) == 0 and seen["limits"].max_images == ServeLimits().max_images
    assert main(["serve", "--model", str(tmp_path), "--max-images", "-1"]) == 2
    assert "--max-images" in capsys.readouterr().err
