"""Fixtures of the cluster tests: the Helm chart rendered with Helm's own Go code (helm-python-sdk).

No Kubernetes API server runs here, so the chart is checked offline: rendered, linted, validated
against the Kubernetes and CRD schemas, and its security properties read off the manifests.
`Release` wraps one rendering and answers the questions the tests ask of it, including whether the
NetworkPolicies let one component reach another (an evaluator of NetworkPolicy semantics for pods
in the release's namespace).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llava-labeler"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "llava-labeler"
NAMESPACE = "labeling"
# Every optional part switched on, so the checks that run on each rendering see every template.
ALL_FEATURES = {
    "autoscaling": {"keda": {"enabled": True}},
    "console": {"ingress": {"enabled": True, "tls": {"enabled": True, "secretName": "console-tls"}}},
    "engineBuild": {"enabled": True},
    "imagePullSecrets": [{"name": "registry"}],
}

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    """A values file as Helm reads it (`-f`)."""
    import helm_python as helm

    return helm.values_from_yaml(path.read_text())


@dataclass
class Pod:
    """One pod template of the release: who runs it, its labels and its spec."""

    workload: Manifest
    labels: dict[str, str]
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}"

    @property
    def component(self) -> str:
        return self.labels["app.kubernetes.io/component"]

    def env(self, container: str | None = None) -> dict[str, dict[str, Any]]:
        """Environment entries by name of one container (the first by default)."""
        containers = self.spec["containers"]
        chosen = next(c for c in containers if container is None or c["name"] == container)
        return {e["name"]: e for e in chosen.get("env", [])}


class Release:
    """The manifests of one `helm template` of the chart, and queries over them."""

    def __init__(self, rendered: dict[str, str], values: dict[str, Any]):
        self.values = values
        self.files = rendered
        self.manifests: list[Manifest] = []
        for path, text in sorted(rendered.items()):
            if path.endswith(".txt"):
                continue
            self.manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def pods(self) -> list[Pod]:
        """Every pod template: Deployments, StatefulSets, Jobs, CronJobs and the KServe predictor."""
        pods = []
        for m in self.manifests:
            if m["kind"] in ("Deployment", "StatefulSet"):
                template = m["spec"]["template"]
                pods.append(Pod(m, template["metadata"]["labels"], template["spec"]))
            elif m["kind"] == "Job":
                template = m["spec"]["template"]
                pods.append(Pod(m, template["metadata"]["labels"], template["spec"]))
            elif m["kind"] == "CronJob":
                template = m["spec"]["jobTemplate"]["spec"]["template"]
                pods.append(Pod(m, template["metadata"]["labels"], template["spec"]))
            elif m["kind"] == "InferenceService":
                predictor = m["spec"]["predictor"]
                # KServe adds this label to the predictor's pods; the rest come from predictor.labels.
                labels = {**predictor["labels"], "serving.kserve.io/inferenceservice": m["metadata"]["name"]}
                pods.append(Pod(m, labels, predictor))
        return pods

    def pod(self, component: str) -> Pod:
        found = [p for p in self.pods() if p.component == component]
        assert len(found) == 1, f"expected one pod template of {component}, found {[p.name for p in found]}"
        return found[0]

    # --- NetworkPolicy semantics (same-namespace pods, namespaces by name, ipBlocks) ---

    def _policies_for(self, labels: dict[str, str], direction: str) -> list[Manifest]:
        return [
            p
            for p in self.of_kind("NetworkPolicy")
            if direction in p["spec"].get("policyTypes", ["Ingress"])
            and _selects(p["spec"]["podSelector"], labels)
        ]

    def allows(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether a connection is allowed by src's egress rules and dst's ingress rules.

        An endpoint is a pod of the release (its labels), a pod in another namespace
        (namespace, labels), or an address outside the cluster (an IP string). Traffic that no
        policy of a side governs is allowed on that side, as in Kubernetes.
        """
        egress_ok = ingress_ok = True
        if isinstance(src, dict):
            policies = self._policies_for(src, "Egress")
            egress_ok = not policies or any(
                _rule_matches(rule, "to", dst, port, protocol) for p in policies for rule in p["spec"].get("egress") or []
            )
        if isinstance(dst, dict):
            policies = self._policies_for(dst, "Ingress")
            ingress_ok = not policies or any(
                _rule_matches(rule, "from", src, port, protocol)
                for p in policies
                for rule in p["spec"].get("ingress") or []
            )
        return egress_ok and ingress_ok


Endpoint = dict[str, str] | tuple[str, dict[str, str]] | str


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator supports matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], other: Endpoint) -> bool:
    if isinstance(other, str):  # an address: only ipBlocks match it
        block = peer.get("ipBlock")
        address = ipaddress.ip_address(other)
        return bool(block) and address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ipBlock" in peer:
        return False  # pods are matched by selectors, not by the pod network's CIDRs
    namespace, labels = (NAMESPACE, other) if isinstance(other, dict) else other
    if "namespaceSelector" in peer:
        wanted = peer["namespaceSelector"].get("matchLabels") or {}
        if wanted and wanted.get("kubernetes.io/metadata.name") != namespace:
            return False
    elif namespace != NAMESPACE:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], labels)


def _rule_matches(rule: dict[str, Any], key: str, other: Endpoint, port: int, protocol: str) -> bool:
    peers = rule.get(key)
    ports = rule.get("ports")
    peer_ok = not peers or any(_peer_matches(peer, other) for peer in peers)
    port_ok = not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)
    return peer_ok and port_ok


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART


@pytest.fixture(scope="session")
def production_values() -> dict[str, Any]:
    """helm/llava-labeler/ci/production-values.yaml, as `-f` reads it."""
    return load_values(PRODUCTION_VALUES)


@pytest.fixture(scope="session")
def render() -> Iterator[Callable[..., Release]]:
    """Render the chart with the given values, as `helm install` would (Helm's Go code, offline)."""
    import helm_python as helm

    chart = helm.Chart.load(CHART)

    def _render(values: dict[str, Any] | None = None) -> Release:
        rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return Release(rendered, chart.merge_values(values))

    yield _render
    chart.close()


@pytest.fixture(scope="session")
def default_release(render: Callable[..., Release]) -> Release:
    return render(None)


@pytest.fixture(scope="session")
def production_release(render: Callable[..., Release], production_values: dict[str, Any]) -> Release:
    return render(production_values)


@pytest.fixture(scope="session")
def all_features_release(render: Callable[..., Release]) -> Release:
    return render(ALL_FEATURES)


@pytest.fixture(scope="session", params=["default", "production", "all_features"])
def release(request: pytest.FixtureRequest) -> Release:
    """The defaults, ci/production-values.yaml, and the defaults with every optional part on."""
    return request.getfixturevalue(f"{request.param}_release")
