"""Every CLI answers `--version`: the console scripts and `python -m` modules of the service's
distribution with its installed version, `python -m recsys.client` with the client's."""

from __future__ import annotations

import subprocess
import tomllib
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, version

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(
    (ep for ep in distribution("recsys").entry_points if ep.group == "console_scripts"),
    key=lambda ep: ep.name,
)


def test_the_cli_scripts_are_installed() -> None:
    names = [ep.name for ep in SCRIPTS]
    assert names == ["recsys-ab", "recsys-gateway", "recsys-models"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda ep: ep.name)
def test_version(script: EntryPoint, capsys: pytest.CaptureFixture[str]) -> None:
    main = script.load()
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"{script.name} {version('recsys')}\n"


PYTHON = REPO / ".venv" / "bin" / "python"
MODULES = {
    "ab": "recsys-ab",
    "gateway.main": "recsys-gateway",
    "infra.local.runner": "python -m infra.local.runner",
    "infra.local.tritonserver": "python -m infra.local.tritonserver",
    "triton_models.cli": "recsys-models",
    "triton_models.readme_table": "python -m triton_models.readme_table",
}
"""The `python -m` entry points of the service's distribution and the name each prints (the
console scripts' own, where the module is one)."""


def _version_line(module: str) -> subprocess.CompletedProcess[str]:
    assert PYTHON.is_file(), f"{PYTHON} not found: run `make install`"
    return subprocess.run(
        [str(PYTHON), "-m", module, "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("module", "prog"), MODULES.items(), ids=list(MODULES))
def test_python_m_version(module: str, prog: str) -> None:
    done = _version_line(module)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{prog} {version('recsys')}\n"


def test_client_cli_version_from_the_source_tree() -> None:
    """The service's environment imports `recsys.client` from protos/ without installing the
    `recsys-client` distribution: the version is protos/pyproject.toml's, marked as such (the
    installed wheel's, from its metadata, is checked in tests/integration/test_client_package.py).
    """
    with pytest.raises(PackageNotFoundError):
        distribution("recsys-client")
    project = tomllib.loads((REPO / "protos" / "pyproject.toml").read_text())["project"]
    done = _version_line("recsys.client")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"python -m recsys.client {project['version']} (source tree)\n"
