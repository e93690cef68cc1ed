"""The chart's event-spool option: with gateway.spool.volume=persistentVolume the gateway is a
StatefulSet whose pods each keep a volume for the spool across deletion; lint, render,
validate strictly against the Kubernetes schema, and load the rendered config. The production
values choose it by themselves; the chart's default stays emptyDir (dev clusters)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest

from tests.infra.tooling import (
    CHART,
    KUBE_VERSION,
    Manifest,
    find,
    helm_template,
    one,
    render,
    require_tool,
    run,
)

PRODUCTION = CHART / "ci" / "production-values.yaml"
DEFAULT = CHART / "ci" / "default-values.yaml"
PERSISTENT = ("gateway.spool.volume=persistentVolume",)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def persistent() -> list[Manifest]:
    """The production values as they are: no --set needed for the persistent spool."""
    return render(PRODUCTION)


def _gateway_container(workload: Manifest) -> Manifest:
    container: Manifest = workload["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "gateway"
    return container


def test_lint_and_strict_schema(persistent: list[Manifest]) -> None:
    result = run(
        [require_tool("helm"), "lint", "--strict", CHART, "--values", PRODUCTION,
         "--kube-version", KUBE_VERSION]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for manifest in persistent:
        if manifest["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")


def test_a_statefulset_with_a_volume_per_pod_holds_the_spool(persistent: list[Manifest]) -> None:
    assert find(persistent, "Deployment", "recsys") == []
    gateway = one(persistent, "StatefulSet", "recsys")
    spec = gateway["spec"]
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # The cluster's default storage class: no class named.
    assert "storageClassName" not in claim["spec"]
    # Deleting a pod or scaling it away keeps its claim (and what waits in it).
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert spec["podManagementPolicy"] == "Parallel"
    assert "strategy" not in spec  # a Deployment field
    headless = one(persistent, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == spec["selector"]["matchLabels"]
    container = _gateway_container(gateway)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/recsys/spool"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RECSYS__FEATURE_STORE__SPOOL_PATH"] == "/var/lib/recsys/spool/event-spool.jsonl"
    # The HPA scales the StatefulSet; the PDB selects its pods.
    target = one(persistent, "HorizontalPodAutoscaler", "recsys")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "recsys")
    [pdb] = [p for p in find(persistent, "PodDisruptionBudget") if "triton" not in str(p)]
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_the_rendered_config_puts_the_spool_on_the_volume(
    persistent: list[Manifest], tmp_path: Path
) -> None:
    from gateway.config import load_settings

    gateway = one(persistent, "StatefulSet", "recsys")
    environ = {
        e["name"]: e.get("value") or "x"
        for e in _gateway_container(gateway)["env"]
        if e["name"].startswith("RECSYS__")
    }
    config = tmp_path / "config.yaml"
    config.write_text(
        one(persistent, "ConfigMap", "recsys-config")["data"]["config.yaml"], encoding="utf-8"
    )
    settings = load_settings(config, environ)
    store = settings.feature_store
    assert store.spool_path == Path("/var/lib/recsys/spool/event-spool.jsonl")
    assert store.spool_adopt is not None and store.spool_path.match(store.spool_adopt)


def test_the_option_renders_the_same_statefulset_on_other_values() -> None:
    """--set gateway.spool.volume=persistentVolume on the default values gives the same kind of
    workload and claim as the production values."""
    manifests = render(DEFAULT, sets=PERSISTENT)
    assert find(manifests, "Deployment", "recsys") == []
    [claim] = one(manifests, "StatefulSet", "recsys")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"


def test_a_storage_class_is_passed_through() -> None:
    manifests = render(PRODUCTION, sets=("gateway.spool.persistentVolume.storageClassName=ssd",))
    [claim] = one(manifests, "StatefulSet", "recsys")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "ssd"


@pytest.mark.parametrize("values", [(), (DEFAULT,)], ids=["chart-default", "default-values"])
def test_emptydir_stays_the_chart_default(values: tuple[Path, ...]) -> None:
    manifests = render(*values)
    assert find(manifests, "StatefulSet") == []
    assert find(manifests, "Service", "recsys-pods") == []
    deployment = one(manifests, "Deployment", "recsys")
    assert "volumeClaimTemplates" not in deployment["spec"]
    names = {e["name"] for e in _gateway_container(deployment).get("env", [])}
    assert "RECSYS__FEATURE_STORE__SPOOL_PATH" not in names


def test_schema_rejects_an_unknown_spool_volume() -> None:
    result = helm_template(sets=("gateway.spool.volume=hostPath",), expect_ok=False)
    assert result.returncode != 0
    assert "gateway.spool.volume" in result.stderr or "spool" in result.stderr
