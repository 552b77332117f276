"""Fixtures shared by several test modules."""

import json

import pytest

from tiny_run import complete_run
from workflow_run import snakemake

# The whole demo (`snakemake --cores all` on config.yaml) takes minutes; it runs once per test
# session, and only when a test asks for it.
DEMO_TIMEOUT_S = 45 * 60


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """Folder of one complete default demo run (every target of rule all)."""
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
def demo_metrics(demo_run):
    """task → its results/{task}/metrics.json from the demo run."""
    metrics = {}
    for path in sorted((demo_run / "results").glob("*/metrics.json")):
        metrics[path.parent.name] = json.loads(path.read_text())
    return metrics
