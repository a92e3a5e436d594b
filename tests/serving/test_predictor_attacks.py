"""Attacks on the predictor, replayed against a real one on 127.0.0.1: each must be refused, with its reason.

Schemas that reach out ($ref to a URL, a file, a server that never answers), schemas
nested past the stack, images whose pixels add up past the request's budget, bodies
past the size limit on routes that are not inference routes, v2 binary bodies whose
declared sizes lie, and the log noise a client can cause.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from engine.predictor_process import PredictorProcess
from engine.structured import MAX_SCHEMA_DEPTH

OUTSIDE = "points outside the schema"


@dataclass
class Listener:
    """A real HTTP server on 127.0.0.1 serving a JSON schema, recording every request it receives."""

    url: str
    paths: list[str] = field(default_factory=list)


@pytest.fixture()
def listener() -> Iterator[Listener]:
    found = Listener(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            found.paths.append(self.path)
            body = json.dumps({"type": "integer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture()
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; (its URL, the connections it got)."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listening.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listening.getsockname()[1]}", accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listening.close()


def v1(url: str, instances: list[dict], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/llava:predict", json={"instances": instances}, timeout=timeout)


def v2(url: str, images: list[str], requests: list[dict]) -> httpx.Response:
    body = {"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images},
        {"name": "request", "datatype": "BYTES", "shape": [len(requests)], "data": [json.dumps(r) for r in requests]},
    ]}
    return httpx.post(f"{url}/v2/models/llava/infer", json=body, timeout=60)


def chat(url: str, image_b64: str, schema: dict) -> httpx.Response:
    body = {
        "model": "llava",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is shown?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
        ]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        "max_tokens": 8,
    }
    return httpx.post(f"{url}/openai/v1/chat/completions", json=body, timeout=60)


def error_of(response: httpx.Response) -> str:
    """The error message, whichever route's format (KServe's or OpenAI's)."""
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def send_schema(route: str, url: str, image_b64: str, schema: dict) -> httpx.Response:
    options = {"task": "json", "instruction": "What is shown?", "schema": schema, "max_new_tokens": 8}
    if route == "v1":
        return v1(url, [{"image": {"b64": image_b64}, **options}])
    if route == "v2":
        return v2(url, [image_b64], [options])
    return chat(url, image_b64, schema)


def log_since(predictor: PredictorProcess, offset: int) -> str:
    return predictor.log_path.read_bytes()[offset:].decode(errors="replace")


ROUTES = ["v1", "v2", "openai"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("where", ["root", "nested", "defs"])
def test_a_ref_to_a_url_is_refused_and_never_fetched(predictor, listener, png, b64, route, where):
    ref = f"{listener.url}/schema.json"
    schema = {
        "root": {"$ref": ref},
        "nested": {"type": "object", "properties": {"a": {"$ref": ref}}},
        "defs": {"$defs": {"a": {"$ref": ref}}, "$ref": "#/$defs/a"},
    }[where]
    response = send_schema(route, predictor.url, b64(png()), schema)
    assert response.status_code == 400, response.text
    assert ref in error_of(response) and OUTSIDE in error_of(response)
    assert listener.paths == []


@pytest.mark.parametrize("route", ROUTES)
def test_a_ref_to_a_local_file_is_refused_without_reading_it(predictor, tmp_path, png, b64, route):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"type": "string", "description": "TOP-SECRET-CONTENT"}))
    response = send_schema(route, predictor.url, b64(png()), {"$ref": secret.as_uri()})
    assert response.status_code == 400, response.text
    assert OUTSIDE in error_of(response) and secret.as_uri() in error_of(response)
    assert "TOP-SECRET-CONTENT" not in response.text


def test_a_schema_naming_a_remote_metaschema_fetches_nothing(predictor, listener, png, b64):
    schema = {"$schema": f"{listener.url}/meta.json", "type": "object"}
    response = v1(predictor.url, [{"image": {"b64": b64(png())}, "task": "json", "schema": schema, "max_new_tokens": 8}])
    assert response.status_code == 200, response.text
    assert listener.paths == []


