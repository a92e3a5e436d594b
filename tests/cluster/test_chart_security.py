"""Security properties of the rendered chart: who runs as what, who may call the API, who may talk
to whom, and where credentials come from. Checked for the default values and the production-like
file; the NetworkPolicies through an evaluator of their semantics (conftest.Release.allows)."""

from __future__ import annotations

import re
from typing import Any

NAMESPACE = "labeling"
LABELS = {"app.kubernetes.io/name": "llava-labeler", "app.kubernetes.io/instance": "llava-labeler"}
CREDENTIAL_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|BROKER_URL|REDISCLI_AUTH")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]*:[^/\s@]+@")


def pod_labels(component: str) -> dict[str, str]:
    return {**LABELS, "app.kubernetes.io/component": component}


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_container_runs_unprivileged_as_non_root(release) -> None:
    for pod in release.pods():
        pod_context = pod.spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, pod.name
        assert pod_context["runAsUser"] > 0, pod.name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, pod.name
        assert not pod.spec.get("hostNetwork") and not pod.spec.get("hostPID") and not pod.spec.get("hostIPC")
        for container in containers(pod.spec):
            where = f"{pod.name} container {container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context.get("privileged") is not True, where
            assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add"), where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_every_container_has_resources_and_probes(release) -> None:
    for pod in release.pods():
        for container in containers(pod.spec):
            where = f"{pod.name} container {container['name']}"
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where
            if pod.workload["kind"] not in ("Job", "CronJob"):  # a batch job is bounded by activeDeadlineSeconds
                assert "livenessProbe" in container, where
    # Whatever sits behind a Service takes traffic only when ready.
    for component in ("predictor", "console", "postgresql", "redis"):
        if any(p.component == component for p in release.pods()):
            for container in release.pod(component).spec["containers"]:
                assert "readinessProbe" in container, f"{component} has no readiness probe"
    for pod in release.pods():
        if pod.component in ("predictor", "retrain", "engine-build"):
            (container,) = pod.spec["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, pod.name


def test_only_the_retrain_job_gets_an_api_token(release) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in release.of_kind("ServiceAccount")}
    for pod in release.pods():
        account = pod.spec["serviceAccountName"]
        assert account == f"llava-labeler-{pod.component}", f"{pod.name} runs as {account}"
        expected = pod.component == "retrain"
        assert pod.spec["automountServiceAccountToken"] is expected, pod.name
        assert accounts[account]["automountServiceAccountToken"] is expected, account
    assert "default" not in accounts


def test_without_the_predictor_the_retrain_job_gets_no_token_and_no_role(render) -> None:
    r = render({"predictor": {"enabled": False}, "workers": {"engineUrl": "http://predictor.serving.svc:8080"}})
    assert not r.of_kind("InferenceService") and not r.of_kind("Role") and not r.of_kind("RoleBinding")
    assert r.pod("retrain").spec["automountServiceAccountToken"] is False
    assert r.get("ServiceAccount", "llava-labeler-retrain")["automountServiceAccountToken"] is False
    assert r.pod("worker").env()["LLAVA_LABELER_ENGINE__URL"]["value"] == "http://predictor.serving.svc:8080"


def test_retrain_rbac_is_get_and_patch_on_the_one_inference_service(release) -> None:
    assert not release.of_kind("ClusterRole") and not release.of_kind("ClusterRoleBinding")
    (role,) = release.of_kind("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": ["llava-labeler"],
            "verbs": ["get", "patch"],
        }
    ]
    (binding,) = release.of_kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llava-labeler-retrain", "namespace": NAMESPACE}]


def test_every_rbac_rule_says_why_in_a_comment(chart_dir) -> None:
    lines = (chart_dir / "templates" / "retrain-rbac.yaml").read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert rule_lines
    for i in rule_lines:
        assert lines[i - 1].strip().startswith("#"), f"rule at line {i + 1} has no comment above it"


