"""Image URLs of chat requests -> decoded images, within limits.

`data:image/...;base64,...` is always accepted; `file://` only inside the image root (the resolved path,
symlinks followed, must lie inside it); `http(s)://` only when remote images are allowed, and then only from
public addresses unless private ones are allowed too: every address a host name resolves to is checked, the
connection goes to the checked address (no second lookup an attacker could answer differently), redirects
are followed by hand and checked the same way, and every failure gets the same message, so that the server
cannot be used to map a network.

Decoding is defended too: only common formats are opened, the pixel count and aspect ratio are checked from
the header before decoding, at most `max_concurrent_decodes` images are decoded at once, and each image is
shrunk to the model's input size (`ImageProcessor.fit`) as soon as it is decoded, so that a queued request
holds a few hundred kilobytes of pixels, whatever it sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vistune.serve.schemas import APIError, ServeLimits

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""The image formats a client may send (PIL's other plugins, some of which call external programs, stay off)."""

FETCH_FAILED = "the image could not be fetched from this URL"
"""The one message for every failure to fetch a remote image (refused address, connection, status, time)."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""(host, port) -> the IP addresses it resolves to."""


def decode_image(data: bytes, limits: ServeLimits, param: str,
                 fit: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """Bytes -> RGB image (EXIF orientation applied, 16-bit and CMYK converted, first frame of an animation),
    shrunk by `fit` when given; APIError (400) when undecodable or too large."""
    if len(data) > limits.max_image_bytes:
        raise APIError(400, f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}", param=param,
                       code="image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                w, h = im.size
                if w * h > limits.max_image_pixels:
                    raise APIError(400, f"image is {w}x{h} pixels; the limit is {limits.max_image_pixels} pixels",
                                   param=param, code="image_too_large")
                if w < 1 or h < 1 or max(w, h) > limits.max_aspect_ratio * min(w, h):
                    raise APIError(400, f"image is {w}x{h} pixels; the longer side may be at most "
                                   f"{limits.max_aspect_ratio} times the shorter", param=param,
                                   code="invalid_image")
                image = to_rgb(ImageOps.exif_transpose(im))
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError, IndexError,
            ZeroDivisionError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise APIError(400, f"the image cannot be decoded ({type(e).__name__})", param=param,
                       code="invalid_image") from None
    return fit(image) if fit is not None else image


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; 16/32-bit greyscale is scaled to 8 bits instead of being clipped to white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if values.size == 0 or values.max() <= 65535 else float(values.max())
        im = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")
    return im.convert("RGB")


def decode_data_url(url: str, limits: ServeLimits, param: str, fit=None) -> Image.Image:
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
    return decode_image(data, limits, param, fit)  # the declared media type is ignored: the bytes decide


def read_file_url(url: str, root: Path | None, limits: ServeLimits, param: str, fit=None) -> Image.Image:
    if root is None:
        raise APIError(400, "file:// image URLs are disabled (start the server with --image-root)", param=param,
                       code="image_url_not_allowed")
    not_found = APIError(400, "image file not found", param=param, code="image_not_found")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise APIError(400, "file:// URLs must name a local path", param=param, code="image_url_not_allowed")
    name = urllib.request.url2pathname(parsed.path)
    if "\0" in name:
        raise not_found
    path = Path(name)
    if not path.is_absolute():
        path = root / path
    try:
        resolved = path.resolve(strict=True)
        # the same answer as a missing file: do not reveal what exists outside the root
        if not resolved.is_relative_to(root) or not resolved.is_file():
            raise not_found
        if resolved.stat().st_size > limits.max_image_bytes:
            raise APIError(400, f"image is larger than {limits.max_image_bytes} bytes", param=param,
                           code="image_too_large")
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (OSError, RuntimeError, ValueError):
        raise not_found from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limits.max_image_bytes + 1)
    return decode_image(data, limits, param, fit)


# -------------------------------------------------------------------------------------------------
# remote images


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public_address(ip: str) -> bool:
    """Whether `ip` is a globally routable unicast address (IPv4 inside IPv6 forms is checked as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and addr in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


def is_usable_address(ip: str) -> bool:
    """Whether a client may fetch from `ip` at all (not multicast, unspecified or unparseable)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return not (addr.is_multicast or addr.is_unspecified)


