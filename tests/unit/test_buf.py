"""buf on the API contract (protos/buf.yaml): lint, and no breaking change against the previous
commit (source and wire compatibility of every language's generated code)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

BUF = REPO / ".tools" / "bin" / "buf"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.is_file(), f"{BUF} not found: run `make tools`"
    return subprocess.run([str(BUF), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _previous_commit() -> str:
    # A clone without history (a shallow CI checkout) has no parent: compare with HEAD, which
    # still checks any change not yet committed.
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD~1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return parent.stdout.strip() if parent.returncode == 0 else "HEAD"


def test_buf_lint() -> None:
    linted = _buf("lint", "protos")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_no_breaking_change_against_the_previous_commit() -> None:
    against = f".git#ref={_previous_commit()},subdir=protos"
    listed = _buf("ls-files", against)
    assert "recsys/v1/recommendation.proto" in listed.stdout, listed.stderr
    checked = _buf("breaking", "protos", "--against", against)
    assert checked.returncode == 0, f"breaking changes against {against}:\n{checked.stdout}"


def test_breaking_check_catches_a_removed_field(tmp_path: Path) -> None:
    changed = tmp_path / "protos"
    shutil.copytree(REPO / "protos", changed, ignore=shutil.ignore_patterns("*.py*", "client"))
    proto = changed / "recsys" / "v1" / "recommendation.proto"
    text = proto.read_text()
    assert "  string session_id = 6;\n" in text
    proto.write_text(text.replace("  string session_id = 6;\n", ""))
    checked = _buf("breaking", str(changed), "--against", "protos")
    assert checked.returncode != 0
    assert 'Previously present field "6" with name "session_id"' in checked.stdout, checked.stdout
