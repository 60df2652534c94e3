"""Imports point one way: frontend -> ir -> passes -> lowering -> runtime; JAX from lowering on."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "titanax"
ORDER = ["errors", "frontend", "ir", "passes", "lowering", "runtime", "nn"]
JAX_FREE = {"errors", "frontend", "ir", "passes", "cli", "loader", "launch"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def stage_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_stage_imports_only_earlier_stages(path):
    stage = stage_of(path)
    for module in imported_modules(path):
        top = module.split(".")[0]
        if stage in JAX_FREE:
            assert top not in ("jax", "jaxlib", "optax", "orbax"), f"{path} imports {module}"
        if stage not in ORDER:
            continue  # cli.py, loader.py and __init__.py sit above the stages
        if module.startswith("titanax."):
            imported_stage = module.split(".")[1]
            if imported_stage in ORDER:
                assert ORDER.index(imported_stage) <= ORDER.index(stage), f"{path} imports later stage {module}"


def test_cli_and_passes_run_without_importing_jax():
    code = (
        "import sys, titanax.cli, titanax.passes, titanax.ir, titanax.frontend\n"
        "titanax.cli.main(['plan', '--mesh', 'data=8', '--dp', 'data'])\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