class RemoteFetcher:
    """Downloads remote images within the limits, from allowed addresses only.

    `resolver` and `transport` (an httpx transport) can be replaced, which is how tests check the address
    rules without any connection leaving the machine."""

    REDIRECTS = (301, 302, 303, 307, 308)

    def __init__(self, limits: ServeLimits, allow_private: bool = False, resolver: Resolver | None = None,
                 transport=None, max_redirects: int = 3) -> None:
        self.limits = limits
        self.allow_private = allow_private
        self.resolver = resolver or system_resolver
        self.transport = transport
        self.max_redirects = max_redirects

    def allowed(self, ip: str) -> bool:
        return is_usable_address(ip) and (self.allow_private or is_public_address(ip))

    async def fetch(self, url: str, param: str) -> bytes:
        """The image's bytes; APIError (400) on any failure, with one message for all network failures."""
        try:
            return await asyncio.wait_for(self._fetch(url, param), self.limits.remote_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(400, FETCH_FAILED, param=param, code="image_fetch_failed") from None

    async def _fetch(self, url: str, param: str) -> bytes:
        import httpx

        failed = APIError(400, FETCH_FAILED, param=param, code="image_fetch_failed")
        async with httpx.AsyncClient(transport=self.transport, timeout=self.limits.remote_timeout_s,
                                     follow_redirects=False, trust_env=False) as client:
            for _ in range(self.max_redirects + 1):
                try:
                    target = httpx.URL(url)
                except (httpx.InvalidURL, TypeError, ValueError):
                    raise failed from None
                if target.scheme not in ("http", "https") or not target.host:
                    raise failed
                port = target.port or (443 if target.scheme == "https" else 80)
                ip = await self._checked_address(target.host, port, failed)
                headers = {"Host": target.netloc.decode("ascii"), "Accept": "image/*"}
                extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
                try:
                    async with client.stream("GET", target.copy_with(host=ip), headers=headers,
                                             extensions=extensions) as response:
                        if response.status_code in self.REDIRECTS and "location" in response.headers:
                            url = str(target.join(response.headers["location"]))
                            continue
                        if response.status_code != 200:
                            raise failed
                        return await self._read(response, param)
                except httpx.HTTPError:
                    raise failed from None
        raise failed  # too many redirects

    async def _checked_address(self, host: str, port: int, failed: APIError) -> str:
        try:
            ips = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                ips = await self.resolver(host, port)
            except (OSError, UnicodeError, ValueError):
                raise failed from None
        if not ips or not all(self.allowed(ip) for ip in ips):
            raise failed
        return ips[0]

    async def _read(self, response, param: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_image_bytes:
            raise APIError(400, f"image is larger than {self.limits.max_image_bytes} bytes", param=param,
                           code="image_too_large")
        chunks, total = [], 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self.limits.max_image_bytes:
                raise APIError(400, f"image is larger than {self.limits.max_image_bytes} bytes", param=param,
                               code="image_too_large")
            chunks.append(chunk)
        return b"".join(chunks)


class ImageLoader:
    """Resolves a request's image URLs to shrunk RGB images, decoding at most `max_concurrent_decodes` at once."""

    def __init__(self, limits: ServeLimits, root: Path | None = None, fetcher: RemoteFetcher | None = None,
                 fit: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.limits, self.root, self.fetcher, self.fit = limits, root, fetcher, fit
        self._decoding = threading.BoundedSemaphore(limits.max_concurrent_decodes)

    async def load(self, url: str, param: str) -> Image.Image:
        from starlette.concurrency import run_in_threadpool

        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return await run_in_threadpool(self._bounded, decode_data_url, url, self.limits, param, self.fit)
        if scheme == "file":
            return await run_in_threadpool(self._bounded, read_file_url, url, self.root, self.limits, param,
                                           self.fit)
        if scheme in ("http", "https"):
            if self.fetcher is None:
                raise APIError(400, "remote image URLs are disabled (start the server with --allow-remote-images)",
                               param=param, code="image_url_not_allowed")
            data = await self.fetcher.fetch(url, param)
            return await run_in_threadpool(self._bounded, decode_image, data, self.limits, param, self.fit)
        raise APIError(400, "image URLs must be data:, file:// or http(s):// URLs", param=param,
                       code="invalid_image_url")

    def _bounded(self, fn, *args):
        with self._decoding:
            return fn(*args)
