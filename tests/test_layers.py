"""The package's imports go one way: no module imports, even lazily, a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "snd_hf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the snd_hf modules it imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(c for c in candidates if c in modules and c != name)
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → ... → start, ignoring edges into packages (importing a submodule runs its
    package's __init__, which is Python's doing, not a dependency of the submodule)."""
    packages = {name for name in graph if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node] - packages:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" → ".join(cycle) for name in graph if (cycle := _cycle_through(graph, name))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("snd_hf.configuration_snd", ("snd_hf.modeling_snd", "snd_hf.loading", "snd_hf.hub")),
        ("snd_hf.loading", ("snd_hf.modeling_snd", "snd_hf.hub")),
        ("snd_hf.hub", ("snd_hf.modeling_snd",)),
        ("snd_hf.modeling_snd", ("snd_hf.splatting", "snd_hf.data", "snd_hf.training", "snd_hf.eval")),
        ("snd_hf.cameras", ("snd_hf.splatting", "snd_hf.data", "snd_hf.eval")),
        ("snd_hf.files", ("snd_hf.loading", "snd_hf.modeling_snd")),
        ("snd_hf.images", ("snd_hf",)),  # the one image decoder sits below everything that reads pictures
        ("snd_hf.run_folder", ("snd_hf.extract", "snd_hf.demo", "snd_hf.modeling_snd", "snd_hf.image_processing_snd")),
        ("snd_hf.fields.field", ("snd_hf.splatting.mvsplat",)),  # geometry helpers come from snd_hf.cameras
        ("snd_hf.splatting.gaussians", ("snd_hf.training", "snd_hf.eval", "snd_hf.fields")),
    ],
)
def test_lower_modules_do_not_import_higher_ones(module, forbidden):
    imported = import_graph()[module]
    wrong = sorted(m for m in imported if m.startswith(forbidden))
    assert not wrong, f"{module} imports {wrong}"
