"""Images from clients: bombs, broken files, animations, CMYK, 16-bit, EXIF rotation, odd data URLs, file://
escapes. Each gets a 4xx or is handled like the same picture given to the engine directly, and what a queued
request holds is the model's input size, however large the image sent."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from test_inference import random_image
from test_serve import engine, image_root, server  # noqa: F401  (module fixtures)
from test_serve import MODEL, LiveServer, _assert_error, _post, data_url, expected, image_message
from vistune.inference.engine import Engine, EngineWorker
from vistune.serve.app import create_app
from vistune.serve.images import ImageLoader, decode_image
from vistune.serve.schemas import APIError, ServeLimits

LIMITS = ServeLimits()


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ask(live, url: str, **kw):
    return _post(live, {"model": MODEL, "messages": [image_message("What?", url)], "max_tokens": 5,
                        "temperature": 0, **kw})


def answer(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_formats_and_modes_are_answered_like_the_decoded_picture(server, engine):  # noqa: F811
    base = random_image(41, (64, 48))
    frames = [base, random_image(42, (64, 48))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    cmyk = encode(base.convert("CMYK"), "JPEG", quality=95)
    wide = np.random.default_rng(3).integers(0, 65536, (48, 64), dtype=np.uint16)
    sixteen = encode(Image.fromarray(wide))
    cases = {
        "animated gif (first frame)": (gif.getvalue(), Image.open(io.BytesIO(gif.getvalue())).convert("RGB")),
        "cmyk jpeg": (cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB")),
        "16-bit greyscale": (sixteen, Image.fromarray((wide / 257).round().astype(np.uint8)).convert("RGB")),
        "rgba png": (encode(base.convert("RGBA")), base),
        "palette png": (encode(base.convert("P")), base.convert("P").convert("RGB")),
        "webp": (encode(base, "WEBP", lossless=True), base),
    }
    for name, (data, picture) in cases.items():
        assert answer(ask(server, data_url(data))) == expected(engine, "What?", picture, 5), name
    # the declared media type is ignored: the bytes decide
    assert answer(ask(server, data_url(encode(base), "gif"))) == expected(engine, "What?", base, 5)


def test_sixteen_bit_is_scaled_not_clipped():
    grey = np.full((20, 30), 30000, dtype=np.uint16)
    image = decode_image(encode(Image.fromarray(grey)), LIMITS, "p")
    assert image.mode == "RGB" and set(np.asarray(image).ravel().tolist()) == {round(30000 / 257)}


def test_exif_orientation_is_applied():
    picture = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image = decode_image(encode(picture, "JPEG", exif=exif.tobytes()), LIMITS, "p")
    assert image.size == (20, 40)


@pytest.mark.parametrize("name,data,code", [
    ("truncated png", encode(random_image(5, (64, 64)))[:300], "invalid_image"),
    ("truncated jpeg", encode(random_image(5, (64, 64)), "JPEG")[:400], "invalid_image"),
    ("random bytes", bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "invalid_image"),
    ("empty", b"", "invalid_image"),
    ("png signature only", b"\x89PNG\r\n\x1a\n", "invalid_image"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "invalid_image"),
    ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "invalid_image"),
    ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\n", "invalid_image"),
    ("bomb 9000x9000", encode(Image.new("1", (9000, 9000))), "image_too_large"),
    ("sliver 40000x1", encode(Image.new("L", (40000, 1))), "invalid_image"),
    ("too many bytes", b"\x89PNG" + b"\0" * (LIMITS.max_image_bytes + 1), "image_too_large"),
])
def test_bad_images_are_400(name, data, code):
    with pytest.raises(APIError) as e:
        decode_image(data, LIMITS, "p")
    assert e.value.status == 400 and e.value.code == code, name


@pytest.mark.parametrize("url,code", [
    ("data:image/png;base64,@@@@", "invalid_image_url"),
    ("data:image/png;base64,AAA", "invalid_image_url"),  # bad padding
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "invalid_image_url"),
    ("data:image/png," + "x" * 10, "invalid_image_url"),  # not base64
    ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "invalid_image"),
])
def test_bad_data_urls_are_400(server, url, code):  # noqa: F811
    _assert_error(ask(server, url), 400, None, code)


class _SizeRecordingEngine(Engine):
    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.sizes: list[tuple[int, int]] = []

    def check(self, request):
        self.sizes += [im.size for im in request.images]
        return super().check(request)


def test_large_images_are_shrunk_before_queueing_with_the_same_answer(engine):  # noqa: F811
    recording = _SizeRecordingEngine(engine.model)
    crop = engine.model.image_processor.config.crop_size
    big = random_image(51, (1600, 1200))
    bomb = encode(Image.new("L", (6000, 6000), 128))  # 36 M pixels in a few kilobytes
    assert len(bomb) < 200_000
    app = create_app(recording, model_name=MODEL, worker=EngineWorker(recording))
    with LiveServer(app) as live:
        assert answer(ask(live, data_url(big))) == expected(engine, "What?", big, 5)
        answer(ask(live, data_url(bomb)))
    assert recording.sizes == [(crop, crop), (crop, crop)]


def test_decoding_is_bounded_in_concurrency():
    limits = ServeLimits(max_concurrent_decodes=2)
    active, peak, lock = [0], [0], threading.Lock()

    def fit(image):  # runs inside the decode slot
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.05)
        with lock:
            active[0] -= 1
        return image.resize((8, 8))

    loader = ImageLoader(limits, fit=fit)
    url = data_url(encode(random_image(9, (300, 300))))

    async def many():
        return await asyncio.gather(*[loader.load(url, "p") for _ in range(10)])

    images = asyncio.run(many())
    assert [im.size for im in images] == [(8, 8)] * 10 and peak[0] == 2


def test_file_urls_cannot_leave_the_image_root(server, image_root, tmp_path_factory):  # noqa: F811
    outside = tmp_path_factory.mktemp("outside2")
    random_image(13).save(outside / "secret.png")
    (image_root / "dirlink").symlink_to(outside, target_is_directory=True)
    inside = image_root / "pics" / "inside.png"
    escapes = [(image_root / "dirlink" / "secret.png").as_uri(),
               f"file://{image_root}/pics/%2e%2e/%2e%2e/{outside.name}/secret.png",
               f"file://{image_root}/pics/..%2f..%2f{outside.name}%2fsecret.png",
               f"file:{image_root}/../{outside.name}/secret.png", f"file:../{outside.name}/secret.png",
               f"file://localhost{outside}/secret.png", f"file://{image_root}/pics", f"file://{image_root}/",
               "file:///proc/self/environ", "file:///dev/zero"]
    for url in escapes:
        err = _assert_error(ask(server, url), 400)
        assert str(outside) not in err["message"] and str(image_root) not in err["message"], url
    assert answer(ask(server, inside.as_uri())) == expected(engine_of(server), "What?",
                                                            Image.open(inside).convert("RGB"), 5)
    assert answer(ask(server, "file:pics/inside.png")) == answer(ask(server, inside.as_uri()))  # relative to the root


def engine_of(live) -> Engine:
    return live.app.state.engine
