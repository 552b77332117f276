"""Fixtures shared by several test modules, and the rule that sorts the tests into tiers.

Tiers: `make test` runs everything (as CI does); `make test-fast` runs `-m "not slow"`, every
module's unit behaviour in a few minutes, each test under a timeout. A test is marked `slow`
here, automatically, when the code it runs — the test function, the fixtures it requests (and
theirs), and the helpers under tests/ that they call, followed transitively — starts one of:

- a Snakemake workflow: the full demo (`demo_run`), the tiny demo (`tiny_demo_run`, tiny_run.py)
  or part of one (workflow_run.py, or a `snakemake` executable of its own);
- torchrun, SLURM (sbatch/srun, or scripts/slurm/cluster.py's test cluster), Chromium;
- Detectron2 over a shard of images (extract.shard.run_shard) or training it (extract.train.main).

A test that is slow for another reason carries `@pytest.mark.slow` itself.
"""

import json
import os
import types
from pathlib import Path

import pytest

from tiny_run import complete_run
from workflow_run import snakemake

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SLURM_SCRIPTS = os.path.join(ROOT, "scripts", "slurm") + os.sep
OWN_CODE = tuple(os.path.join(ROOT, d) + os.sep for d in ("tests", "scripts", "cavl", "extract"))

# What makes a test slow: functions (module, name) it reaches, programs it names.
SLOW_FUNCTIONS = {("workflow_run", "snakemake"), ("workflow_run", "snakemake_command"),
                  ("extract.shard", "run_shard"), ("extract.train", "main")}
SLOW_PROGRAMS = {"snakemake", "torchrun", "chromium", "chromium-browser", "sbatch", "srun"}

# The whole demo (`snakemake --cores all` on config.yaml) takes minutes; it runs once per test
# session, and only when a test asks for it.
DEMO_TIMEOUT_S = 45 * 60


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """Folder of one complete default demo run (every target of rule all). CAVL_DEMO_RUN names
    a finished one to use instead (while working on the tests that read it; CI makes its own)."""
    if os.environ.get("CAVL_DEMO_RUN"):
        return Path(os.environ["CAVL_DEMO_RUN"])
    workdir = tmp_path_factory.mktemp("demo_run")
    result = snakemake(workdir, "--cores", "2", timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """Folder of one complete, uninterrupted run of tests/fixtures/tiny_demo.yaml (~3-5 min):
    the reference for the crash-and-resume and SLURM tests."""
    return complete_run(tmp_path_factory.mktemp("tiny_demo_run") / "run")


@pytest.fixture(scope="session")
def variant2_vqa_metrics(tmp_path_factory):
    """metrics.json of VQA on demo variant 2 (another palette, counts and question kinds), every
    other setting the default: the check that defaults are not fitted to the first demo."""
    workdir = tmp_path_factory.mktemp("demo_variant2")
    variant = workdir / "variant2.yaml"
    variant.write_text("demo: {variant: 2}\n")
    result = snakemake(workdir, "--cores", "2", "results/vqa/metrics.json", configfiles=[variant],
                       timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads((workdir / "results" / "vqa" / "metrics.json").read_text())


@pytest.fixture(scope="session")
def demo_metrics(demo_run):
    """task → its results/{task}/metrics.json from the demo run."""
    metrics = {}
    for path in sorted((demo_run / "results").glob("*/metrics.json")):
        metrics[path.parent.name] = json.loads(path.read_text())
    return metrics


# ---------------------------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------------------------


def _is_program(value):
    return isinstance(value, str) and os.path.basename(value) in SLOW_PROGRAMS


def _source_file(obj):
    if isinstance(obj, types.ModuleType):
        return getattr(obj, "__file__", None) or ""
    code = getattr(obj, "__code__", None)
    return code.co_filename if code is not None else ""


def _codes(code):
    """`code` and the code of the functions, lambdas and comprehensions written inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _strings(consts):
    """The string constants of a code object, those of constant tuples included (a literal list
    of strings, `["torchrun", "-m", ...]`, is compiled to one tuple constant)."""
    for const in consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, (tuple, frozenset)):
            yield from _strings(const)


def _slow_reason(func, seen):
    """What slow thing `func` (a function written under tests/) reaches, or None."""
    func = getattr(func, "__wrapped__", func)
    if not isinstance(func, types.FunctionType) or func.__code__ in seen:
        return None
    seen.add(func.__code__)
    scope = func.__globals__
    for code in _codes(func.__code__):
        programs = [c for c in _strings(code.co_consts) if _is_program(c)]
        if programs:
            return f"{func.__qualname__} names {programs[0]!r}"
        imported = [f"{m}.{n}" for m, n in sorted(SLOW_FUNCTIONS) if m in code.co_names and n in code.co_names]
        if imported:  # `from extract.shard import run_shard` inside the function
            return f"{func.__qualname__} calls {imported[0]}"
        modules = [v for v in (scope.get(n) for n in code.co_names)
                   if isinstance(v, types.ModuleType) and _source_file(v).startswith(OWN_CODE)]
        for name in code.co_names:
            # a global of the function's module, or an attribute of a module of the repo it uses
            # (tiny_run.run, slurm_cluster.Cluster)
            for obj in [scope.get(name), *(getattr(m, name, None) for m in modules)]:
                if obj is None:
                    continue
                if _is_program(obj):
                    return f"{func.__qualname__} uses {name} = {obj!r}"
                if (getattr(obj, "__module__", None), getattr(obj, "__name__", None)) in SLOW_FUNCTIONS:
                    return f"{func.__qualname__} calls {obj.__module__}.{obj.__name__}"
                if _source_file(obj).startswith(SLURM_SCRIPTS) or (
                        isinstance(obj, type) and _source_file(getattr(obj, "__init__", None)).startswith(SLURM_SCRIPTS)):
                    return f"{func.__qualname__} uses the test SLURM cluster"
                if isinstance(obj, types.FunctionType) and _source_file(obj).startswith(TESTS + os.sep):
                    reason = _slow_reason(obj, seen)
                    if reason:
                        return reason
    return None


def slow_reason(item):
    """Why `item` belongs to the slow tier by the rule above (None: it does not)."""
    seen = set()
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        functions.extend(d.func for d in defs)
    for func in functions:
        reason = _slow_reason(func, seen)
        if reason:
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is None and slow_reason(item):
            item.add_marker(pytest.mark.slow)
