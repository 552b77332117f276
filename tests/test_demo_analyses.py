"""The demo's analyses, read from the complete demo run: the ablation grid (every cell, its copy,
the table's means, spreads and tests) and the word–region alignment pictures with their hit rate,
which must beat a random region (the paper's §5.3 claim, made measurable)."""

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
import yaml

from cavl.config import resolve_config

REPO = Path(__file__).resolve().parents[1]
ALPHA = 0.01


@pytest.fixture(scope="module")
def grid():
    return resolve_config(yaml.safe_load((REPO / "config.yaml").read_text()))["ablations"]


@pytest.fixture(scope="module")
def table(demo_run):
    with open(demo_run / "results/ablations/summary.csv") as f:
        return {(row["variant"], row["task"]): row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def runs(demo_run):
    return json.loads((demo_run / "results/ablations/runs.json").read_text())


def test_the_table_has_every_variant_and_task(grid, table):
    variants = ["baseline", *(name for variant in grid["variants"] for name in variant)]
    assert sorted(table) == sorted((v, t) for v in variants for t in grid["tasks"])
    for (variant, _), row in table.items():
        assert int(row["seeds"]) == len(grid["seeds"])
        if variant == "baseline":
            assert row["difference"] == row["p_value"] == ""
        else:
            assert 0 < float(row["p_value"]) <= 1
            assert (row["significant"] == "*") == (float(row["p_value"]) < 0.05)


def test_each_cell_is_its_runs_metrics_and_the_baseline_is_the_main_run(demo_run, grid, runs):
    assert len(runs) == (1 + len(grid["variants"])) * len(grid["seeds"]) * len(grid["tasks"])
    for cell in runs:
        copy = demo_run / cell["copy_to"]
        assert copy == demo_run / f"results/ablations/{cell['variant']}/seed{cell['seed']}/{cell['task']}/metrics.json"
        assert copy.read_bytes() == (demo_run / cell["metrics"]).read_bytes()
        if cell["variant"] == "baseline" and cell["seed"] == 0:
            assert cell["metrics"] == f"results/{cell['task']}/metrics.json"


def test_the_table_summarises_the_cells(demo_run, table, runs):
    for (variant, task), row in table.items():
        values = [json.loads((demo_run / c["metrics"]).read_text())["metrics"][row["metric"]]
                  for c in runs if c["variant"] == variant and c["task"] == task]
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-3)  # the CSV's 3 decimals
        assert float(row["sd"]) == pytest.approx(statistics.stdev(values), abs=1e-3)
        if variant != "baseline":
            assert float(row["difference"]) == pytest.approx(float(row["mean"]) - float(table["baseline", task]["mean"]),
                                                             abs=2e-3)


def test_zero_shot_cells_do_not_depend_on_the_seed(runs):
    for variant in {c["variant"] for c in runs}:
        assert len({c["metrics"] for c in runs if c["variant"] == variant and c["task"] == "zs_tir"}) == 1


def test_the_alignment_page_shows_every_picture(demo_run):
    folder = demo_run / "results/visualisation"
    pictures = re.findall(r'<img[^>]+src="([^"]+)"', (folder / "index.html").read_text())
    images = yaml.safe_load((REPO / "config.yaml").read_text())["visualise"]["images"]
    for dataset, kinds in (("coco", 3), ("flickr30k", 4)):  # regions, words, heat map (+ Flickr30k's phrase)
        assert len([p for p in pictures if p.startswith(f"{dataset}/")]) == images * kinds, dataset
    assert all((folder / p).stat().st_size > 1000 for p in pictures)


def test_cosine_alignment_finds_the_phrase_regions_better_than_a_random_region(demo_run):
    hits = json.loads((demo_run / "results/visualisation/alignment.json").read_text())["phrase_hits"]
    assert hits["phrases"] >= 100  # enough val phrases for a p-value from counts
    cosine = hits["scores"]["cosine"]
    assert cosine["hit_rate"] > cosine["baseline_rate"] and cosine["p_value"] < ALPHA, cosine
