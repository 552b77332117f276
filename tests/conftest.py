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
