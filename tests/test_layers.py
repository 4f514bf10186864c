"""The import graph obeys the layer table of docs/architecture.md: no module imports one from a higher layer.

Every ``import``/``from ... import`` of the package counts, including the ones inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "baldro_ray"

# The first matching prefix gives a module's layer (the table in docs/architecture.md).
LAYERS: list[tuple[str, int]] = [
    ("baldro_ray.objectives", 0),
    ("baldro_ray", 0),  # the package itself: its version only
    ("baldro_ray.hub", 0),
    ("baldro_ray.atomic", 0),
    ("baldro_ray.errors", 0),
    ("baldro_ray.console", 0),
    ("baldro_ray.bars", 1),
    ("baldro_ray.run_folder", 1),
    ("baldro_ray.models", 1),
    ("baldro_ray.cluster", 1),
    ("baldro_ray.data", 2),
    ("baldro_ray.config", 3),
    ("baldro_ray.train", 4),
    ("baldro_ray.eval", 4),
    ("baldro_ray.tracking", 4),
    ("baldro_ray.embedded", 5),
    ("baldro_ray.inputs", 5),
    ("baldro_ray.unlearn", 5),
    ("baldro_ray.tune", 5),
    ("baldro_ray.quickstart", 5),
    ("baldro_ray.cli", 6),
]

# Imports within one layer that the table allows: layer 5's drivers build on each other in this order.
SAME_LAYER_USES = {
    "baldro_ray.inputs": ("baldro_ray.embedded",),
    "baldro_ray.unlearn": ("baldro_ray.inputs", "baldro_ray.embedded"),
    "baldro_ray.tune": ("baldro_ray.unlearn", "baldro_ray.embedded"),
    "baldro_ray.quickstart": ("baldro_ray.unlearn", "baldro_ray.embedded"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "baldro_ray" or name.startswith("baldro_ray.")}


def _layer(module: str) -> tuple[str, int]:
    for prefix, layer in LAYERS:
        if module == prefix or (prefix != "baldro_ray" and module.startswith(prefix + ".")):
            return prefix, layer
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


GRAPH = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_goes_up_a_layer(module: str) -> None:
    own_prefix, own = _layer(module)
    for target in GRAPH[module]:
        if target == "baldro_ray":
            continue
        prefix, layer = _layer(target)
        assert layer <= own, f"{module} (layer {own}) imports {target} (layer {layer})"
        if layer == own == 5 and prefix != own_prefix:
            assert prefix in SAME_LAYER_USES.get(own_prefix, ()), f"{module} imports {target}"


def test_named_boundaries_of_the_architecture() -> None:
    """The boundaries the run-folder refactor set: data/ knows no evaluation; nothing but the driver knows the loop."""
    for module, targets in GRAPH.items():
        if module.startswith("baldro_ray.data"):
            assert not any(t.startswith("baldro_ray.eval") for t in targets), module
        if module.startswith(("baldro_ray.eval", "baldro_ray.tracking", "baldro_ray.tune")):
            assert "baldro_ray.train.unlearn" not in targets, module
        if module.startswith("baldro_ray.objectives"):
            assert all(t.startswith("baldro_ray.objectives") for t in targets), module


def test_objectives_import_nothing_of_ray() -> None:
    for path in (PACKAGE / "objectives").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(name == "ray" or name.startswith("ray.") for name in names), path
