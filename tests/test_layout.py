"""Import direction: dagster_project -> datasets_builder -> schemas; training -> schemas; evaluation -> training,
model_zoo, datasets_builder, schemas (read by dagster_project, world and npedit); no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "schemas": {"torch", "duckdb", "polars", "dagster", "datasets_builder", "training", "model_zoo", "npedit", "world",
                "evaluation"},
    "model_zoo": {"dagster", "datasets_builder", "training", "npedit", "world", "evaluation"},
    "datasets_builder": {"dagster", "dagster_project", "training", "npedit", "world", "evaluation"},
    "training": {"dagster", "dagster_project", "npedit", "world", "evaluation"},
    "dagster_project": {"training", "npedit", "world"},  # it may read benchmark copies (decontamination)
    "world": {"dagster", "npedit"},  # it runs the builder and the trainer as they are, and judges for evaluation
    "evaluation": {"dagster", "dagster_project", "npedit", "world"},
}


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_flow_one_way(package):
    bad = sorted((f, m) for f, m in _imports(package) if m in FORBIDDEN[package])
    assert not bad, f"{package} imports what it must not: {bad}"


def test_training_reads_the_builder_only_through_its_lake_reader():
    uses = {m for f, m in _imports("training") if m == "datasets_builder"}
    if uses:
        for path in (ROOT / "training").rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datasets_builder"):
                    assert node.module.startswith("datasets_builder.lake"), f"{path}: {node.module}"


def test_no_module_imports_vllm_at_top_level():
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                assert not any(n.split(".")[0] == "vllm" for n in names), path
