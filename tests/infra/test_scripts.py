"""infra/scripts: deploy, rollback and monitor print the helm/kubectl commands they run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.infra.tooling import CHART, INFRA, require_tool, run

SCRIPTS = INFRA / "scripts"
COMMANDS = ("deploy", "rollback", "monitor")
SHELL_FILES = [
    SCRIPTS / "deploy",
    SCRIPTS / "rollback",
    SCRIPTS / "monitor",
    SCRIPTS / "lib.sh",
    INFRA / "nginx" / "render-config",
    INFRA / "docker" / "compose" / "nginx-prefix.sh",
]


def dry_run(script: str, *args: str) -> list[list[str]]:
    """The commands a script prints with --dry-run, each split into its arguments."""
    result = run([SCRIPTS / script, "--dry-run", *args])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert lines, result.stdout
    return [shlex.split(line[2:].removesuffix(" &")) for line in lines]


@pytest.mark.parametrize("script", COMMANDS)
def test_help(script: str) -> None:
    result = run([SCRIPTS / script, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {script} ")
    assert "--dry-run" in result.stdout


@pytest.mark.parametrize("script", COMMANDS)
def test_unknown_argument_fails(script: str) -> None:
    result = run([SCRIPTS / script, "--no-such-flag"])
    assert result.returncode == 2
    assert "unknown argument" in result.stderr


def test_shellcheck() -> None:
    result = run([require_tool("shellcheck"), "-x", *SHELL_FILES])
    assert result.returncode == 0, result.stdout


def test_deploy_dry_run() -> None:
    values = str(CHART / "ci" / "production-values.yaml")
    commands = dry_run(
        "deploy", "--release", "shop", "-n", "prod", "-f", values, "--image-tag", "1.2.3"
    )
    assert commands == [
        ["helm", "lint", "--strict", str(CHART), "--values", values, "--set", "image.tag=1.2.3"],
        [
            "helm",
            "upgrade",
            "--install",
            "shop",
            str(CHART),
            "--namespace",
            "prod",
            "--create-namespace",
            "--values",
            values,
            "--set",
            "image.tag=1.2.3",
            "--atomic",
            "--wait",
            "--timeout",
            "10m",
            "--history-max",
            "20",
        ],
        [
            "kubectl",
            "--namespace",
            "prod",
            "rollout",
            "status",
            # The production values run the gateway as a StatefulSet (spool volume per pod).
            "statefulset/shop-recsys",
            "--timeout",
            "10m",
        ],
        ["helm", "status", "shop", "--namespace", "prod"],
    ]


@pytest.mark.parametrize(
    ("args", "workload"),
    [
        ((), "deployment/recsys"),
        (("--set", "gateway.spool.volume=persistentVolume"), "statefulset/recsys"),
        (("-f", str(CHART / "ci" / "production-values.yaml"), "--workload", "deployment"),
         "deployment/recsys"),
    ],
    ids=["chart-default", "persistent-spool", "told"],
)  # fmt: skip
def test_deploy_waits_for_the_workload_the_values_render(
    args: tuple[str, ...], workload: str
) -> None:
    commands = dry_run("deploy", "--no-lint", *args)
    assert commands[1][-4:-2] == ["status", workload]


@pytest.mark.parametrize("script", ["rollback", "monitor"])
def test_workload_option(script: str) -> None:
    commands = dry_run(script, "--workload", "statefulset")
    status = next(c for c in commands if "rollout" in c)
    assert "statefulset/recsys" in status
    result = run([SCRIPTS / script, "--dry-run", "--workload", "daemonset"])
    assert result.returncode == 2
    assert "deployment or statefulset" in result.stderr


def test_deploy_release_named_like_the_chart_keeps_its_name() -> None:
    commands = dry_run("deploy", "--no-lint", "--kube-context", "prod-eu")
    assert commands[0][:4] == ["helm", "upgrade", "--install", "recsys"]
    assert "--kube-context" in commands[0]
    assert commands[1] == [
        "kubectl",
        "--namespace",
        "recsys",
        "--context",
        "prod-eu",
        "rollout",
        "status",
        "deployment/recsys",
        "--timeout",
        "10m",
    ]


def test_rollback_dry_run() -> None:
    commands = dry_run("rollback", "--revision", "7", "--timeout", "5m")
    assert commands == [
        ["helm", "history", "recsys", "--namespace", "recsys", "--max", "10"],
        [
            "helm",
            "rollback",
            "recsys",
            "7",
            "--namespace",
            "recsys",
            "--wait",
            "--timeout",
            "5m",
            "--cleanup-on-fail",
        ],
        [
            "kubectl",
            "--namespace",
            "recsys",
            "rollout",
            "status",
            "deployment/recsys",
            "--timeout",
            "5m",
        ],
    ]


def test_rollback_to_previous_revision() -> None:
    commands = dry_run("rollback")
    assert commands[1][:4] == ["helm", "rollback", "recsys", "--namespace"]


def test_experiment_rollback_dry_run() -> None:
    commands = dry_run(
        "rollback",
        "--experiment",
        "ranker_v2_vs_v3",
        "--reason",
        "ctr guardrail",
        "--experiment-only",
    )
    assert commands == [
        [
            "kubectl",
            "--namespace",
            "recsys",
            "exec",
            "deployment/recsys",
            "-c",
            "ab-sidecar",
            "--",
            "python",
            "-m",
            "ab",
            "rollback",
            "--config",
            "/etc/recsys/config.yaml",
            "--experiment",
            "ranker_v2_vs_v3",
            "--reason",
            "ctr guardrail",
        ]
    ]


def test_experiment_only_needs_an_experiment() -> None:
    result = run([SCRIPTS / "rollback", "--dry-run", "--experiment-only"])
    assert result.returncode == 2


def test_monitor_dry_run() -> None:
    commands = dry_run("monitor", "--release", "recsys-canary", "--local-port", "20000")
    ns = ["kubectl", "--namespace", "recsys"]
    assert commands[:5] == [
        [*ns, "rollout", "status", "deployment/recsys-canary", "--timeout", "10m"],
        [*ns, "get", "hpa", "recsys-canary", "-o", "wide"],
        [*ns, "describe", "hpa", "recsys-canary"],
        [
            "kubectl",
            "get",
            "--raw",
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/recsys/pods/*/"
            "recsys_grpc_request_duration_seconds_p99",
        ],
        [
            *ns,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/instance=recsys-canary,app.kubernetes.io/component=gateway",
            "-o",
            "wide",
        ],
    ]
    assert commands[5] == [*ns, "port-forward", "svc/recsys-canary", "20000:9464"]
    assert commands[6][:3] == ["curl", "-fsS", "http://127.0.0.1:20000/metrics"]


def test_monitor_without_metrics() -> None:
    commands = dry_run("monitor", "--no-metrics")
    assert not [c for c in commands if "port-forward" in c]


def test_scripts_are_executable() -> None:
    for path in SHELL_FILES:
        if path.suffix != ".sh" or path.name == "nginx-prefix.sh":
            assert Path(path).stat().st_mode & 0o111, path
