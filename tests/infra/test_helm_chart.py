"""The Helm chart: lint, render, schema-validate, and check what production depends on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from tests.infra.tooling import (
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    Manifest,
    containers,
    find,
    helm_template,
    one,
    render,
    require_tool,
    run,
)

PRODUCTION = CHART / "ci" / "production-values.yaml"
MINIMAL = CHART / "ci" / "minimal-values.yaml"
DEFAULT = CHART / "ci" / "default-values.yaml"
TOLERANCE = CHART / "ci" / "hpa-tolerance-values.yaml"

# Prometheus Operator kinds: not in the Kubernetes OpenAPI schemas, checked structurally below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def kube_version_for(values: Path) -> str:
    """The tolerance example uses an HPA field that only exists from Kubernetes 1.33 on."""
    return "1.33.0" if values == TOLERANCE else KUBE_VERSION


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render(PRODUCTION)


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


def test_ci_values_files_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "production-values.yaml", "minimal-values.yaml"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict(values: Path) -> None:
    result = run(
        [
            require_tool("helm"),
            "lint",
            "--strict",
            CHART,
            "--values",
            values,
            "--kube-version",
            kube_version_for(values),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_manifests_validate_against_kubernetes_schema(values: Path) -> None:
    version = kube_version_for(values)
    manifests = render(values, kube_version=version)
    assert manifests
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 4  # ConfigMap, Deployment, Service, ServiceAccount at least


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guards the test above: strict mode must reject a field Kubernetes does not know."""
    service = one(render(), "Service", "recsys")
    service["spec"]["grpcPortTypo"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBE_VERSION, strict=True)


