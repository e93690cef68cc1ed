"""The local launchers (infra/local) stay out of the service: nothing the service runs imports
them, and neither the wheel, its console scripts nor the gateway image carries them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SERVICE_PACKAGES = ("gateway", "feature_service", "triton_models", "ab")


def _imported_top_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", SERVICE_PACKAGES)
def test_the_service_never_imports_infra(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    importers = [str(f.relative_to(REPO)) for f in files if "infra" in _imported_top_packages(f)]
    assert importers == []


def test_the_wheel_and_its_scripts_leave_infra_out() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "infra" not in packages
    assert set(SERVICE_PACKAGES) <= set(packages)
    scripts = project["project"]["scripts"]
    assert [name for name, target in scripts.items() if target.startswith("infra")] == []


def test_the_gateway_image_leaves_infra_out() -> None:
    docker = REPO / "infra" / "docker"
    copies = [
        line.split()[1]
        for line in (docker / "gateway.Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from")
    ]
    assert copies and not [source for source in copies if source.startswith("infra")]
    kept = (docker / "gateway.Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!infra/" not in kept and "!infra" not in kept
