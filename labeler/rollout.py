"""Rolling a promoted model out: patch the KServe InferenceService in a cluster; nothing to patch embedded.

In a cluster the predictor is a KServe InferenceService (the chart's
`predictor-inferenceservice.yaml`). Its model comes from a storage URI: a standard
predictor's `spec.predictor.model.storageUri`, or the custom container's `STORAGE_URI`
environment variable (the chart's layout). The roll-out changes it through the
`kubernetes` client with a JSON merge patch carrying the object's resourceVersion (a
concurrent edit fails the patch instead of being overwritten), optionally with
`canaryTrafficPercent` so only a share of traffic reaches the new revision; once the
new revision is ready the canary is promoted (the field removed: all traffic). A
revision that never becomes ready is rolled back to the previous URI and the roll-out
fails, so the caller keeps the previous model active.

Embedded (no InferenceService configured), there is no server to change: new jobs
take the active ModelVersion's checkpoint (`registry.model_for_new_jobs`).

The retrain job's ServiceAccount needs exactly `get` and `patch` on this one
InferenceService (the chart's `retrain-rbac.yaml`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from labeler.settings import RolloutSettings

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STORAGE_ENV = "STORAGE_URI"


class RolloutError(RuntimeError):
    """The InferenceService could not be moved to the new model; the message says what happened."""


@dataclass(frozen=True)
class RolloutResult:
    mode: str  # "embedded" | "kserve"
    storage_uri: str
    previous_uri: str | None = None
    canary_percent: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_uri(settings: RolloutSettings, name: str, local_uri: str) -> str:
    """Where the predictor finds version `name`: under the model store's URI, else the checkpoint itself."""
    return f"{settings.model_store_uri.rstrip('/')}/{name}" if settings.model_store_uri else local_uri


def custom_objects_api() -> Any:
    """A CustomObjectsApi for this pod's service account (in a cluster) or the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:  # KUBECONFIG read now: the client reads it once, at import
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, OSError) as exc:
            raise RolloutError(f"no Kubernetes credentials: not running in a pod, and no usable kubeconfig ({exc})") from None
    return client.CustomObjectsApi()


def roll_out(
    settings: RolloutSettings,
    uri: str,
    *,
    api: Any = None,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Point the predictor at `uri` (canary first when configured) and return what changed."""
    if not settings.inference_service:
        echo("roll-out: embedded mode, no InferenceService to patch; new jobs use the active version")
        return RolloutResult("embedded", uri)
    service = _Service(api or custom_objects_api(), settings)
    current = service.get()
    previous = current_storage_uri(current)
    canary = settings.canary_traffic_percent
    patch = storage_patch(current, uri)
    if canary is not None:
        patch["spec"]["predictor"]["canaryTrafficPercent"] = canary
    echo(f"roll-out: {service.title}: {previous} -> {uri}" + (f" (canary {canary}%)" if canary is not None else ""))
    service.patch(patch)
    if not service.wait_ready(sleep):
        echo(f"roll-out: the new revision was not ready within {settings.ready_timeout_s:.0f} s; rolling back to {previous}")
        back = storage_patch(service.get(), previous)
        back["spec"]["predictor"]["canaryTrafficPercent"] = None
        service.patch(back)
        raise RolloutError(f"{service.title}: the revision serving {uri} did not become ready; rolled back to {previous}")
    if canary is not None:
        echo("roll-out: canary ready, promoting it to all traffic")
        version = service.get()["metadata"]["resourceVersion"]
        service.patch({"metadata": {"resourceVersion": version}, "spec": {"predictor": {"canaryTrafficPercent": None}}})
    echo(f"roll-out: {service.title} serves {uri}")
    return RolloutResult("kserve", uri, previous, canary)


def current_storage_uri(isvc: dict[str, Any]) -> str | None:
    predictor = isvc.get("spec", {}).get("predictor", {})
    if "model" in predictor:
        return predictor["model"].get("storageUri")
    for container in predictor.get("containers", []):
        for variable in container.get("env", []):
            if variable.get("name") == STORAGE_ENV:
                return variable.get("value")
    return None


def storage_patch(isvc: dict[str, Any], uri: str | None) -> dict[str, Any]:
    """A merge patch that sets the storage URI wherever this InferenceService keeps it.

    A merge patch replaces lists whole, so a container's env change carries all containers.
    """
    predictor = isvc.get("spec", {}).get("predictor", {})
    head = {"metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]}}
    if "model" in predictor:
        return {**head, "spec": {"predictor": {"model": {"storageUri": uri}}}}
    containers = copy.deepcopy(predictor.get("containers", []))
    found = [v for c in containers for v in c.get("env", []) if v.get("name") == STORAGE_ENV]
    if not found:
        raise RolloutError(
            f"InferenceService {isvc['metadata'].get('name')} has neither spec.predictor.model.storageUri "
            f"nor a {STORAGE_ENV} variable in its containers; cannot tell where its model comes from"
        )
    for variable in found:
        variable.pop("valueFrom", None)
        variable["value"] = uri
    return {**head, "spec": {"predictor": {"containers": containers}}}


def is_ready(isvc: dict[str, Any]) -> bool:
    """Ready for the current spec: the Ready condition is True for this generation and the newest revision is the ready one."""
    status = isvc.get("status") or {}
    generation = isvc.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration", generation) < generation:
        return False
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    predictor = (status.get("components") or {}).get("predictor") or {}
    created = predictor.get("latestCreatedRevision")
    return ready and (created is None or predictor.get("latestReadyRevision") == created)


class _Service:
    """The one InferenceService: get, patch, wait; Kubernetes API errors become `RolloutError`."""

    def __init__(self, api: Any, settings: RolloutSettings):
        self.api, self.settings = api, settings
        self.title = f"InferenceService {settings.namespace}/{settings.inference_service}"
        self._where = {"group": GROUP, "version": VERSION, "plural": PLURAL}
        self._where |= {"namespace": settings.namespace, "name": settings.inference_service}

    def get(self) -> dict[str, Any]:
        return self._call("read", lambda: self.api.get_namespaced_custom_object(**self._where))

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("patch", lambda: self.api.patch_namespaced_custom_object(**self._where, body=body))

    def wait_ready(self, sleep: Callable[[float], None]) -> bool:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while True:
            if is_ready(self.get()):
                return True
            if time.monotonic() >= deadline:
                return False
            sleep(self.settings.poll_s)

    def _call(self, verb: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return work()
        except ApiException as exc:
            hint = " (the retrain ServiceAccount needs get and patch on it)" if exc.status == 403 else ""
            raise RolloutError(f"cannot {verb} {self.title}: {exc.status} {exc.reason}{hint}") from None
        except HTTPError as exc:
            raise RolloutError(f"cannot {verb} {self.title}: Kubernetes API unreachable ({exc})") from None
