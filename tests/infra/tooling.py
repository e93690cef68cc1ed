"""Shared helpers of the infra tests: locating tools, running helm, parsing manifests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
CHART = INFRA / "helm" / "recsys"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"

# Kubernetes version the chart is rendered for and validated against (kubernetes-validate
# ships schemas for 1.25 ... 1.37).
KUBE_VERSION = "1.30.0"

Manifest = dict[str, Any]


def require_tool(name: str) -> Path:
    """Path of a tool installed by `make tools` (.tools/bin first, then PATH); fail if absent."""
    local = TOOLS_BIN / name
    if local.is_file():
        return local
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found in {TOOLS_BIN} or on PATH: run `make tools` to install it",
            pytrace=False,
        )
    return Path(found)


def system_tool(name: str) -> Path:
    """A tool from a Debian package (`make system`): PATH first, then /usr/bin; fail if absent."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if found is None:
        pytest.fail(f"{name} not found on PATH or in /usr/bin: run `make system`", pytrace=False)
    return Path(found)


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def helm_template(
    *values_files: Path,
    sets: Sequence[str] = (),
    chart: Path = CHART,
    release: str = "recsys",
    namespace: str = "recsys",
    kube_version: str = KUBE_VERSION,
    expect_ok: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` the chart (with its test hooks) for the given values."""
    cmd: list[str | Path] = [
        require_tool("helm"),
        "template",
        release,
        chart,
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
    ]
    for f in values_files:
        cmd += ["--values", f]
    for s in sets:
        cmd += ["--set", s]
    result = run(cmd)
    if expect_ok:
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result


def render(
    *values_files: Path,
    sets: Sequence[str] = (),
    chart: Path = CHART,
    kube_version: str = KUBE_VERSION,
) -> list[Manifest]:
    """The manifests `helm template` renders, parsed."""
    out = helm_template(*values_files, sets=sets, chart=chart, kube_version=kube_version).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """Manifests of one kind (and name)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single manifest of one kind (and name)."""
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def containers(workload: Manifest) -> Iterator[Manifest]:
    """Init and regular containers of a Deployment (or a bare Pod)."""
    spec = workload["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    yield from pod.get("initContainers", [])
    yield from pod["containers"]
