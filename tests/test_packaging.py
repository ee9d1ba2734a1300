"""What a fresh clone needs: every import declared in pyproject.toml, CI installing exactly README's
line into a fresh virtual environment, and the tests that need the reference fixtures skipping
(with the reason) when they are absent.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_fixtures
from readme import (
    CI_SCRIPT,
    code_blocks,
    is_install,
    readme_text,
    shell_commands,
    words,
)

DISTRIBUTION = "snd-hf"
PACKAGE = "snd_hf"
# Every Python file of these folders is audited: the package, the training script, tests, benchmarks.
AUDITED = ("snd_hf", "training", "tests", "benchmarks")


def normalize(name: str) -> str:
    """PEP 503 project-name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0])


def declared_requirements(requires: list[str], extras: set[str]) -> tuple[set[str], set[str]]:
    """(core, core + the given extras) project names, from ``Requires-Dist`` lines; an extra that
    names this project again (``snd-hf[eval]``) pulls in that extra too."""
    core, optional, pending, seen = set(), set(), list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in requires:
            spec, _, marker = requirement.partition(";")
            if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", marker):
                if requirement_name(spec) == normalize(DISTRIBUTION):
                    pending += re.findall(r"[\w.-]+", spec.partition("[")[2].partition("]")[0])
                else:
                    optional.add(requirement_name(spec))
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if "extra" not in marker:
            core.add(requirement_name(spec))
    return core, core | optional


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, imported at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.partition(".")[0], child.lineno, module_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.partition(".")[0], child.lineno, module_level))
            visit(child, module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


def local_modules(root: Path, folders: tuple[str, ...]) -> set[str]:
    """Names importable from the checkout itself: the package, and the modules and packages of every
    folder that is put on ``sys.path`` when its files run (a script's folder; pytest's test folders
    without ``__init__.py``): tests import ``conftest``, ``hub_emulator``, ``readme`` by name."""
    names = {PACKAGE}
    for folder in folders:
        if folder == PACKAGE:
            continue
        for directory in [root / folder, *(path for path in (root / folder).rglob("*") if path.is_dir())]:
            if (directory / "__init__.py").exists() or "__pycache__" in directory.parts:
                continue
            names.update(path.stem for path in directory.glob("*.py"))
            names.update(child.name for child in directory.iterdir() if (child / "__init__.py").exists())
    return names


def undeclared_imports(
    root: Path, folders: tuple[str, ...], core: set[str], installed: set[str], distributions: dict[str, list[str]]
) -> list[str]:
    """Every import that the declared requirements do not provide, as ``file:line: ...`` lines.

    Args:
        root: the checkout.
        folders: folders of ``root`` to audit.
        core: normalised names of the core requirements.
        installed: core plus the extras README's install line asks for.
        distributions: import name -> distributions providing it (``packages_distributions()``).
    """
    local, problems = local_modules(root, folders), []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            in_package = path.relative_to(root).parts[0] in (PACKAGE, "training")
            for module, line, module_level in imports_of(path):
                if module in local or module in sys.stdlib_module_names:
                    continue
                where = f"{path.relative_to(root)}:{line}"
                providers = {normalize(name) for name in distributions.get(module, [])}
                if not providers:
                    problems.append(f"{where}: imports {module!r}, which no installed distribution provides: declare it")
                elif not providers & installed:
                    problems.append(f"{where}: imports {module!r} from {sorted(providers)}, not declared in pyproject.toml")
                elif in_package and module_level and not providers & core:
                    problems.append(
                        f"{where}: imports {module!r} at module level, but {sorted(providers)} is only an optional"
                        " extra: import it inside the function that needs it, or make it a core dependency"
                    )
    return problems


def readme_extras() -> set[str]:
    """The extras README's install line asks for (``pip install -e ".[test]"`` → {"test"})."""
    extras = set()
    for block in code_blocks(readme_text()):
        for command in shell_commands(block.code) if block.language == "bash" else []:
            for word in words(command) if is_install(command) else []:
                if word.startswith(".["):
                    extras.update(re.findall(r"[\w.-]+", word[2:].partition("]")[0]))
    return extras


def test_every_import_is_declared():
    requires = importlib.metadata.requires(DISTRIBUTION) or []
    extras = readme_extras()
    assert extras, "README's install line installs no extra: the tests need at least [test]"
    core, installed = declared_requirements(requires, extras)
    problems = undeclared_imports(REPO_ROOT, AUDITED, core, installed, importlib.metadata.packages_distributions())
    assert not problems, "imports that a fresh install of README's line would lack:\n" + "\n".join(problems)


def test_the_audit_catches_an_undeclared_import(tmp_path):
    (tmp_path / PACKAGE / "eval").mkdir(parents=True)
    (tmp_path / PACKAGE / "eval" / "datasets.py").write_text("import numpy\nfrom scipy.io import loadmat\n")
    (tmp_path / PACKAGE / "late.py").write_text("def read():\n    from scipy.io import loadmat\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "helper.py").write_text("import nowhere_package\n")
    (tmp_path / "tests" / "test_x.py").write_text("import helper\nimport os\nimport yaml\n")
    distributions = {"numpy": ["numpy"], "scipy": ["scipy"], "yaml": ["PyYAML"]}
    audit = lambda core, installed: undeclared_imports(tmp_path, (PACKAGE, "tests"), core, installed, distributions)  # noqa: E731

    problems = audit({"numpy"}, {"numpy"})
    assert problems == [
        f"{Path(PACKAGE, 'eval', 'datasets.py')}:2: imports 'scipy' from ['scipy'], not declared in pyproject.toml",
        f"{Path(PACKAGE, 'late.py')}:2: imports 'scipy' from ['scipy'], not declared in pyproject.toml",
        f"{Path('tests', 'helper.py')}:1: imports 'nowhere_package', which no installed distribution provides: declare it",
        f"{Path('tests', 'test_x.py')}:3: imports 'yaml' from ['pyyaml'], not declared in pyproject.toml",
    ]
    # scipy in an extra: fine inside a function, not at the package's module level.
    problems = audit({"numpy", "pyyaml"}, {"numpy", "pyyaml", "scipy"})
    assert len(problems) == 2 and "datasets.py:2: imports 'scipy' at module level" in problems[0]


def test_extras_that_name_the_project_again_are_followed():
    requires = ["torch>=2.3", "PyYAML", "scipy; extra == 'eval'", "pytest; extra == \"test\"", "snd-hf[eval]; extra == 'test'"]
    assert declared_requirements(requires, {"test"}) == ({"torch", "pyyaml"}, {"torch", "pyyaml", "scipy", "pytest"})
    assert declared_requirements(requires, set()) == ({"torch", "pyyaml"}, {"torch", "pyyaml"})


# ----------------------------------------------------------------------------- CI
def _ci_commands() -> list[str]:
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_ci_runs_readme_install_and_test_commands_in_a_fresh_venv():
    readme = [command for block in code_blocks(readme_text()) if block.language == "bash" for command in shell_commands(block.code)]
    installs = [command.partition("#")[0].strip() for command in readme if is_install(command)]
    tests = [command.partition("#")[0].strip() for command in readme if words(command)[:3] == ["python", "-m", "pytest"]]
    assert installs and tests == ["python -m pytest -q", "python -m pytest -q -m slow"]  # the two tiers
    ci = _ci_commands()
    # Exactly README's install commands, in README's order, then pip check, then README's test commands.
    assert [line for line in ci if line.startswith("pip install") or line.startswith("python -m pip install")] == installs
    positions = [ci.index(command) for command in [*installs, "pip check", *tests]]
    assert positions == sorted(positions)
    # A new virtual environment, without the machine's packages, activated before the installs.
    venv = next(line for line in ci if re.search(r"-m venv\b", line))
    assert "--system-site-packages" not in venv and ci.index(venv) < positions[0]
    assert any(re.match(r"(source|\.) \S*bin/activate", line) for line in ci[ci.index(venv) : positions[0]])


# ----------------------------------------------------------------------------- fixtures
def test_tests_needing_absent_fixtures_skip_with_the_reason(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=r"reference fixtures not found at .*missing.*SND_FIXTURES"):
        require_fixtures(tmp_path / "missing")
    assert require_fixtures(tmp_path) == tmp_path
