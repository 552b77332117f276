"""The packages' import direction: `extract` may import `cavl`, `cavl` never imports `extract`;
nothing in `cavl`, `extract` or the tests imports `benchmarks` (benchmarks use the library and
its fixtures, cavl.testing, not the other way round). Checked on the source with `ast`, so an
import inside a function counts as much as one at the top."""

import ast
from pathlib import Path

import pytest

from cavl.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path):
    """(line, module) of every absolute import in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def offending(folder, forbidden):
    """'path:line module' for every import of one of the `forbidden` top-level packages under `folder`."""
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("folder, forbidden", [
    ("cavl", {"extract", "benchmarks", "tests"}),
    ("extract", {"benchmarks", "tests"}),
    ("tests", {"benchmarks"}),
])
def test_import_direction(folder, forbidden):
    assert offending(folder, forbidden) == []


def test_the_check_sees_imports_anywhere_in_a_file(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from extract.writer import ShardWriter\n"
                      "    import benchmarks.retrieval\n    importlib.import_module('extract.vocab')\n")
    assert [m for _, m in imported_modules(source)] == ["os", "extract.writer", "benchmarks.retrieval",
                                                        "extract.vocab"]


def test_benchmarks_are_a_package_beside_the_library():
    """`python -m benchmarks.<name>` from the repository root; the library has no bench modules."""
    assert (ROOT / "benchmarks" / "__init__.py").is_file()
    assert [p.name for package in ("cavl", "extract") for p in (ROOT / package).rglob("bench*.py")] == []


def test_task_modules_are_cavl_modules():
    assert all(entry.module.startswith("cavl.tasks.") for entry in REGISTRY.values())
