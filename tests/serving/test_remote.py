"""The workers' remote backend: the same results as in-process, item isolation, retries, one-setting switch."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.backend import GenerationRequest, TransientEngineError
from engine.backends.remote import RemoteBackend
from engine.settings import ImageLimits, ServingSettings
from entrypoints.settings import get_settings
from labeler.worker import load_engine

DATA = Path(__file__).resolve().parents[1] / "data"
FAST = ServingSettings(client_retries=2, client_backoff_s=0.01, client_timeout_s=60)


def test_a_remote_batch_equals_the_in_process_batch(predictor, tiny_backend, png, shapes_schema):
    requests = [
        GenerationRequest(image=png("red"), max_new_tokens=5),
        GenerationRequest(image=DATA / "images" / "two-blue-squares.png", task="vqa", instruction="How many?", max_new_tokens=3),
        GenerationRequest(image=png("green"), task="json", schema=shapes_schema, max_new_tokens=80),
    ]
    remote = RemoteBackend(predictor.url, settings=FAST)
    try:
        assert remote.model_id == "model"  # the served checkpoint's directory name, as in-process
        served = remote.generate(requests)
    finally:
        remote.close()
    local = tiny_backend.generate(requests)
    for there, here in zip(served, local):
        assert (there.text, there.tokens, there.finish_reason, there.error) == (here.text, here.tokens, here.finish_reason, here.error)
        assert there.json == here.json and there.token_ids == here.token_ids
        assert there.confidence == pytest.approx(here.confidence, abs=1e-4)
    assert served[2].json is not None


def test_bad_items_fail_alone(predictor, png, tmp_path):
    requests = [
        GenerationRequest(image=png("red"), max_new_tokens=2),
        GenerationRequest(image=b"definitely not an image", max_new_tokens=2),
        GenerationRequest(image=tmp_path / "missing.png", max_new_tokens=2),
        GenerationRequest(image=png("blue"), task="vqa", max_new_tokens=2),  # no question: cannot become a prompt
        GenerationRequest(image=png("blue"), max_new_tokens=2),
    ]
    with_remote = RemoteBackend(predictor.url, settings=FAST)
    results = with_remote.generate(requests)
    with_remote.close()
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "not an image" in results[1].error and "no such image file" in results[2].error
    assert "needs a question" in results[3].error
    assert results[0].tokens == results[4].tokens == 2


class Scripted(BaseHTTPRequestHandler):
    """A real HTTP server whose answers are scripted: (status, body) per call, echoing instances when 200."""

    script: list[int] = []
    calls: list[int] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = self.script.pop(0) if self.script else 200
        self.calls.append(len(body["instances"]))
        answer = {"predictions": [{"text": "ok", "tokens": 1} for _ in body["instances"]]} if status == 200 else {"error": "busy"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def scripted():
    Scripted.script, Scripted.calls = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_retries_on_5xx_and_429_then_succeeds(scripted, png):
    Scripted.script = [503, 429]
    remote = RemoteBackend(scripted, settings=FAST)
    [result] = remote.generate([GenerationRequest(image=png(), max_new_tokens=1)])
    assert result.text == "ok" and len(Scripted.calls) == 3


def test_exhausted_retries_raise_transient(scripted, png):
    Scripted.script = [500, 502, 504]
    remote = RemoteBackend(scripted, settings=FAST)
    with pytest.raises(TransientEngineError, match="failed 3 times; last: HTTP 504"):
        remote.generate([GenerationRequest(image=png(), max_new_tokens=1)])


def test_unreachable_predictor_raises_transient(png):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = RemoteBackend(f"http://127.0.0.1:{port}", settings=FAST)
    with pytest.raises(TransientEngineError, match="ConnectError"):
        remote.generate([GenerationRequest(image=png(), max_new_tokens=1)])


def test_whole_batches_split_only_at_the_size_limit(scripted, png):
    images = [png(color) for color in ("red", "green", "blue", "yellow", "purple")]
    remote = RemoteBackend(scripted, settings=FAST)
    remote.generate([GenerationRequest(image=image) for image in images])
    assert Scripted.calls == [5]
    Scripted.calls.clear()
    per_item = len(json.dumps({"b64": "x" * (len(images[0]) * 4 // 3)}))
    small = RemoteBackend(scripted, settings=FAST.model_copy(update={"max_request_bytes": 2 * per_item + 2500}))
    small.generate([GenerationRequest(image=image) for image in images])
    assert sum(Scripted.calls) == 5 and max(Scripted.calls) < 5 and len(Scripted.calls) > 1


def test_batches_split_at_the_predictors_pixel_budget(scripted, png):
    """The predictor refuses a request whose images hold more pixels together than its budget (413):
    the worker's client splits its batch there instead of losing it."""
    images = [png(color, (100, 100)) for color in ("red", "green", "blue", "yellow", "purple")]
    remote = RemoteBackend(scripted, settings=FAST, image_limits=ImageLimits(max_request_pixels=25_000))
    results = remote.generate([GenerationRequest(image=image) for image in images])
    assert Scripted.calls == [2, 2, 1] and all(result.ok for result in results)


def test_one_setting_switches_a_worker_to_remote(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("LLAVA_LABELER_ENGINE__MODEL", str(tiny_model_dir))
    monkeypatch.setenv("LLAVA_LABELER_ENGINE__URL", "http://127.0.0.1:1")
    get_settings.cache_clear()
    try:
        assert isinstance(load_engine(get_settings()), RemoteBackend)
        monkeypatch.delenv("LLAVA_LABELER_ENGINE__URL")
        get_settings.cache_clear()
        assert type(load_engine(get_settings())).__name__ == "HFBackend"
    finally:
        get_settings.cache_clear()
