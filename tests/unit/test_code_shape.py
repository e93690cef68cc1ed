"""infra/scripts/code_shape.py reads imports, lines and function lengths from source text."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "scripts" / "code_shape.py"


@pytest.fixture(scope="module")
def code_shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("code_shape", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> None:
    (root / "gateway").mkdir()
    (root / "feature_service").mkdir()
    (root / "tests").mkdir()
    (root / "gateway" / "server.py").write_text(
        "import feature_service.store\n"
        "from feature_service import kernels\n"
        "from recsys.v1 import recommendation_pb2\n"
        "from . import local\n"
        "\n"
        "class Server:\n"
        "    def start(self) -> None:\n"
        "        a = 1\n"
        "        b = 2\n"
        "        print(a + b)\n",
        encoding="utf-8",
    )
    (root / "feature_service" / "store.py").write_text(
        "import numpy\n"
        "from triton_models.categories import rules\n"
        "\n"
        "def get() -> int:\n"
        "    return 1\n",
        encoding="utf-8",
    )
    (root / "tests" / "test_x.py").write_text("import gateway.server\n", encoding="utf-8")


def test_imports_between_packages_are_counted_per_statement(
    code_shape: ModuleType, tmp_path: Path
) -> None:
    _tree(tmp_path)
    edges = code_shape.import_edges(tmp_path)
    # Relative, third-party and intra-package imports are not arrows; tests are left out.
    assert edges == {
        ("gateway", "feature_service"): 2,
        ("gateway", "protos"): 1,
        ("feature_service", "triton_models"): 1,
    }


def test_lines_and_longest_functions(
    code_shape: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tree(tmp_path)
    assert code_shape.lines_per_package(tmp_path)["gateway"] == 10
    assert code_shape.lines_per_package(tmp_path)["tests"] == 1
    assert code_shape.longest_functions(tmp_path, 2) == [
        (4, "gateway/server.py:Server.start"),
        (2, "feature_service/store.py:get"),
    ]
    assert code_shape.main([str(tmp_path), "--json", "--top", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["longest_functions"] == [
        {"lines": 4, "function": "gateway/server.py:Server.start"}
    ]
