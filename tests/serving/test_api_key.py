"""The predictor's API key: every route but the probes and metrics needs it; the workers' client and the
stock `openai` client send it; without one the predictor refuses to bind anything but loopback."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from engine.backend import EngineError, GenerationRequest
from engine.backends.remote import RemoteBackend
from engine.predictor_process import PredictorProcess
from engine.settings import ServingSettings

KEY = "k3y-for-tests"


@pytest.fixture(scope="module")
def keyed(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("keyed") / "server.log"
    with PredictorProcess(tiny_model_dir, env={"LLAVA_LABELER_SERVING__API_KEY": KEY}, log_path=log) as server:
        yield server.url


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", KEY])
@pytest.mark.parametrize("path", ["/v1/models/llava:predict", "/v2/models/llava/infer", "/openai/v1/models", "/v1/models"])
def test_every_route_refuses_a_request_without_the_key(keyed, path, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.request("POST" if "infer" in path or "predict" in path else "GET", keyed + path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["error"]


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/metrics"])
def test_probes_and_metrics_stay_open(keyed, path) -> None:
    assert httpx.get(keyed + path).status_code == 200


def test_the_workers_client_and_the_openai_client_send_the_key(keyed, png, b64) -> None:
    remote = RemoteBackend(keyed, settings=ServingSettings(api_key=KEY, client_retries=0))
    [result] = remote.generate([GenerationRequest(image=png("red"), max_new_tokens=3)])
    assert result.ok and result.tokens >= 1
    with pytest.raises(EngineError, match="401"):
        RemoteBackend(keyed, settings=ServingSettings(client_retries=0)).generate([GenerationRequest(image=png("red"))])

    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(png('blue'))}"}}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    with openai.OpenAI(base_url=f"{keyed}/openai/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        completion = client.chat.completions.create(model="llava", messages=messages, max_tokens=3)
    assert completion.choices[0].message.content is not None
    with openai.OpenAI(base_url=f"{keyed}/openai/v1", api_key="wrong", max_retries=0, timeout=60) as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="llava", messages=messages, max_tokens=3)


def test_serve_refuses_a_public_bind_without_a_key(tiny_model_dir) -> None:
    command = [sys.executable, "-m", "entrypoints", "serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "refusing to serve on 0.0.0.0 without an API key: set LLAVA_LABELER_SERVING__API_KEY" in done.stderr
