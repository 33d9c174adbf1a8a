"""The layers of docs/architecture.md hold: every import of every module (inside functions
and under TYPE_CHECKING too) points down, never up or sideways, and the domain and the flows
stay clear of the frameworks they must not touch."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each of our top-level packages may import of the others (its own modules always).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "cme": frozenset({"flows", "usecases", "pipelines", "registry"}),  # composition root, CLI
    "flows": frozenset({"usecases", "pipelines", "registry"}),
    "usecases": frozenset({"pipelines", "registry"}),
    "registry": frozenset({"pipelines"}),
    "pipelines": frozenset(),  # what MLflow logs beside a model: it must stand alone
}
# Frameworks a layer must not touch, with the reason a reader gets when it does.
MUST_NOT_IMPORT: dict[str, dict[str, str]] = {
    "pipelines": {
        "prefect": "the domain runs without an orchestrator",
        "sqlalchemy": "the domain knows no database",
    },
    "usecases": {"prefect": "a use case runs the same from the CLI, a flow or a test"},
    "registry": {"prefect": "the systems of record know no orchestrator"},
    "flows": {
        "sqlalchemy": "flows only wire: SQL belongs to the registry",
        "mlflow": "flows only wire: MLflow calls belong to the use cases and the registry",
    },
}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, anywhere in it, with the line of the import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def layering_violations(root: Path) -> list[str]:
    found = []
    for layer, allowed in MAY_IMPORT.items():
        for path in sorted((root / layer).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic's scripts: frozen
            for line, module in imported_modules(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(root)}:{line} imports {module}"
                if top in MAY_IMPORT and top != layer and top not in allowed:
                    found.append(f"{where}: {layer} may import only {sorted(allowed)}")
                reason = MUST_NOT_IMPORT.get(layer, {}).get(top)
                if reason:
                    found.append(f"{where}: {reason}")
    return found


def test_every_import_points_down_the_layers() -> None:
    assert layering_violations(ROOT) == []


def test_the_check_names_an_import_that_points_up(tmp_path: Path) -> None:
    for layer in MAY_IMPORT:
        (tmp_path / layer).mkdir()
    (tmp_path / "usecases" / "serving.py").write_text(
        "def f():\n    from cme.bootstrap import App\n    return App\n"
    )
    (tmp_path / "pipelines" / "gate.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sqlalchemy\n"
    )
    assert layering_violations(tmp_path) == [
        "usecases/serving.py:2 imports cme.bootstrap: usecases may import only "
        "['pipelines', 'registry']",
        "pipelines/gate.py:3 imports sqlalchemy: the domain knows no database",
    ]


def test_the_flows_open_the_platform_the_composition_root_builds() -> None:
    from cme.bootstrap import open_platform
    from flows.common import composition_root

    assert composition_root() is open_platform


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_is_a_package(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").is_file()
