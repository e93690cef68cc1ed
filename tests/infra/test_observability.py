"""Prometheus rules, their unit tests, the scrape and Alertmanager configs, Grafana dashboards.

The sources live in infra/prometheus/, infra/alertmanager/ and infra/grafana/; the Helm chart
ships byte-identical copies in files/prometheus-rules/ and files/dashboards/ (Helm only reads
files inside the chart, and a copy survives `helm package`, OCI pushes and checkouts without
symlink support), and these tests fail when a copy drifts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.tooling import (
    CHART,
    INFRA,
    REPO_ROOT,
    Manifest,
    find,
    one,
    render,
    run,
    system_tool,
)

PROMETHEUS = INFRA / "prometheus"
RULES_DIR = PROMETHEUS / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yaml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yaml"))
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RUNBOOK = PROMETHEUS / "RUNBOOK.md"
ALERTMANAGER_CONFIG = INFRA / "alertmanager" / "alertmanager.yml"
DASHBOARDS_DIR = INFRA / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARDS_DIR.glob("*.json"))
COMPOSE_PROMETHEUS = INFRA / "docker" / "compose" / "prometheus.yml"

SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "runbook_url"}
# Jobs the rules select on; the local, compose and Kubernetes scrape configs must use them.
JOBS = {"recsys-gateway", "recsys-ab-sidecar", "triton"}

# Metrics other components will export (issue #7), by exposition name.
FUTURE_METRICS = {
    "recsys_feature_cache_requests_total",  # feature_service: {level, entity, result}
    "recsys_ranker_score_bucket",  # gateway: histogram {model}
    "recsys_ranker_score_sum",
    "recsys_ranker_score_count",
    "recsys_experiment_guardrail_breached",  # ab sidecar: gauge {experiment, metric}
    "recsys_experiment_decisions_total",  # ab sidecar: {experiment, decision}
    "recsys_experiment_srm_p_value",  # ab sidecar: gauge {experiment}
    "recsys_experiment_metric",  # ab sidecar: gauge {experiment, variant, metric}
    "recsys_experiment_controller_leader",  # ab sidecar: gauge, 1 on the lease holder
}
# Exporters outside the project: Triton, client libraries' process collectors,
# kube-state-metrics, and Prometheus itself.
FOREIGN_PREFIXES = ("nv_", "process_", "kube_")
FOREIGN_NAMES = {"up"}

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
# Grafana's variables, replaced by something PromQL accepts before promtool parses an expr.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


# --- helpers -----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def strip_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    # Template variables inside label matchers ($experiment) become plain strings.
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.groups()
        if call is None and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def gateway_metric_names() -> set[str]:
    """Exposition names of every metric gateway/prometheus_metrics.py and the feature store
    (served on the gateway's /metrics) declare."""
    from feature_service.prometheus_metrics import FeatureStoreMetrics
    from gateway.prometheus_metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names: set[str] = set()
    for registry in (Metrics().registry, FeatureStoreMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def unknown_metrics(names: set[str], known: set[str]) -> set[str]:
    return {
        n
        for n in names
        if n not in known and n not in FOREIGN_NAMES and not n.startswith(FOREIGN_PREFIXES)
    }


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    return gateway_metric_names() | FUTURE_METRICS | recorded_names()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def chart_home() -> str:
    home: str = load_yaml(CHART / "Chart.yaml")["home"]
    return home.rstrip("/")


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in DASHBOARDS]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield query["query"] if isinstance(query, dict) else query


def label_values_metric(query: str) -> set[str]:
    """The metric of a Grafana `label_values(metric{...}, label)` variable query."""
    match = re.fullmatch(
        r"label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,)?\s*\w+\s*\)", query
    )
    assert match, f"unsupported variable query: {query}"
    return {match.group(1)} if match.group(1) else set()


# --- rules -------------------------------------------------------------------------------


def test_rule_files_present() -> None:
    assert [p.name for p in RULE_FILES] == ["recsys-alerts.yaml", "recsys-recording.yaml"]
    assert RULE_TESTS


def test_promtool_check_rules() -> None:
    result = run([system_tool("promtool"), "check", "rules", *RULE_FILES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = run([system_tool("promtool"), "test", "rules", *RULE_TESTS], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_alerts_have_severity_and_annotations() -> None:
    found = alerts()
    assert len({a["alert"] for a in found}) >= 12
    seen: set[tuple[str, str]] = set()
    for alert in found:
        name = alert["alert"]
        severity = alert.get("labels", {}).get("severity")
        assert severity in SEVERITIES, name
        assert (name, severity) not in seen, f"{name} has two {severity} rules"
        seen.add((name, severity))
        annotations = alert.get("annotations", {})
        assert set(annotations) >= ANNOTATIONS, f"{name}: {set(annotations)}"
        assert all(str(annotations[k]).strip() for k in ANNOTATIONS), name


def test_runbook_urls_point_at_runbook_sections() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    base = f"{chart_home()}/blob/main/{RUNBOOK.relative_to(REPO_ROOT).as_posix()}#"
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        assert url.startswith(base), url
        assert url.removeprefix(base) in anchors, f"{alert['alert']}: no section for {url}"
    assert {github_anchor(a["alert"]) for a in alerts()} == anchors


def _alert_rule_tests() -> Iterator[dict[str, Any]]:
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            yield from case.get("alert_rule_test", [])


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for check in _alert_rule_tests():
        expected = check.get("exp_alerts") or []
        if not expected:
            quiet.add(check["alertname"])
        for alert in expected:
            fired.add((check["alertname"], alert["exp_labels"]["severity"]))
            # Annotations are compared in full, so the templates are exercised.
            assert set(alert["exp_annotations"]) >= ANNOTATIONS, check["alertname"]
    wanted = {(a["alert"], a["labels"]["severity"]) for a in alerts()}
    assert wanted - fired == set(), "alert levels never seen firing in a test"
    assert {name for name, _ in wanted} - quiet == set(), "alerts never tested quiet"


def test_quantile_and_ratio_recordings_are_tested() -> None:
    tested = " ".join(
        check["expr"]
        for path in RULE_TESTS
        for case in load_yaml(path)["tests"]
        for check in case.get("promql_expr_test", [])
    )
    wanted = {n for n in recorded_names() if re.search(r":p\d\d_|ratio", n)}
    assert wanted
    assert {n for n in wanted if n not in tested} == set()


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (job, le) (rate(foo_bucket{code!~"OK|NOT_FOUND"}[5m] offset 1d)) / on (job)'
        " group_left () bar:ratio:rate5m * 0.5 > 1e-3 and abs(baz) or histogram_quantile(0.99, x)"
    )
    assert metric_names(expr) == {"foo_bucket", "bar:ratio:rate5m", "baz", "x"}
    assert unknown_metrics({"recsys_typo_total", "up", "nv_gpu_utilization"}, set()) == {
        "recsys_typo_total"
    }


def test_rules_reference_only_known_metrics(known_metrics: set[str]) -> None:
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule
        unknown = unknown_metrics(names, known_metrics)
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_rules_select_only_scraped_jobs() -> None:
    for rule in rules():
        assert set(re.findall(r'job="([^"]+)"', rule["expr"])) <= JOBS, rule


# --- scrape configs ----------------------------------------------------------------------


def test_promtool_check_config() -> None:
    result = run([system_tool("promtool"), "check", "config", PROMETHEUS_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout


def _targets(config: dict[str, Any]) -> dict[str, set[str]]:
    return {
        job["job_name"]: {t for s in job["static_configs"] for t in s["targets"]}
        for job in config["scrape_configs"]
    }


def test_local_prometheus_scrapes_the_local_stack() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    targets = _targets(config)
    assert {"127.0.0.1:9464", "127.0.0.1:9465", "127.0.0.1:9466"} <= targets["recsys-gateway"]
    assert targets["triton"] == {"127.0.0.1:8002"}
    rule_paths = {p for pattern in config["rule_files"] for p in PROMETHEUS.glob(pattern)}
    assert rule_paths == set(RULE_FILES)
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_compose_prometheus_loads_the_rules() -> None:
    config = load_yaml(COMPOSE_PROMETHEUS)
    assert set(_targets(config)) == JOBS
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    compose = load_yaml(INFRA / "docker" / "docker-compose.yml")
    assert (
        "../prometheus/rules:/etc/prometheus/rules:ro"
        in (compose["services"]["prometheus"]["volumes"])
    )


def test_service_monitors_set_the_rules_job_names() -> None:
    manifests = render(sets=["serviceMonitor.enabled=true"])
    jobs = set()
    for monitor in find(manifests, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            (relabel,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
            jobs.add(relabel["replacement"])
    assert jobs == JOBS


# --- Alertmanager ------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    result = run([system_tool("amtool"), "check-config", ALERTMANAGER_CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "alertname=RecsysTritonDown"], "pagerduty-critical,slack-critical"),
        (["severity=warning", "alertname=RecsysHighDegradedRate"], "slack-warning"),
        (["alertname=Unlabelled"], "default"),
    ],
)
def test_alertmanager_routes(labels: list[str], receivers: str) -> None:
    result = run(
        [
            system_tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            *labels,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_alertmanager_secrets_come_from_files() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    assert "hooks.slack.com" not in text
    assert config["global"]["slack_api_url_file"].startswith("/etc/alertmanager/secrets/")
    for receiver in config["receivers"]:
        for pagerduty in receiver.get("pagerduty_configs", []):
            assert not {"routing_key", "service_key"} & set(pagerduty)
            assert pagerduty["routing_key_file"].startswith("/etc/alertmanager/secrets/")
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack


def test_alertmanager_inhibits_warning_by_critical() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    rule = next(
        r for r in config["inhibit_rules"] if r["source_matchers"] == ['severity="critical"']
    )
    assert rule["target_matchers"] == ['severity="warning"']
    assert {"alertname", "job"} <= set(rule["equal"])
    assert config["route"]["receiver"] == "default"


# --- Grafana -----------------------------------------------------------------------------


def test_dashboards_structure() -> None:
    assert len(DASHBOARDS) >= 5
    uids = set()
    for name, dashboard in dashboards():
        assert dashboard["uid"] and dashboard["uid"] not in uids, name
        uids.add(dashboard["uid"])
        assert dashboard["title"], name
        assert dashboard["schemaVersion"] >= 36, name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(dashboard):
            where = f"{name}: {panel.get('title')}"
            pos = panel["gridPos"]
            assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), where
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, where
            if panel["type"] == "row":
                continue
            assert panel["title"], where
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target.get("datasource", DATASOURCE) == DATASOURCE, where
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, name


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every panel query (as a recording rule) once Grafana's variables are set."""
    exprs = sorted(
        {strip_grafana_variables(e) for _, d in dashboards() for e in dashboard_exprs(d)}
    )
    rules_file = tmp_path / "dashboards.yaml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboards",
                        "rules": [
                            {"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)
                        ],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    result = run([system_tool("promtool"), "check", "rules", rules_file])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_reference_only_known_metrics(known_metrics: set[str]) -> None:
    for name, dashboard in dashboards():
        for expr in dashboard_exprs(dashboard):
            names = metric_names(expr)
            assert names, f"{name}: {expr}"
            assert not unknown_metrics(names, known_metrics), f"{name}: {expr}"
        for query in variable_queries(dashboard):
            assert not unknown_metrics(label_values_metric(query), known_metrics), name


def test_dashboards_cover_the_issue() -> None:
    exprs = " ".join(e for _, d in dashboards() for e in dashboard_exprs(d))
    for needle in (
        "recsys_grpc_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(recsys_grpc_request_duration_seconds_bucket",
        "recsys_stage_duration_seconds_bucket",
        "recsys_candidates_",
        "recsys_ranker_score_bucket",
        "recsys_degraded_responses_total",
        "nv_inference_queue_duration_us",
        "nv_inference_request_duration_us",
        "recsys_exposures_total",
        "recsys_experiment_metric",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "kube_deployment_status_replicas",
        "recsys_feature_cache_hit_ratio",
    ):
        assert needle in exprs, needle


# --- the chart's copies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "copy", "pattern"),
    [
        (RULES_DIR, CHART / "files" / "prometheus-rules", "*.yaml"),
        (DASHBOARDS_DIR, CHART / "files" / "dashboards", "*.json"),
    ],
    ids=["rules", "dashboards"],
)
def test_chart_copies_are_identical(source: Path, copy: Path, pattern: str) -> None:
    sources = {p.name: p.read_bytes() for p in source.glob(pattern)}
    copies = {p.name: p.read_bytes() for p in copy.glob(pattern)}
    assert sources
    assert set(copies) == set(sources), f"copy {source} to {copy}"
    for name, data in sources.items():
        assert copies[name] == data, f"{copy / name} differs from {source / name}: copy it again"


def test_chart_renders_the_shipped_rules_and_dashboards() -> None:
    manifests: list[Manifest] = render(
        sets=["prometheusRule.enabled=true", "grafanaDashboards.enabled=true"]
    )
    groups = one(manifests, "PrometheusRule")["spec"]["groups"]
    expected = [g for path in RULE_FILES for g in load_yaml(path)["groups"]]
    assert groups == expected
    config_maps = {m["metadata"]["name"]: m for m in find(manifests, "ConfigMap")}
    for path in DASHBOARDS:
        config_map = config_maps[f"recsys-dashboard-{path.stem}"]
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text("utf-8"))
