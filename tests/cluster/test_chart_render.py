"""The chart renders, lints and validates, for the default values and the production-like file.

Every rendered manifest is validated: Kubernetes kinds against the Kubernetes JSON schemas that
kubernetes-validate ships (strict: unknown fields are errors), the InferenceService against the
kserve SDK's models (and its pod part against the Pod schema), and KEDA's custom resources against
JSON schemas taken from KEDA's CRDs (tests/cluster/crd_schemas). A kind none of these knows fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def kubernetes_version() -> str:
    """The newest Kubernetes version kubernetes-validate carries schemas for."""
    from kubernetes_validate.utils import latest_version

    return latest_version()


def validate_kubernetes(manifest: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, kubernetes_version(), strict=True)


def validate_keda(manifest: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads((CRD_SCHEMAS / f"{manifest['kind'].lower()}-keda-v1alpha1.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(manifest)


def kserve_model(data: Any, type_name: str) -> Any:
    """Build the kserve SDK model `type_name` from a manifest fragment, refusing unknown fields.

    The SDK's own deserializer silently drops keys it does not know (and cannot resolve the
    Kubernetes types it embeds), so this walks the generated `openapi_types` itself; constructing
    each model runs the SDK's client-side validation (required fields, enums).
    """
    import kserve.models
    from kubernetes.client import models as k8s_models

    # kserve writes list[T] / dict(str, T); the kubernetes client it embeds writes List[T] / Dict[str, T].
    if container := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        assert isinstance(data, list), f"expected a list for {type_name}, got {data!r}"
        return [kserve_model(item, container[1]) for item in data]
    if container := re.fullmatch(r"(?:dict\(|Dict\[)str, (.+)[)\]]", type_name):
        assert isinstance(data, dict), f"expected a map for {type_name}, got {data!r}"
        return {key: kserve_model(value, container[1]) for key, value in data.items()}
    if type_name in ("object", "ResourceQuantity"):
        return data
    if type_name == "str":
        # Quantities (`nvidia.com/gpu: 1`) are YAML numbers that the API server reads as strings; the
        # Kubernetes schema check of the same fields is strict about their format.
        assert isinstance(data, (str, int, float)) and not isinstance(data, bool), f"expected a string: {data!r}"
        return str(data)
    if type_name in ("int", "bool", "float"):
        expected = {"int": int, "bool": bool, "float": (int, float)}[type_name]
        assert isinstance(data, expected), f"expected {type_name}: {data!r}"
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(k8s_models, type_name)
    assert isinstance(data, dict), f"expected an object for {type_name}, got {data!r}"
    unknown = set(data) - set(cls.attribute_map.values())
    assert not unknown, f"{type_name} has no fields {sorted(unknown)}"
    kwargs = {
        attr: kserve_model(data[key], cls.openapi_types[attr]) for attr, key in cls.attribute_map.items() if key in data
    }
    return cls(**kwargs)


def validate_inference_service(manifest: dict[str, Any]) -> None:
    """The kserve SDK's V1beta1InferenceService accepts it, and its pod part is a valid PodSpec."""
    from kubernetes.client.models import V1PodSpec

    isvc = kserve_model(manifest, "V1beta1InferenceService")
    assert isvc.spec.predictor.containers, "a custom predictor needs its container"
    pod_fields = set(V1PodSpec.attribute_map.values())
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{manifest['metadata']['name']}-predictor"},
        "spec": {k: v for k, v in manifest["spec"]["predictor"].items() if k in pod_fields},
    }
    validate_kubernetes(pod)


def validate_manifest(manifest: dict[str, Any]) -> None:
    if manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService":
        validate_inference_service(manifest)
    elif manifest["apiVersion"] == "keda.sh/v1alpha1" and manifest["kind"] in KEDA_KINDS:
        validate_keda(manifest)
    else:
        validate_kubernetes(manifest)


