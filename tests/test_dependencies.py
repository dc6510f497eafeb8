"""Every third-party module that ``src/longtail`` imports is declared in ``pyproject.toml``.

CI installs into a fresh virtual environment, so an undeclared import fails there too; this test
names the missing distribution directly (it caught ``rich``, imported by ``eval/report.py`` but
never declared).
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "longtail"


def imported_top_level_modules() -> set[str]:
    """Top-level names of every absolute import in the package's source (module and function level)."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - {"longtail"} - set(sys.stdlib_module_names)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    return {normalise(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]) for req in requirements}


def test_every_imported_module_is_declared():
    providers = packages_distributions()
    declared = declared_distributions()
    undeclared = {}
    for module in sorted(imported_top_level_modules()):
        dists = {normalise(d) for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported by src/longtail but not declared in pyproject.toml: {undeclared}"


def test_the_scan_sees_function_level_imports():
    """The optional pieces are imported inside functions; the scan must see them."""
    modules = imported_top_level_modules()
    assert {"rich", "torch", "timm"} <= modules
