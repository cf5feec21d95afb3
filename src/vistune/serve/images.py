"""Image URLs of chat requests -> decoded images, within limits.

`data:image/...;base64,...` is always accepted; `file://` only inside the image root (the resolved path,
symlinks followed, must lie inside it); `http(s)://` only when remote images are allowed, with a byte limit
and a time limit. The pixel count is checked from the header before decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vistune.serve.schemas import APIError, ServeLimits


def decode_image(data: bytes, limits: ServeLimits, param: str) -> Image.Image:
    """Bytes -> RGB image; APIError (400) when undecodable or too large."""
    if len(data) > limits.max_image_bytes:
        raise APIError(400, f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}", param=param,
                       code="image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > limits.max_image_pixels:
                raise APIError(400, f"image is {im.width}x{im.height} pixels; the limit is "
                               f"{limits.max_image_pixels} pixels", param=param, code="image_too_large")
            return im.convert("RGB")
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise APIError(400, f"the image cannot be decoded ({type(e).__name__})", param=param,
                       code="invalid_image") from None


def decode_data_url(url: str, limits: ServeLimits, param: str) -> Image.Image:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise APIError(400, "data URLs must look like data:image/<type>;base64,<data>", param=param,
                       code="invalid_image_url")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
        raise APIError(400, f"image is larger than {limits.max_image_bytes} bytes", param=param,
                       code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data URL is not valid base64", param=param, code="invalid_image_url") from None
    return decode_image(data, limits, param)


def read_file_url(url: str, root: Path | None, limits: ServeLimits, param: str) -> Image.Image:
    if root is None:
        raise APIError(400, "file:// image URLs are disabled (start the server with --image-root)", param=param,
                       code="image_url_not_allowed")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise APIError(400, "file:// URLs must name a local path", param=param, code="image_url_not_allowed")
    path = Path(urllib.request.url2pathname(parsed.path))
    if not path.is_absolute():
        path = root / path
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise APIError(400, "image file not found", param=param, code="image_not_found") from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        # the same answer as a missing file: do not reveal what exists outside the root
        raise APIError(400, "image file not found", param=param, code="image_not_found")
    if resolved.stat().st_size > limits.max_image_bytes:
        raise APIError(400, f"image is larger than {limits.max_image_bytes} bytes", param=param,
                       code="image_too_large")
    fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limits.max_image_bytes + 1)
    return decode_image(data, limits, param)


async def fetch_remote(url: str, limits: ServeLimits, param: str) -> bytes:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=limits.remote_timeout_s, follow_redirects=True,
                                     max_redirects=3) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise APIError(400, f"fetching the image failed with HTTP {response.status_code}", param=param,
                                   code="image_fetch_failed")
                chunks, total = [], 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > limits.max_image_bytes:
                        raise APIError(400, f"image is larger than {limits.max_image_bytes} bytes", param=param,
                                       code="image_too_large")
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.TimeoutException:
        raise APIError(400, f"fetching the image took longer than {limits.remote_timeout_s} s", param=param,
                       code="image_fetch_failed") from None
    except httpx.HTTPError as e:
        raise APIError(400, f"fetching the image failed ({type(e).__name__})", param=param,
                       code="image_fetch_failed") from None