@pytest.mark.parametrize("which", ["default", "production", "all_features"])
def test_chart_lints_clean_with_helm(which: str, chart_dir: Path, request: pytest.FixtureRequest) -> None:
    import helm_python as helm

    values = request.getfixturevalue(f"{which}_release").values if which != "default" else None
    report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{kubernetes_version()}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_every_rendered_manifest_validates(release) -> None:
    assert release.manifests, "nothing rendered"
    failures = []
    for manifest in release.manifests:
        try:
            validate_manifest(manifest)
        except Exception as exc:  # collect every failure, not just the first
            failures.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_default_install_brings_up_every_component(default_release) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in default_release.manifests}
    expected = {
        ("InferenceService", "llava-labeler"),
        ("Deployment", "llava-labeler-worker"),
        ("HorizontalPodAutoscaler", "llava-labeler-worker"),
        ("Deployment", "llava-labeler-console"),
        ("Service", "llava-labeler-console"),
        ("CronJob", "llava-labeler-retrain"),
        ("Role", "llava-labeler-retrain"),
        ("RoleBinding", "llava-labeler-retrain"),
        ("StatefulSet", "llava-labeler-postgresql"),
        ("Service", "llava-labeler-postgresql"),
        ("StatefulSet", "llava-labeler-redis"),
        ("Service", "llava-labeler-redis"),
        ("Secret", "llava-labeler"),
    }
    assert expected <= kinds, expected - kinds
    assert not default_release.of_kind("ScaledObject") and not default_release.of_kind("Ingress")
    for statefulset in default_release.of_kind("StatefulSet"):
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"]


def test_production_uses_external_services_keda_ingress_and_canary(production_release) -> None:
    r = production_release
    assert not r.of_kind("StatefulSet"), "external PostgreSQL/Redis must not be deployed"
    assert not r.of_kind("HorizontalPodAutoscaler"), "KEDA owns the workers' scaling"
    scaled = r.get("ScaledObject", "llava-labeler-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "labeler"
    assert trigger["metadata"]["address"] == "redis.ml.internal:6380" and trigger["metadata"]["enableTLS"] == "true"
    auth = r.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "llava-labeler-broker", "key": "redis-password"}
    ]
    ingress = r.get("Ingress", "llava-labeler-console")
    assert ingress["spec"]["tls"] == [{"hosts": ["labeler.ml.example.com"], "secretName": "labeler-ml-example-com-tls"}]
    isvc = r.get("InferenceService", "llava-labeler")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 8)
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    worker_env = r.pod("worker").env()
    assert worker_env["LLAVA_LABELER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "llava-labeler-database",
        "key": "database-url",
    }
    assert worker_env["LLAVA_LABELER_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "llava-labeler-broker"
    console = r.pod("console")
    assert console.env()["LLAVA_LABELER_UI__AUTH"]["value"] == "oidc"
    assert "LLAVA_LABELER_UI__PASSWORD" not in console.env()
    (oidc,) = [v for v in console.spec["volumes"] if v["name"] == "oidc"]
    assert oidc["secret"]["secretName"] == "llava-labeler-console-oidc"
    retrain_env = r.pod("retrain").env()
    assert retrain_env["LLAVA_LABELER_ROLLOUT__CANARY_TRAFFIC_PERCENT"]["value"] == "10"


def test_predictor_runs_the_trtllm_server_on_a100_gpus(release) -> None:
    isvc = release.get("InferenceService", "llava-labeler")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container", "KServe mounts /mnt/models into kserve-container only"
    assert [container["command"][0], *container["args"]][:6] == [
        "llava-labeler", "serve", "--model", "/mnt/models", "--backend", "trtllm",
    ]  # fmt: skip
    assert container["image"].startswith(release.values["gpuImage"]["repository"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STORAGE_URI"] == release.values["predictor"]["storageUri"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-A100")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == container["ports"][0]["containerPort"]


def test_workers_reach_the_predictor_through_the_engine_url(release) -> None:
    env = release.pod("worker").env()
    assert env["LLAVA_LABELER_ENGINE__URL"]["value"] == "http://llava-labeler-predictor.labeling.svc.cluster.local"
    assert release.pod("worker").spec["containers"][0]["args"] == ["worker"]


def test_console_binds_all_interfaces_only_in_the_cluster_and_probes_streamlit(release) -> None:
    console = release.pod("console")
    (container,) = console.spec["containers"]
    assert container["args"] == ["ui"]
    assert console.env()["LLAVA_LABELER_UI__HOST"]["value"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    service = release.get("Service", "llava-labeler-console")
    assert service["spec"]["type"] == "ClusterIP", "the console is exposed through the Ingress, never directly"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"predictor": {"canaryTrafficPercent": 150, "deploymentMode": "Serverless"}}, "maximum"),
        ({"predictor": {"canaryTrafficPercent": 10}}, "Serverless"),
        ({"replicaCount": 3}, "additional properties 'replicaCount'"),
        ({"postgresql": {"enabled": False}}, "/postgresql/external/existingSecret"),
        ({"redis": {"enabled": False, "external": {"existingSecret": "broker"}}, "autoscaling": {"keda": {"enabled": True}}},
         "/redis/external/address"),
        ({"console": {"auth": {"mode": "none"}}}, "/console/auth/mode"),
        ({"console": {"auth": {"mode": "oidc"}}}, "/console/auth/oidc/existingSecret"),
        ({"console": {"auth": {"password": {"value": "hunter2"}}}}, "additional properties 'value'"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"retrain": {"schedule": "every night"}}, "/retrain/schedule"),
        ({"predictor": {"resources": {"limits": {"nvidia.com/gpu": None}}}}, "nvidia.com/gpu"),
        ({"workers": {"concurrency": "four"}}, "/workers/concurrency"),
        ({"predictor": {"enabled": False}}, "/workers/engineUrl"),
        ({"engineBuild": {"enabled": True, "outputPath": "../../etc"}}, "/engineBuild/outputPath"),
        ({"console": {"trustedProxies": ["*"]}}, "/console/trustedProxies/0"),
    ],
    ids=[
        "canary-over-100", "canary-without-knative", "unknown-key", "external-db-without-secret",
        "keda-without-redis-address", "console-without-login", "oidc-without-secret", "plaintext-password",
        "privilege-escalation", "root-pods", "bad-cron", "predictor-without-gpu", "wrong-type",
        "no-predictor-no-url", "path-escape", "trust-every-proxy",
    ],
)  # fmt: skip
def test_values_schema_rejects_bad_values(render, values: dict[str, Any], complaint: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match=None) as caught:
        render(values)
    assert complaint in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0], "imagePullPolice"),
        ("NetworkPolicy", ["spec"], "egres"),
        ("InferenceService", ["spec", "predictor"], "minReplica"),
        ("InferenceService", ["spec", "predictor", "containers", 0, "resources"], "limit"),
        ("ScaledObject", ["spec"], "maxReplicas"),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0], "secret"),
    ],
)
def test_validators_catch_a_misspelled_field(production_release, kind: str, path: list, field: str) -> None:
    """The validation above is not vacuous: one wrong field name in any kind is an error."""
    manifest = json.loads(json.dumps(production_release.of_kind(kind)[0]))
    target = manifest
    for step in path:
        target = target[step]
    target[field] = 1
    with pytest.raises(Exception, match=field):
        validate_manifest(manifest)


