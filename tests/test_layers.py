"""The package's imports go one way: no module imports, even lazily, a module that imports it back,
and the rooms of the house sit on floors that only import downwards."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "snd_hf"

# The rooms, lowest first: a module may import its own room and the rooms before it, never one after.
ROOMS = (
    # file-system, schema, pictures and geometry helpers that everything above shares
    "snd_hf.lazy", "snd_hf.files", "snd_hf.schema", "snd_hf.images", "snd_hf.cameras", "snd_hf.distributed", "snd_hf.image_inputs",
    "snd_hf.configuration_snd", "snd_hf.visualization", "snd_hf.run_folder", "snd_hf.feature_shards",
    # checkpoints, the Hub, the model
    "snd_hf.loading", "snd_hf.hub", "snd_hf.model_card", "snd_hf.image_processing_snd", "snd_hf.modeling_snd",
    "snd_hf.initial_weights", "snd_hf.baselines", "snd_hf.convert", "snd_hf.extract",
    # data and the teacher's rendering; evaluation measures models and never needs the trainer, which
    # sits above it (and may evaluate); fields use both data and evaluation's feature models
    "snd_hf.data", "snd_hf.splatting", "snd_hf.eval", "snd_hf.training", "snd_hf.fields",
    # entry points
    "snd_hf.demo", "snd_hf.commands", "snd_hf.cli", "snd_hf.assets",
)
# snd_hf.loading's modules, one concept each, lowest first (the same rule inside the package).
LOADING_MODULES = (
    "errors", "keymap", "lora", "layouts", "architecture", "conversion", "sidecar", "reading", "native", "original", "fingerprint",
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def _imports(path: Path, name: str, modules) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in `path`'s body (top level, functions,
    TYPE_CHECKING); modules outside the package are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(target, names) for target, names in found if target in modules]


@functools.cache  # read-only: parsed once for all the tests below
def import_graph() -> dict[str, set[str]]:
    """Module → the snd_hf modules it imports anywhere in its body (top level, functions, TYPE_CHECKING).

    A name imported from a package that the package re-exports from one of its modules counts as an
    import of that module (`from snd_hf.loading import CheckpointError` → `snd_hf.loading.errors`).
    """
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    imports = {name: _imports(path, name, paths) for name, path in paths.items()}
    reexported = {  # (package, name) → the package's module that the name comes from
        (name, alias): target
        for name, path in paths.items()
        if path.name == "__init__.py"
        for target, aliases in imports[name]
        if target.startswith(f"{name}.")
        for alias in aliases
    }
    graph: dict[str, set[str]] = {}
    for name, found in imports.items():
        graph[name] = set()
        for target, aliases in found:
            graph[name].add(target)
            for alias in aliases:
                graph[name].add(f"{target}.{alias}" if f"{target}.{alias}" in paths else reexported.get((target, alias), target))
        graph[name].discard(name)
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → ... → start, ignoring edges into packages (importing a submodule runs its
    package's __init__, which is Python's doing, not a dependency of the submodule)."""
    packages = {name for name in graph if _is_package(name)}
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


def _room(name: str, rooms: tuple[str, ...]) -> int | None:
    return next((index for index, room in enumerate(rooms) if name == room or name.startswith(f"{room}.")), None)


def _upward_imports(graph: dict[str, set[str]], rooms: tuple[str, ...], within: str) -> list[str]:
    """`a → b` for every import from a module under `within` into a room after its own."""
    wrong = []
    for name, imported in sorted(graph.items()):
        if not name.startswith(within) or (own := _room(name, rooms)) is None:
            continue
        wrong += [f"{name} → {target}" for target in sorted(imported) if (_room(target, rooms) or 0) > own]
    return wrong


def test_the_graph_sees_through_a_package_to_the_module_a_name_comes_from():
    graph = import_graph()
    assert {"snd_hf.loading.errors", "snd_hf.loading.reading"} <= graph["snd_hf.hub"]
    assert "snd_hf.loading.errors" in graph["snd_hf.loading"]  # the package's own re-exports


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" → ".join(cycle) for name in graph if (cycle := _cycle_through(graph, name))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_has_a_room():
    homeless = [name for name in import_graph() if name != "snd_hf" and _room(name, ROOMS) is None]
    assert not homeless, f"add these to ROOMS, on the floor they belong to: {homeless}"


@pytest.mark.parametrize("within", ROOMS)
def test_rooms_import_only_downwards(within):
    wrong = _upward_imports(import_graph(), ROOMS, within)
    assert not wrong, "imports into a higher room:\n" + "\n".join(wrong)


def test_loading_modules_import_only_the_ones_before_them():
    modules = tuple(f"snd_hf.loading.{name}" for name in LOADING_MODULES)
    graph = import_graph()
    assert sorted(name for name in graph if name.startswith("snd_hf.loading.")) == sorted(modules)
    wrong = _upward_imports(graph, modules, "snd_hf.loading.")
    assert not wrong, "snd_hf.loading imports against its order:\n" + "\n".join(wrong)


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
        ("snd_hf.fields", ("snd_hf.splatting.mvsplat",)),  # geometry helpers come from snd_hf.cameras
        ("snd_hf.splatting", ("snd_hf.training", "snd_hf.eval", "snd_hf.fields")),
        ("snd_hf.data", ("snd_hf.splatting", "snd_hf.training", "snd_hf.eval", "snd_hf.fields")),
    ],
)
def test_lower_modules_do_not_import_higher_ones(module, forbidden):
    """`module` and every module inside it."""
    wrong = sorted(
        f"{name} → {target}"
        for name, imported in import_graph().items()
        if name == module or name.startswith(f"{module}.")
        for target in imported
        if target.startswith(forbidden)
    )
    assert not wrong, f"{module} imports " + ", ".join(wrong)

