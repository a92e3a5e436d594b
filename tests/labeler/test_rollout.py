"""Roll-out through the real `kubernetes` client against a fake Kubernetes API server on 127.0.0.1.

No Kubernetes API server can run here, so `FakeKubernetesAPI` (a fake, named as such)
is a small real HTTP server that implements the two calls the roll-out may make on one
InferenceService: GET and PATCH (JSON merge patch, RFC 7386, with resourceVersion
conflicts answered 409 as the API server does). After a patch it reports the new
revision as not ready for a few reads, then ready, like KServe's controller would.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from labeler.settings import RolloutSettings
from labeler.rollout import RolloutError, is_ready, roll_out, storage_uri

NAMESPACE, NAME = "labeling", "llava-labeler"
PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices/{NAME}"
OLD, NEW = "pvc://llava-labeler-models/llava-1.5-7b/v1", "pvc://llava-labeler-models/llava-1.5-7b/retrain-2"


def chart_isvc() -> dict[str, Any]:
    """The InferenceService as the chart renders it: a custom container whose STORAGE_URI names the model."""
    env = [{"name": "STORAGE_URI", "value": OLD}, {"name": "LLAVA_LABELER_SERVING__PORT", "value": "8080"}]
    container = {"name": "kserve-container", "image": "registry.example.com/llava-labeler-predictor:1", "env": env}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "100", "generation": 1},
        "spec": {"predictor": {"minReplicas": 1, "containers": [container]}},
        "status": _status(1, "rev-1"),
    }


def _status(generation: int, revision: str, ready: bool = True) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "components": {"predictor": {"latestCreatedRevision": revision, "latestReadyRevision": revision if ready else "rev-1"}},
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKubernetesAPI(ThreadingHTTPServer):
    """A fake Kubernetes API server holding one InferenceService (GET and merge-PATCH of its path only)."""

    def __init__(self, isvc: dict[str, Any], *, ready_after_reads: int | None = 2, forbid_patch: bool = False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.isvc, self.ready_after_reads, self.forbid_patch = isvc, ready_after_reads, forbid_patch
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (content type, body)
        self.reads_since_patch = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def read(self) -> dict[str, Any]:
        with self.lock:
            self.reads_since_patch += 1
            meta = self.isvc["metadata"]
            if self.ready_after_reads is not None and self.reads_since_patch > self.ready_after_reads:
                self.isvc["status"] = _status(meta["generation"], f"rev-{meta['generation']}")
            return copy.deepcopy(self.isvc)

    def patch(self, content_type: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.patches.append((content_type, body))
            if self.forbid_patch:
                return 403, _failure(403, "Forbidden", "cannot patch resource")
            if content_type != "application/merge-patch+json":
                return 415, _failure(415, "UnsupportedMediaType", content_type)
            meta = self.isvc["metadata"]
            wanted = body.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != meta["resourceVersion"]:
                return 409, _failure(409, "Conflict", "the object has been modified")
            updated = merge_patch(self.isvc, body)
            updated["metadata"]["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
            if updated["spec"] != self.isvc["spec"]:
                generation = meta["generation"] + 1
                updated["metadata"]["generation"] = generation
                updated["status"] = {**_status(meta["generation"], f"rev-{generation}", ready=False)}
                self.reads_since_patch = 0
            self.isvc = updated
            return 200, copy.deepcopy(updated)


def _failure(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubernetesAPI

    def do_GET(self) -> None:
        if self.path.split("?")[0] != PATH:
            return self._reply(404, _failure(404, "NotFound", self.path))
        self._reply(200, self.server.read())

    def do_PATCH(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path.split("?")[0] != PATH:
            return self._reply(404, _failure(404, "NotFound", self.path))
        self._reply(*self.server.patch(self.headers.get("Content-Type", ""), body))

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def fake_api() -> Iterator[Any]:
    """fake_api(isvc, **options) -> (server, CustomObjectsApi pointed at it); servers stop at teardown."""
    servers: list[FakeKubernetesAPI] = []

    def start(isvc: dict[str, Any], **options: Any) -> tuple[FakeKubernetesAPI, Any]:
        server = FakeKubernetesAPI(isvc, **options)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        api_client = client.ApiClient(client.Configuration(host=server.url))
        return server, client.CustomObjectsApi(api_client)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _settings(**overrides: Any) -> RolloutSettings:
    defaults = {"inference_service": NAME, "namespace": NAMESPACE, "poll_s": 0.01, "ready_timeout_s": 5}
    return RolloutSettings(**{**defaults, **overrides})


def _env(isvc: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in isvc["spec"]["predictor"]["containers"][0]["env"]}


def test_patches_the_charts_storage_uri_and_waits_until_ready(fake_api) -> None:
    server, api = fake_api(chart_isvc())
    lines: list[str] = []
    result = roll_out(_settings(), NEW, api=api, echo=lines.append)
    assert result.to_dict() == {"mode": "kserve", "storage_uri": NEW, "previous_uri": OLD, "canary_percent": None}
    ((content_type, body),) = server.patches
    assert content_type == "application/merge-patch+json" and body["metadata"] == {"resourceVersion": "100"}
    assert _env(server.isvc) == {"STORAGE_URI": NEW, "LLAVA_LABELER_SERVING__PORT": "8080"}  # the other variables kept
    assert server.isvc["spec"]["predictor"]["minReplicas"] == 1 and "canaryTrafficPercent" not in server.isvc["spec"]["predictor"]
    assert is_ready(server.isvc) and server.reads_since_patch > 2, "returned only once the new revision was ready"
    assert any(f"{OLD} -> {NEW}" in line for line in lines)


def test_a_canary_is_promoted_once_ready(fake_api) -> None:
    server, api = fake_api(chart_isvc())
    result = roll_out(_settings(canary_traffic_percent=10), NEW, api=api, echo=lambda line: None)
    assert result.canary_percent == 10
    first, promote = (body for _, body in server.patches)
    assert first["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert promote["spec"] == {"predictor": {"canaryTrafficPercent": None}}  # removed: all traffic to the new revision
    assert "canaryTrafficPercent" not in server.isvc["spec"]["predictor"] and _env(server.isvc)["STORAGE_URI"] == NEW


def test_a_standard_predictor_gets_its_model_storage_uri_patched(fake_api) -> None:
    isvc = chart_isvc()
    isvc["spec"]["predictor"] = {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": OLD}}
    server, api = fake_api(isvc)
    roll_out(_settings(), NEW, api=api, echo=lambda line: None)
    assert server.isvc["spec"]["predictor"]["model"] == {"modelFormat": {"name": "huggingface"}, "storageUri": NEW}


def test_a_revision_that_never_gets_ready_is_rolled_back(fake_api) -> None:
    server, api = fake_api(chart_isvc(), ready_after_reads=None)
    with pytest.raises(RolloutError, match="did not become ready; rolled back to " + OLD):
        roll_out(_settings(canary_traffic_percent=20, ready_timeout_s=0.2), NEW, api=api, echo=lambda line: None)
    assert _env(server.isvc)["STORAGE_URI"] == OLD and "canaryTrafficPercent" not in server.isvc["spec"]["predictor"]


def test_missing_rights_and_a_wrong_name_are_clear_errors(fake_api) -> None:
    _, api = fake_api(chart_isvc(), forbid_patch=True)
    with pytest.raises(RolloutError, match="403 Forbidden .*needs get and patch"):
        roll_out(_settings(), NEW, api=api, echo=lambda line: None)
    _, api = fake_api(chart_isvc())
    with pytest.raises(RolloutError, match=f"cannot read InferenceService {NAMESPACE}/other: 404"):
        roll_out(_settings().model_copy(update={"inference_service": "other"}), NEW, api=api, echo=lambda line: None)


def test_embedded_mode_patches_nothing() -> None:
    lines: list[str] = []
    result = roll_out(RolloutSettings(), "/models/retrain-2", api=object(), echo=lines.append)
    assert result.mode == "embedded" and "new jobs use the active version" in lines[0]


def test_the_storage_uri_is_under_the_model_store() -> None:
    store = RolloutSettings(model_store_uri="pvc://llava-labeler-models/llava-1.5-7b/")
    assert storage_uri(store, "retrain-2", "/mnt/model-store/retrain-2") == NEW
    assert storage_uri(RolloutSettings(), "retrain-2", "/data/models/retrain-2") == "/data/models/retrain-2"