def test_retrain_writes_versions_where_the_storage_uri_it_patches_points(release) -> None:
    """A promoted version goes to MODEL_STORE_PATH/<name> and the predictor is patched to MODEL_STORE_URI/<name>:
    with the claim's root mounted at /mnt/model-store, the path must follow the URI's path inside the claim."""
    env = {name: entry.get("value") for name, entry in release.pod("retrain").env().items()}
    uri = release.values["retrain"]["modelStoreUri"]
    assert env["LLAVA_LABELER_ROLLOUT__MODEL_STORE_URI"] == uri
    if uri.startswith("pvc://"):
        claim, _, inside = uri.removeprefix("pvc://").partition("/")
        assert env["LLAVA_LABELER_ROLLOUT__MODEL_STORE_PATH"] == f"/mnt/model-store/{inside}".rstrip("/")
    else:  # an object store: nothing mounted, so the retrain uploads each promoted version (labeler.model_store)
        assert "LLAVA_LABELER_ROLLOUT__MODEL_STORE_PATH" not in env
    assert env["LLAVA_LABELER_ENGINE__MODEL"] == release.values["retrain"]["baseModel"]  # the first retrain's start


def test_retrain_compiles_for_a_trtllm_predictor_and_the_settings_read_the_rendered_env(release, monkeypatch) -> None:
    """The CronJob's environment, as the retrain's Settings reads it: a TensorRT-LLM predictor means an engine build."""
    from entrypoints.settings import Settings

    env = {name: entry["value"] for name, entry in release.pod("retrain").env().items() if "value" in entry}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    trtllm = release.values["predictor"]["enabled"] and release.values["predictor"]["backend"] == "trtllm"
    assert settings.rollout.engine_build is trtllm
    if trtllm:
        assert settings.rollout.engine_build_args == release.values["retrain"]["engineBuildArgs"]
    assert settings.rollout.model_store_uri == release.values["retrain"]["modelStoreUri"]
    assert settings.engine.model == release.values["retrain"]["baseModel"]
