"""The batch API's Deployment (`api.enabled`): the chart's security rules hold for it, its key comes
from the chart's Secret, and the NetworkPolicies let exactly its clients in and it reach only what a
worker needs (the database, the broker, HTTPS to the object store)."""

from __future__ import annotations

import pytest

from . import test_chart_render as rendering
from . import test_chart_security as security
from .test_chart_security import pod_labels

API = {"api": {"enabled": True, "store": "s3://labels/api", "clientNamespaces": ["pipelines"]}}


@pytest.fixture(scope="module")
def api_release(render):
    return render(API)


def test_the_api_pod_follows_the_chart_rules(api_release) -> None:
    security.test_every_container_runs_unprivileged_as_non_root(api_release)
    security.test_every_container_has_resources_and_probes(api_release)
    security.test_credentials_come_only_from_secrets(api_release)
    security.test_only_the_retrain_job_gets_an_api_token(api_release)
    rendering.test_every_rendered_manifest_validates(api_release)
    (container,) = api_release.pod("api").spec["containers"]
    assert container["args"] == ["api"] and "readinessProbe" in container


def test_the_api_key_comes_from_the_chart_secret_and_the_api_binds_for_its_service(api_release) -> None:
    env = api_release.pod("api").env()
    key = env["LLAVA_LABELER_API__API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["key"] in api_release.get("Secret", "llava-labeler")["stringData"]
    assert env["LLAVA_LABELER_API__HOST"]["value"] == "0.0.0.0" and env["LLAVA_LABELER_API__STORE"]["value"] == "s3://labels/api"
    assert env["LLAVA_LABELER_LABELER__QUEUE"] == api_release.pod("worker").env()["LLAVA_LABELER_LABELER__QUEUE"]
    service = api_release.get("Service", "llava-labeler-api")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == pod_labels("api")


def test_the_api_reaches_what_a_worker_needs_and_only_its_clients_reach_it(api_release) -> None:
    r, api = api_release, pod_labels("api")
    for dst, port in ((pod_labels("postgresql"), 5432), (pod_labels("redis"), 6379), ("52.216.8.10", 443)):
        assert r.allows(api, dst, port), f"api -> {dst}:{port}"
    for dst, port in ((r.pod("predictor").labels, 8080), (pod_labels("console"), 8501), ("10.1.2.3", 443)):
        assert not r.allows(api, dst, port), f"api -> {dst}:{port} should be denied"
    assert r.allows(("pipelines", {}), api, 8090)
    assert not r.allows(("default", {}), api, 8090) and not r.allows(pod_labels("worker"), pod_labels("redis"), 5432)


def test_an_enabled_api_needs_an_object_store(render) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match="/api/store"):
        render({"api": {"enabled": True}})
    with pytest.raises(helm.HelmValuesError, match="/api/store"):
        render({"api": {"enabled": True, "store": "/var/lib/files"}})
