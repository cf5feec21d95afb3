"""Schema fuzzing of `/v1/chat/completions`: schemathesis generates bodies from the server's own OpenAPI
description (valid ones and ones that break it) and sends them to a live loopback server with a tiny model.
No answer may be a 5xx, every error must be in OpenAI's shape, valid bodies must be answered per the schema,
and invalid ones refused with a 4xx."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import (
    MODEL,
    LiveServer,
    engine,  # noqa: F401  (module fixture)
)

from vistune.inference.engine import EngineWorker
from vistune.serve.app import create_app
from vistune.serve.schemas import ServeLimits

FUZZ_EXAMPLES = 300
"""Generated requests per run (half valid, half invalid)."""

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzz_server(engine):  # noqa: F811
    limits = ServeLimits(max_tokens=8, default_max_tokens=4, max_request_bytes=1_000_000)
    app = create_app(engine, model_name=MODEL, limits=limits, worker=EngineWorker(engine))
    with LiveServer(app) as live:
        live.app = app
        yield live


def _check(response: httpx.Response, negative: bool, body) -> None:
    where = f"{response.status_code} for {json.dumps(body, default=str)[:300]}: {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) == ERROR_KEYS and isinstance(err["message"], str) and err["message"], where
        assert "Traceback" not in response.text, where
    elif negative:
        raise AssertionError(f"a body outside the schema was accepted: {where}")


@pytest.mark.slow
def test_schema_fuzzing_no_5xx_and_errors_in_openai_shape(fuzz_server):
    raw = fuzz_server.app.openapi()
    schema = schemathesis.openapi.from_dict(raw)
    operation = schema["/v1/chat/completions"]["POST"]
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategy = st.one_of(*[operation.as_strategy(generation_mode=m).map(lambda c, m=m: (m, c)) for m in modes])
    seen = {"positive": 0, "negative": 0, "answered": 0, "not_json": 0}
    client = httpx.Client(base_url=fuzz_server.url, timeout=60)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(item=strategy)
    def send(item):
        mode, case = item
        body = case.body
        try:
            content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):  # e.g. non-string keys: no JSON text to send
            seen["not_json"] += 1
            return
        negative = mode is schemathesis.GenerationMode.NEGATIVE
        seen["negative" if negative else "positive"] += 1
        response = client.post("/v1/chat/completions", content=content,
                               headers={"content-type": "application/json"})
        _check(response, negative and _breaks_schema(raw, body), body)
        if response.status_code == 200:
            seen["answered"] += 1
            if response.headers["content-type"].startswith("application/json"):
                case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
                assert response.json()["object"] == "chat.completion"
            else:
                assert response.text.rstrip().endswith("data: [DONE]")

    try:
        send()
    finally:
        client.close()
    print(f"fuzzed {sum(seen[k] for k in ('positive', 'negative'))} requests: {seen}")
    assert seen["positive"] + seen["negative"] >= FUZZ_EXAMPLES * 0.75
    assert seen["answered"] > 0  # some generated bodies were valid conversations and were answered


def _breaks_schema(raw: dict, body) -> bool:
    """Whether `body` really violates the request schema (a negative case can happen to be valid)."""
    import jsonschema_rs  # schemathesis's own validator

    request_schema = raw["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    return not jsonschema_rs.Draft202012Validator(request_schema["schema"]).is_valid(body)
