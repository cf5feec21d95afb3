"""The web chat page (`vistune serve --ui`): static HTML/JS/CSS from `static/`, no external resources.

The page calls the same `/v1/chat/completions` endpoint with `stream=true`, sending the whole conversation
(the uploaded image as a data URL in the first user message) on every turn.
"""

from __future__ import annotations

from importlib import resources

from vistune.serve.schemas import APIError

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
"""The page's files and their media types (nothing else is served from static/)."""

CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'")


def static_text(name: str) -> str:
    return resources.files("vistune.serve").joinpath("static", name).read_text(encoding="utf-8")


def add_ui(app, model_name: str) -> None:
    from fastapi.responses import Response

    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(static_text("index.html"), media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_FILES:
            raise APIError(404, "not found", code="not_found")
        return Response(static_text(name), media_type=f"{STATIC_FILES[name]}; charset=utf-8", headers=headers)
