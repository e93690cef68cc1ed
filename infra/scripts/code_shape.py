"""The shape of the code as a reviewer sees it: imports between packages, lines per package,
the longest functions.

    python infra/scripts/code_shape.py [ROOT] [--top N] [--json]

Reads the source as text (ast), runs nothing. Tests are counted as a package of their own but
left out of the import graph (they may import anything).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

PACKAGES = ("protos", "gateway", "triton_models", "feature_service", "ab", "infra", "benchmarks")
"""Top-level folders holding Python, in the order the graph is printed."""

_SKIP_PARTS = {".venv", "build", "__pycache__", ".tools", "node_modules"}


def _python_files(root: Path, package: str) -> list[Path]:
    base = root / package
    if not base.is_dir():
        return []
    return sorted(
        path
        for path in base.rglob("*.py")
        if not _SKIP_PARTS.intersection(path.relative_to(root).parts)
        and not path.name.endswith("_pb2.py")
        and not path.name.endswith("_pb2_grpc.py")
    )


def _top_package(module: str) -> str | None:
    head = module.split(".", 1)[0]
    if head == "recsys":  # the client distribution's import name, built from protos/
        return "protos"
    return head if head in PACKAGES else None


def import_edges(root: Path) -> dict[tuple[str, str], int]:
    """(importing package, imported package) -> number of import statements."""
    edges: Counter[tuple[str, str]] = Counter()
    for package in PACKAGES:
        for path in _python_files(root, package):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    target = _top_package(name)
                    if target is not None and target != package:
                        edges[(package, target)] += 1
    return dict(edges)


def lines_per_package(root: Path) -> dict[str, int]:
    counts = {}
    for package in (*PACKAGES, "tests"):
        counts[package] = sum(
            len(path.read_text(encoding="utf-8").splitlines())
            for path in _python_files(root, package)
        )
    return counts


def longest_functions(root: Path, top: int) -> list[tuple[int, str]]:
    """(lines, "path:qualified name") of the longest functions and methods outside tests."""
    found: list[tuple[int, str]] = []
    for package in PACKAGES:
        for path in _python_files(root, package):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found.extend(_functions(tree, path.relative_to(root).as_posix(), ""))
    found.sort(key=lambda item: (-item[0], item[1]))
    return found[:top]


def _functions(node: ast.AST, where: str, prefix: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (child.end_lineno or child.lineno) - child.lineno + 1
            out.append((length, f"{where}:{prefix}{child.name}"))
            out.extend(_functions(child, where, f"{prefix}{child.name}."))
        elif isinstance(child, ast.ClassDef):
            out.extend(_functions(child, where, f"{prefix}{child.name}."))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", type=Path)
    parser.add_argument("--top", type=int, default=10, help="how many longest functions")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    edges = import_edges(root)
    lines = lines_per_package(root)
    longest = longest_functions(root, args.top)
    if args.json:
        json.dump(
            {
                "imports": [{"from": a, "to": b, "statements": n} for (a, b), n in edges.items()],
                "lines": lines,
                "longest_functions": [{"lines": n, "function": f} for n, f in longest],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    print("## Imports between packages (statements)\n")
    by_source: defaultdict[str, list[str]] = defaultdict(list)
    for (source, target), count in sorted(edges.items()):
        by_source[source].append(f"{target} ({count})")
    for package in PACKAGES:
        if package in by_source:
            print(f"- {package} -> {', '.join(by_source[package])}")
    print("\n## Lines of Python per package\n")
    print("| package | lines |\n|---|---|")
    for package, count in lines.items():
        print(f"| {package} | {count:,} |")
    print(f"\n## The {args.top} longest functions\n")
    print("| lines | function |\n|---|---|")
    for length, name in longest:
        print(f"| {length} | `{name}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