def test_default_network_policies_allow_exactly_the_needed_flows(default_release) -> None:
    r = default_release
    worker, console, retrain = pod_labels("worker"), pod_labels("console"), pod_labels("retrain")
    postgres, redis = pod_labels("postgresql"), pod_labels("redis")
    predictor = r.pod("predictor").labels
    assert r.get("NetworkPolicy", "llava-labeler-default-deny")["spec"] == {
        "podSelector": {"matchLabels": LABELS},
        "policyTypes": ["Ingress", "Egress"],
    }
    allowed = [
        (worker, postgres, 5432), (worker, redis, 6379), (worker, predictor, 8080),
        (console, postgres, 5432), (console, redis, 6379),
        (retrain, postgres, 5432),
        (("ingress-nginx", {}), console, 8501),
    ]  # fmt: skip
    denied = [
        (worker, postgres, 6379), (worker, console, 8501),
        (console, predictor, 8080),
        (retrain, redis, 6379), (retrain, predictor, 8080),
        (predictor, postgres, 5432), (predictor, redis, 6379),
        (postgres, redis, 6379), (redis, postgres, 5432),
        (("default", {}), postgres, 5432), (("default", {}), redis, 6379), (("default", {}), console, 8501),
        (("default", {}), predictor, 8080), (("ingress-nginx", {}), worker, 8080),
        (("keda", {}), redis, 6379),
    ]  # fmt: skip
    for src, dst, port in allowed:
        assert r.allows(src, dst, port), f"{src} -> {dst}:{port} should be allowed"
    for src, dst, port in denied:
        assert not r.allows(src, dst, port), f"{src} -> {dst}:{port} should be denied"
    for pod in r.pods():
        assert r.allows(pod.labels, ("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP"), f"{pod.name} needs DNS"
        assert not r.allows(pod.labels, "169.254.169.254", 80), f"{pod.name} must not reach cloud metadata"
    # HTTPS to object storage and image URLs, never into the private ranges.
    for who in (worker, retrain, predictor):
        assert r.allows(who, "52.216.8.10", 443)
        assert not r.allows(who, "10.1.2.3", 80)
    assert not r.allows(worker, "10.1.2.3", 443) and not r.allows(predictor, "10.1.2.3", 443)
    assert not r.allows(console, "52.216.8.10", 443), "a password-login console needs no egress to the internet"
    # The retrain job reaches the API server (any address on 443/6443 until apiServerCidrs is set).
    assert r.allows(retrain, "10.0.0.1", 6443) and not r.allows(worker, "10.0.0.1", 6443)


def test_engine_build_job_reads_and_writes_the_pvc_and_nothing_else(all_features_release) -> None:
    r = all_features_release
    job = r.pod("engine-build")
    (container,) = job.spec["containers"]
    assert container["args"] == [
        "engine", "build", "--model", "/mnt/model-store/llava-1.5-7b/hf", "--out", "/mnt/model-store/llava-1.5-7b/trtllm",
        "--max-batch-size", "16", "--dtype", "float16",
    ]  # fmt: skip
    (store,) = [v for v in job.spec["volumes"] if v["name"] == "model-store"]
    assert store["persistentVolumeClaim"]["claimName"] == "llava-labeler-models"
    builder = job.labels
    assert r.allows(builder, ("kube-system", {"k8s-app": "kube-dns"}), 53, "UDP")
    for target in ("52.216.8.10", "10.0.0.1"):
        assert not r.allows(builder, target, 443), f"the engine build needs no network, yet reaches {target}"
    assert not r.allows(builder, pod_labels("postgresql"), 5432)


def test_production_network_policies(production_release) -> None:
    r = production_release
    worker, console, retrain = pod_labels("worker"), pod_labels("console"), pod_labels("retrain")
    predictor = r.pod("predictor").labels
    # External PostgreSQL (10.20.0.0/24) and Redis (10.20.1.0/24, TLS on 6380).
    for who in (worker, console, retrain):
        assert r.allows(who, "10.20.0.7", 5432)
        assert not r.allows(who, "10.30.0.7", 5432)
    assert r.allows(worker, "10.20.1.7", 6380) and r.allows(console, "10.20.1.7", 6380)
    assert not r.allows(retrain, "10.20.1.7", 6380)
    # Serverless predictor: requests come through Knative's activator/gateway, not from pods directly.
    assert r.allows(worker, ("istio-system", {}), 8081)
    assert r.allows(("knative-serving", {}), predictor, 8012)
    assert not r.allows(worker, predictor, 8080)
    # OIDC login: the console calls the identity provider's token endpoint.
    assert r.allows(console, "34.120.1.1", 443)
    # The API server is pinned to its address.
    assert r.allows(retrain, "10.0.0.1", 443) and not r.allows(retrain, "10.0.0.2", 443)


def test_keda_reaches_the_bundled_redis_only_when_enabled(render) -> None:
    keda = render({"autoscaling": {"keda": {"enabled": True}}})
    assert keda.allows(("keda", {}), pod_labels("redis"), 6379)
    assert not keda.allows(("keda", {}), pod_labels("postgresql"), 5432)
    (trigger,) = keda.get("ScaledObject", "llava-labeler-worker")["spec"]["triggers"]
    assert trigger["metadata"]["address"] == f"llava-labeler-redis.{NAMESPACE}.svc.cluster.local:6379"
    auth = keda.get("TriggerAuthentication", "llava-labeler-worker")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "llava-labeler", "key": "redis-password"}]
    assert not keda.of_kind("HorizontalPodAutoscaler")