def test_every_resource_has_recommended_labels(production: list[Manifest]) -> None:
    for manifest in production:
        labels = manifest["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED_LABELS if k not in labels]
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']}: {missing}"
        assert labels["app.kubernetes.io/part-of"] == "recsys"


def test_production_hpa(production: list[Manifest]) -> None:
    hpa = one(production, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    # Production keeps the event spool on a volume per pod: the gateway is a StatefulSet.
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "recsys",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (5, 50)

    by_type = {m["type"]: m for m in spec["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    cpu = by_type["Resource"]["resource"]
    assert cpu["name"] == "cpu"
    assert cpu["target"] == {"type": "Utilization", "averageUtilization": 70}
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] == "recsys_grpc_request_duration_seconds_p99"
    assert pods["target"] == {"type": "AverageValue", "averageValue": "100m"}

    behavior = spec["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 180
    assert behavior["scaleDown"]["policies"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    # The HPA owns the replica count.
    assert "replicas" not in one(production, "StatefulSet", "recsys")["spec"]


def test_hpa_tolerance_example_needs_kubernetes_1_33() -> None:
    hpa = one(render(TOLERANCE, kube_version="1.33.0"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["tolerance"] == "0.2857"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBE_VERSION, strict=True)


def test_latency_metric_is_served_by_the_adapter_rule(production: list[Manifest]) -> None:
    config_map = one(production, "ConfigMap", "recsys-prometheus-adapter")
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    names = {rule["name"]["as"] for rule in rules}
    assert "recsys_grpc_request_duration_seconds_p99" in names
    rule = next(r for r in rules if r["name"]["as"] == "recsys_grpc_request_duration_seconds_p99")
    assert "recsys_grpc_request_duration_seconds_bucket" in rule["seriesQuery"]
    assert "histogram_quantile(0.99" in rule["metricsQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_no_hpa_without_autoscaling(default: list[Manifest]) -> None:
    assert not find(default, "HorizontalPodAutoscaler")
    assert one(default, "Deployment", "recsys")["spec"]["replicas"] == 2


@pytest.mark.parametrize("values", [DEFAULT, PRODUCTION], ids=lambda p: p.name)
def test_pods_run_non_root_with_read_only_root_filesystem(values: Path) -> None:
    manifests = render(values)
    for deployment in find(manifests, "Deployment") + find(manifests, "StatefulSet"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(deployment):
            ctx = container["securityContext"]
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "resources" in container, where


def test_gateway_pod(production: list[Manifest]) -> None:
    deployment = one(production, "StatefulSet", "recsys")
    pod = deployment["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    assert set(by_name) == {"gateway", "ab-sidecar"}

    gateway = by_name["gateway"]
    assert gateway["command"] + gateway["args"] == [
        "recsys-gateway",
        "--config",
        "/etc/recsys/config.yaml",
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["grpc"] == {"port": 50051}, probe
    assert {p["name"]: p["containerPort"] for p in gateway["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    assert mounts["/etc/recsys"]["readOnly"] is True
    assert "/tmp" in mounts
    assert mounts["/var/lib/recsys/build"]["readOnly"] is True

    sidecar = by_name["ab-sidecar"]
    assert sidecar["command"] + sidecar["args"] == [
        "python",
        "-m",
        "ab",
        "sidecar",
        "--config",
        "/etc/recsys/config.yaml",
    ]
    assert {p["containerPort"] for p in sidecar["ports"]} == {50061, 9465}

    # Secrets reach both containers as RECSYS__ overrides from the existing Secret.
    for container in (gateway, sidecar):
        env = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
        }
        assert env["RECSYS__SERVING__AUTH__TOKEN"] == {
            "name": "recsys-secrets",
            "key": "auth-token",
            "optional": False,
        }
        assert "RECSYS__FEATURE_STORE__REDIS__PASSWORD" in env
    assert not find(production, "Secret")
    # The gateway's event spool is on its own volume (tests/infra/test_helm_spool.py).
    plain = {e["name"]: e["value"] for e in gateway["env"] if "value" in e}
    assert plain["RECSYS__FEATURE_STORE__SPOOL_PATH"] == "/var/lib/recsys/spool/event-spool.jsonl"

    # Artefacts are copied in by an initContainer from a versioned image.
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/recsys/artifacts:0.1.0"

    # Spread across zones and nodes, with the pod selector filled in.
    selector = deployment["spec"]["selector"]["matchLabels"]
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector
    assert pod["terminationGracePeriodSeconds"] > 5 + 10  # preStop + the gateway's drain


def test_config_checksum_rolls_pods_on_config_change() -> None:
    def checksum(*sets: str) -> str:
        deployment = one(render(sets=sets), "Deployment", "recsys")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum("config.serving.max_concurrent_rpcs=100")


def test_chart_managed_secret_and_its_checksum() -> None:
    manifests = render(sets=["secrets.values.auth-token=s3cret"])
    secret = one(manifests, "Secret", "recsys-secrets")
    assert set(secret["data"]) == {"auth-token"}
    annotations = one(manifests, "Deployment", "recsys")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert "checksum/secret" in annotations


def _settings_from(config_map: Manifest, tmp_path: Path, environ: dict[str, str]) -> Any:
    from gateway.config import load_settings

    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"], encoding="utf-8")
    return load_settings(path, environ)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_config_loads_into_the_gateway_settings(values: Path, tmp_path: Path) -> None:
    """The ConfigMap and the secret env names are accepted by the service's typed Settings."""
    manifests = render(values, kube_version=kube_version_for(values))
    # A Deployment, or a StatefulSet where the values keep the event spool on a volume per pod.
    [workload] = find(manifests, "Deployment", "recsys") + find(manifests, "StatefulSet", "recsys")
    gateway = workload["spec"]["template"]["spec"]["containers"][0]
    environ = {
        e["name"]: e.get("value") or "x"
        for e in gateway.get("env", [])
        if e["name"].startswith("RECSYS__")
    }
    settings = _settings_from(one(manifests, "ConfigMap", "recsys-config"), tmp_path, environ)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert settings.serving.port == ports["grpc"]
    assert settings.monitoring.metrics.port == ports["metrics"]
    assert settings.serving.host == "0.0.0.0"
    assert settings.monitoring.metrics.host == "0.0.0.0"


def test_default_config_points_at_the_release_services(default: list[Manifest]) -> None:
    config = yaml.safe_load(one(default, "ConfigMap", "recsys-config")["data"]["config.yaml"])
    assert config["model"]["ranker"]["triton_grpc_url"] == "recsys-triton.recsys.svc:8001"
    assert config["model"]["ranker"]["triton_http_url"] == "recsys-triton.recsys.svc:8000"
    assert config["model"]["artifacts_dir"] == "/var/lib/recsys/build"
    assert config["feature_store"]["redis"]["url"] == "redis://redis:6379/0"
    assert config["feature_store"]["postgres"]["dsn"] == "postgresql://recsys@postgres:5432/recsys"
    assert config["serving"]["port"] == "50051"


def test_services(production: list[Manifest]) -> None:
    service = one(production, "Service", "recsys")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 50051
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == 9464
    assert ports["sidecar-metrics"]["port"] == 9465
    assert "admin" not in ports

    triton = one(production, "Service", "recsys-triton")
    assert {p["name"]: p["port"] for p in triton["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }


def test_selectors_match_pod_labels(production: list[Manifest]) -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in find(production, "Deployment") + find(production, "StatefulSet")
    }

    def selects(selector: dict[str, str]) -> set[str]:
        return {n for n, labels in pods.items() if selector.items() <= labels.items()}

    assert selects(one(production, "Service", "recsys")["spec"]["selector"]) == {"recsys"}
    assert selects(one(production, "Service", "recsys-triton")["spec"]["selector"]) == {
        "recsys-triton"
    }
    for pdb in find(production, "PodDisruptionBudget"):
        assert len(selects(pdb["spec"]["selector"]["matchLabels"])) == 1
    for policy in find(production, "NetworkPolicy"):
        assert len(selects(policy["spec"]["podSelector"]["matchLabels"])) == 1
    assert one(production, "PodDisruptionBudget", "recsys")["spec"]["minAvailable"] == "80%"


def test_triton_model_repository_from_image(production: list[Manifest]) -> None:
    deployment = one(production, "Deployment", "recsys-triton")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/recsys/triton-models:0.1.0"
    assert init["command"] == ["cp", "-R", "/models/.", "/model-repository/"]
    (triton,) = pod["containers"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["image"].endswith("-py3")
    assert triton["command"] == ["tritonserver"]
    assert "--model-repository=/models" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["model-repository"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_model_repository_and_artifacts_from_pvc() -> None:
    manifests = render(CHART / "ci" / "pvc-values.yaml")
    triton = one(manifests, "Deployment", "recsys-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in triton
    volumes = {v["name"]: v for v in triton["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"] == {
        "claimName": "recsys-models",
        "readOnly": True,
    }
    gateway = one(manifests, "Deployment", "recsys")["spec"]["template"]["spec"]
    assert "initContainers" not in gateway
    mount = next(m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == "artifacts")
    assert mount["subPath"] == "current"


def test_pvc_source_requires_a_claim() -> None:
    result = helm_template(sets=["triton.modelRepository.source=pvc"], expect_ok=False)
    assert result.returncode != 0
    assert "triton.modelRepository.existingClaim is required" in result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["unknownKey=1"], "Additional property unknownKey is not allowed"),
        (["gateway.ports.grpc=70000"], "gateway.ports.grpc"),
        (["triton.modelRepository.source=s3"], "triton.modelRepository.source"),
        (["config.extra_section.key=1"], "extra_section"),
        (["autoscaling.latency.targetAverageValue=100ms"], "targetAverageValue"),
    ],
)
def test_values_schema_rejects_bad_values(sets: list[str], message: str) -> None:
    result = helm_template(sets=sets, expect_ok=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_schema_is_strict_json_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    strict = [k for k, v in schema["properties"].items() if v.get("additionalProperties") is False]
    assert {"gateway", "sidecar", "autoscaling", "triton", "secrets", "config"} <= set(strict)


def test_minimal_values(tmp_path: Path) -> None:
    manifests = render(MINIMAL)
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["gateway"]
    assert "affinity" not in pod


def test_monitoring_resources_off_by_default(default: list[Manifest]) -> None:
    kinds = {m["kind"] for m in default}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    assert not [m for m in find(default, "ConfigMap") if "grafana_dashboard" in str(m)]


def test_service_monitors(production: list[Manifest]) -> None:
    monitors = {m["metadata"]["name"]: m for m in find(production, "ServiceMonitor")}
    assert set(monitors) == {"recsys", "recsys-triton"}
    services = {s["metadata"]["name"]: s for s in find(production, "Service")}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        service = services[name]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert endpoint["interval"] == "15s"
    assert [e["port"] for e in monitors["recsys"]["spec"]["endpoints"]] == [
        "metrics",
        "sidecar-metrics",
    ]


def _check_rule_groups(groups: list[dict[str, Any]]) -> None:
    assert groups
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["name"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert isinstance(rule["expr"], str)
            assert rule["expr"].strip()


def test_prometheus_rule_from_values(production: list[Manifest]) -> None:
    rule = one(production, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    _check_rule_groups(rule["spec"]["groups"])


def test_prometheus_rule_not_rendered_without_groups() -> None:
    manifests = render(sets=["prometheusRule.enabled=true", "prometheusRule.loadFiles=false"])
    assert not find(manifests, "PrometheusRule")


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A copy of the chart whose files/ the test can change."""
    copy = tmp_path / "recsys"
    shutil.copytree(CHART, copy)
    for folder in ("dashboards", "prometheus-rules"):
        for f in (copy / "files" / folder).iterdir():
            if f.name != ".gitkeep":
                f.unlink()
    return copy


def test_dashboards_and_rule_files(chart_copy: Path) -> None:
    enabled = ["grafanaDashboards.enabled=true", "prometheusRule.enabled=true"]
    # With no files at all: no dashboard ConfigMaps, no PrometheusRule, and still valid.
    manifests = render(chart=chart_copy, sets=enabled)
    assert not [m for m in find(manifests, "ConfigMap") if "dashboard" in m["metadata"]["name"]]
    assert not find(manifests, "PrometheusRule")

    dashboard = {"title": "recsys overview", "panels": [], "schemaVersion": 39}
    (chart_copy / "files" / "dashboards" / "recsys_overview.json").write_text(
        json.dumps(dashboard), encoding="utf-8"
    )
    rules = {
        "groups": [{"name": "from-file", "rules": [{"record": "recsys:up", "expr": "up{job='x'}"}]}]
    }
    (chart_copy / "files" / "prometheus-rules" / "recsys.yaml").write_text(
        yaml.safe_dump(rules), encoding="utf-8"
    )
    manifests = render(chart=chart_copy, sets=enabled)
    config_map = one(manifests, "ConfigMap", "recsys-dashboard-recsys-overview")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["recsys_overview.json"]) == dashboard
    kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
    groups = one(manifests, "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == ["from-file"]
    _check_rule_groups(groups)


def test_shipped_rule_and_dashboard_files_render() -> None:
    """Whatever files/ holds today (possibly nothing) renders into valid objects."""
    manifests = render(
        PRODUCTION, sets=["grafanaDashboards.enabled=true", "prometheusRule.enabled=true"]
    )
    for config_map in find(manifests, "ConfigMap"):
        kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
        if config_map["metadata"]["labels"].get("grafana_dashboard") == "1":
            for text in config_map["data"].values():
                json.loads(text)
    _check_rule_groups(one(manifests, "PrometheusRule")["spec"]["groups"])


def test_notes_render(chart_copy: Path) -> None:
    """NOTES.txt renders (wrapped in a ConfigMap: `helm template` skips NOTES, and
    `helm install --dry-run` needs a cluster)."""
    notes = (CHART / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart_copy / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" }}' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: |\n    {{- include "test.notes" . | nindent 4 }}\n',
        encoding="utf-8",
    )
    text = one(render(PRODUCTION, chart=chart_copy), "ConfigMap", "notes")["data"]["notes"]
    assert "kubectl -n recsys rollout status statefulset/recsys" in text
    assert "Autoscaling: 5-50 replicas, CPU target 70%, p99 target 100ms." in text
    assert "custom.metrics.k8s.io/v1beta1/namespaces/recsys/pods/*/" in text
    assert "WARNING" not in text
