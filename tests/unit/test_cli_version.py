"""Every console script of the distribution answers `--version` with the installed version."""

from __future__ import annotations

from importlib.metadata import EntryPoint, distribution, version

import pytest

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