def test_console_without_broker_access_cannot_reach_redis(render) -> None:
    r = render({"console": {"brokerAccess": False}})
    assert not r.allows(pod_labels("console"), pod_labels("redis"), 6379)
    assert "LLAVA_LABELER_BROKER_URL" not in r.pod("console").env()


def test_credentials_come_only_from_secrets(release) -> None:
    for pod in release.pods():
        for container in containers(pod.spec):
            for env in container.get("env", []):
                if CREDENTIAL_ENV.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{pod.name}: {env['name']}"
    for manifest in release.manifests:
        if manifest["kind"] != "Secret":
            assert not URL_WITH_PASSWORD.search(str(manifest)), f"{manifest['kind']} carries a URL with a password"


def test_generated_credentials_are_random_and_consistent(render) -> None:
    first, second = (render(None).get("Secret", "llava-labeler") for _ in range(2))
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = first["stringData"]
    for key in ("postgres-password", "redis-password", "console-password"):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", data[key]), key
        assert data[key] != second["stringData"][key], f"{key} is not generated"
    assert len({data["postgres-password"], data["redis-password"], data["console-password"]}) == 3
    assert data["database-url"] == (
        f"postgresql+psycopg2://llava:{data['postgres-password']}@llava-labeler-postgresql:5432/llava"
    )
    assert data["broker-url"] == f"redis://:{data['redis-password']}@llava-labeler-redis:6379/0"


def test_production_generates_no_secret_and_reads_the_named_ones(production_release) -> None:
    assert not production_release.of_kind("Secret"), "every credential comes from an existing Secret"
    referenced = {
        env["valueFrom"]["secretKeyRef"]["name"]
        for pod in production_release.pods()
        for env in pod.spec["containers"][0].get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert referenced == {"llava-labeler-database", "llava-labeler-broker", "llava-labeler-predictor"}


def test_the_predictor_requires_an_api_key_that_the_workers_send(release) -> None:
    """Every server in a cluster has a login or a key: the predictor's key reaches both ends from one Secret."""
    keys = [pod.env().get("LLAVA_LABELER_SERVING__API_KEY") for pod in (release.pod("predictor"), release.pod("worker"))]
    assert all(key and "secretKeyRef" in key["valueFrom"] for key in keys)
    assert keys[0] == keys[1]
    secret = release.of_kind("Secret")
    if not keys[0]["valueFrom"]["secretKeyRef"]["name"].endswith("-predictor"):  # generated by the chart
        assert keys[0]["valueFrom"]["secretKeyRef"]["key"] in secret[0]["stringData"]


def test_console_always_has_a_login(release) -> None:
    console = release.pod("console")
    env = console.env()
    mode = env["LLAVA_LABELER_UI__AUTH"]["value"]
    if mode == "password":
        assert "secretKeyRef" in env["LLAVA_LABELER_UI__PASSWORD"]["valueFrom"]
    else:
        assert mode == "oidc"
        (mount,) = [m for m in console.spec["containers"][0]["volumeMounts"] if m["name"] == "oidc"]
        assert mount["mountPath"] == "/home/app/.streamlit/secrets.toml" and mount["readOnly"] is True


def test_default_values_hold_no_credentials(chart_dir) -> None:
    import yaml

    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    leaks = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, str) and (URL_WITH_PASSWORD.search(node) or re.search(r"password$", path, re.I)):
            leaks.append(f"{path}={node!r}")

    walk(values, "")
    assert not leaks, leaks