def test_a_ref_to_a_server_that_never_answers_blocks_nothing(predictor, silent_server, png, b64):
    url, connections = silent_server
    started = time.monotonic()
    ref = {"$ref": f"{url}/s.json"}
    refused = v1(predictor.url, [{"image": {"b64": b64(png())}, "task": "json", "instruction": "Shape?", "schema": ref}], timeout=20)
    assert refused.status_code == 400 and OUTSIDE in refused.json()["error"]
    later = v1(predictor.url, [{"image": {"b64": b64(png())}, "max_new_tokens": 2}], timeout=20)
    assert later.status_code == 200, later.text
    assert time.monotonic() - started < 20
    assert connections == []


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("depth", [MAX_SCHEMA_DEPTH + 1, 505])
def test_a_schema_nested_past_the_limit_is_a_400(predictor, png, b64, route, depth):
    schema: dict = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    response = send_schema(route, predictor.url, b64(png()), schema)
    assert response.status_code == 400, response.text
    reasons = [f"nests deeper than {MAX_SCHEMA_DEPTH} levels"]
    if depth > 200 and route != "v1":  # pydantic's JSON parser (v2 options, OpenAI bodies) stops at depth 200 first
        reasons.append("recursion limit exceeded")
    assert any(reason in error_of(response) for reason in reasons), response.text


def solid_png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, "PNG")
    return buffer.getvalue()


def header_only(size: tuple[int, int]) -> str:
    """Base64 of a PNG cut off just after its header: its size reads, its pixels never decode."""
    return base64.b64encode(solid_png(size)[:60]).decode()


BUDGET = 2_000_000


@pytest.fixture(scope="module")
def budget_predictor(tiny_model_dir, tmp_path_factory) -> Iterator[PredictorProcess]:
    """A predictor whose per-request pixel budget (2 MP) is below what a few allowed images (4 MP each) hold."""
    env = {
        "LLAVA_LABELER_IMAGES__MAX_PIXELS": str(4_000_000),
        "LLAVA_LABELER_IMAGES__MAX_REQUEST_PIXELS": str(BUDGET),
        "LLAVA_LABELER_SERVING__MAX_WAIT_MS": "5",
    }
    log = tmp_path_factory.mktemp("budget-predictor") / "server.log"
    with PredictorProcess(tiny_model_dir, env=env, log_path=log) as server:
        yield server


def test_images_over_the_request_pixel_budget_are_refused_from_their_headers(budget_predictor):
    # Three 1000x800 "images" that are only headers: decoding them would fail, so a 413 proves nothing was decoded.
    image = header_only((1000, 800))
    for response in (
        v1(budget_predictor.url, [{"image": {"b64": image}}] * 3),
        v2(budget_predictor.url, [image] * 3, [{}] * 3),
    ):
        assert response.status_code == 413, response.text
        message = response.json()["error"]
        assert "2,400,000 pixels" in message and "2,000,000-pixel limit" in message
        assert "LLAVA_LABELER_IMAGES__MAX_REQUEST_PIXELS" in message


def test_one_chat_image_over_the_budget_is_a_413_openai_error(budget_predictor):
    response = chat(budget_predictor.url, header_only((1500, 1500)), {"type": "object"})
    assert response.status_code == 413, response.text
    assert "LLAVA_LABELER_IMAGES__MAX_REQUEST_PIXELS" in response.json()["error"]["message"]


def test_images_within_the_budget_are_served(budget_predictor):
    image = base64.b64encode(solid_png((1000, 900))).decode()
    response = v1(budget_predictor.url, [{"image": {"b64": image}, "max_new_tokens": 2}] * 2)
    assert response.status_code == 200, response.text
    assert [p["tokens"] for p in response.json()["predictions"]] == [2, 2]


def test_an_image_corrupt_past_its_header_is_that_items_failure(budget_predictor):
    # Only the header is read before queueing; the engine's one decode finds the damage and fails that item alone.
    good = base64.b64encode(solid_png((64, 48))).decode()
    broken = header_only((64, 48))
    response = v1(budget_predictor.url, [{"image": {"b64": good}, "max_new_tokens": 2}, {"image": {"b64": broken}}])
    assert response.status_code == 200, response.text
    ok, failed = response.json()["predictions"]
    assert ok["error"] is None and failed["finish_reason"] == "error"
    assert "corrupt or truncated image" in failed["error"]


NOT_INFERENCE = [
    ("POST", "/v1/models/llava:explain"),
    ("POST", "/v2/repository/models/llava/load"),
    ("POST", "/v2/models/llava/infer"),
    ("POST", "/openai/v1/models"),
    ("PUT", "/no/such/route"),
]


@pytest.mark.parametrize("method, path", NOT_INFERENCE, ids=[path for _, path in NOT_INFERENCE])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_the_body_limit_holds_on_every_route(predictor, method, path, framing):
    body = b"x" * (3 * 1024 * 1024)  # the test predictor's limit is 2 MiB
    content = body if framing == "content-length" else (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = httpx.request(method, f"{predictor.url}{path}", content=content, timeout=60)
    assert response.status_code == 413, response.text
    assert "LLAVA_LABELER_SERVING__MAX_REQUEST_BYTES" in response.json()["error"]


def binary_v2(url: str, image: bytes, *, declared_size: int | None = None, header_length: str | None = None) -> httpx.Response:
    """A v2 request in the binary extension: JSON header, then the BYTES tensor (4-byte length + data)."""
    blob = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1],
         "parameters": {"binary_data_size": len(blob) if declared_size is None else declared_size}},
        {"name": "request", "datatype": "BYTES", "shape": [1], "data": [json.dumps({"max_new_tokens": 2})]},
    ]}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)) if header_length is None else header_length,
    }
    return httpx.post(f"{url}/v2/models/llava/infer", content=header + blob, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "lie, fragment",
    [
        (dict(declared_size=99_999), "binary_data_size add up to 99,999 bytes"),
        (dict(declared_size=2), "binary_data_size add up to 2 bytes"),
        (dict(declared_size=-1), "binary_data_size, a byte count"),
        (dict(header_length="abc"), "inference-header-content-length is 'abc'"),
        (dict(header_length="99999999"), "inference-header-content-length is '99999999'"),
        (dict(header_length="10"), "not a JSON header"),
    ],
    ids=["size-too-big", "size-too-small", "size-negative", "length-not-a-number", "length-past-the-body", "length-short"],
)
def test_false_v2_binary_sizes_are_400s_with_the_reason(predictor, png, b64, lie, fragment):
    offset = predictor.log_path.stat().st_size
    response = binary_v2(predictor.url, b64(png()).encode(), **lie)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert "Traceback" not in log_since(predictor, offset)


def test_a_true_v2_binary_body_is_served(predictor, png, b64):
    response = binary_v2(predictor.url, b64(png()).encode())
    assert response.status_code == 200, response.text
    result = json.loads({o["name"]: o for o in response.json()["outputs"]}["result"]["data"][0])
    assert result["tokens"] == 2


def test_client_errors_are_not_logged_as_server_errors(predictor, png, b64):
    offset = predictor.log_path.stat().st_size
    assert v1(predictor.url, [{"image": {"b64": "!!!"}}]).status_code == 400
    assert v1(predictor.url, [{"image": {"b64": b64(png())}, "task": "json", "schema": {"type": 7}}]).status_code == 400
    assert httpx.post(f"{predictor.url}/v1/models/nope:predict", json={"instances": [{}]}).status_code == 404
    assert httpx.post(f"{predictor.url}/v2/models/llava/infer", content=b"{", headers={"content-type": "application/json"}).status_code in (400, 422)
    explain = httpx.post(f"{predictor.url}/v1/models/llava:explain", json={"instances": [{"image": {"b64": b64(png())}}]})
    assert explain.status_code == 501
    logged = log_since(predictor, offset)
    assert "Traceback" not in logged and "ERROR" not in logged
    # A verb the predictor does not offer is worth a warning, on one line.
    [warning] = [line for line in logged.splitlines() if "llava:explain" in line]
    assert warning.startswith("WARNING") and "-> 501" in warning