def test_defaults_expose_the_console_only_inside_the_cluster(default_release) -> None:
    r = default_release
    types = {service["metadata"]["name"]: service["spec"].get("type", "ClusterIP") for service in r.of_kind("Service")}
    published = {name: kind for name, kind in types.items() if kind != "ClusterIP"}
    assert not published, f"no Service is published on node or cloud addresses: {published}"
    assert not r.of_kind("Ingress"), "the console is published only when console.ingress.enabled is set"
    env = r.pod("console").env()
    assert env["LLAVA_LABELER_UI__AUTH"]["value"] == "password"
    assert "FORWARDED_ALLOW_IPS" not in env, "no proxy's X-Forwarded-For is believed unless named"


def test_console_believes_forwarded_addresses_only_from_the_named_proxies(render) -> None:
    env = render({"console": {"trustedProxies": ["10.244.0.0/16", "10.96.0.10"]}}).pod("console").env()
    assert env["FORWARDED_ALLOW_IPS"]["value"] == "10.244.0.0/16,10.96.0.10"


def test_worker_metrics_listen_on_the_pod_ip_and_the_settings_read_it(release, monkeypatch) -> None:
    from entrypoints.settings import Settings

    worker = release.pod("worker")
    env = worker.env()
    assert env["LLAVA_LABELER_LABELER__METRICS_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    pod_ip = "10.244.3.17"  # what the kubelet puts there
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
        elif entry["valueFrom"].get("fieldRef") == {"fieldPath": "status.podIP"}:
            monkeypatch.setenv(name, pod_ip)
    settings = Settings()
    (port,) = worker.spec["containers"][0]["ports"]
    assert (settings.labeler.metrics_host, settings.labeler.metrics_port) == (pod_ip, port["containerPort"])
    assert worker.spec["containers"][0]["livenessProbe"]["httpGet"]["port"] == "metrics", "the probe dials the pod IP"


def test_only_prometheus_scrapes_the_workers(default_release, render) -> None:
    worker, console = pod_labels("worker"), pod_labels("console")
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    r = default_release
    assert r.allows(prometheus, worker, 9108)
    assert not r.allows(prometheus, worker, 8080), "the metrics port only"
    for other in (("monitoring", {"app.kubernetes.io/name": "grafana"}), ("default", {}), console, pod_labels("redis")):
        assert not r.allows(other, worker, 9108), f"{other} must not reach the workers' metrics"
    labels = {"app": "prom", "app.kubernetes.io/name": None}  # null drops a default label (Helm merges maps)
    custom = render({"networkPolicy": {"prometheus": {"namespaces": ["observability"], "podLabels": labels}}})
    assert custom.allows(("observability", {"app": "prom"}), worker, 9108)
    assert not custom.allows(prometheus, worker, 9108)
    closed = render({"networkPolicy": {"prometheus": {"namespaces": [], "podLabels": {}}}})
    assert not closed.allows(prometheus, worker, 9108)
    assert closed.get("NetworkPolicy", "llava-labeler-worker")["spec"]["ingress"] == []
