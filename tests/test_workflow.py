"""The Snakemake workflow itself: the DAG builds, bad configs stop it, the data stages run."""

import os

import pyarrow.parquet as pq

from workflow_run import snakemake

IMAGE_DATASETS = ["coco", "vg", "flickr30k", "nlvr2", "vcr"]


def test_dry_run_lists_the_data_stages(tmp_path):
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr + result.stdout
    for rule in ("demo_data", "manifest", "task_data"):
        assert rule in result.stdout, result.stdout


def test_unknown_config_key_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("demo:\n  colour: red\n")
    result = snakemake(tmp_path, "-n", configfiles=[bad])
    assert result.returncode != 0
    assert "'demo.colour'" in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()


def test_data_stages_run_on_a_small_demo(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text(
        "demo:\n  images: {coco: 12, vg: 4, flickr30k: 12, nlvr2: 16, vcr: 8}\n  image_size: 96\n"
    )
    targets = [f"resources/manifests/{d}.parquet" for d in IMAGE_DATASETS]
    targets += ["resources/tasks/vqa/train.parquet", "resources/tasks/tir/test.parquet",
                "resources/tasks/rpg/test.parquet", "resources/tasks/nlvr2/dev.parquet",
                "resources/tasks/vcr/val.parquet", "resources/tasks/pretrain/train.parquet"]
    result = snakemake(tmp_path, "--cores", "2", *targets, configfiles=[small])
    assert result.returncode == 0, result.stderr[-3000:]
    coco = pq.read_table(tmp_path / "resources/manifests/coco.parquet").to_pandas()
    assert len(coco) == 12
    assert all(os.path.exists(tmp_path / p) for p in coco["path"])
    vcr = pq.read_table(tmp_path / "resources/manifests/vcr.parquet").to_pandas()
    assert all(len(b) == len(n) > 0 for b, n in zip(vcr["gt_boxes"], vcr["gt_box_labels"]))
    vqa = pq.read_table(tmp_path / "resources/tasks/vqa/train.parquet").to_pandas()
    assert set(vqa["image_id"]) <= set(coco["image_id"])
    assert all(len(a) == 10 for a in vqa["answers"])
    # A second run right away has nothing to do.
    again = snakemake(tmp_path, "-n", *targets, configfiles=[small])
    assert "Nothing to be done" in again.stdout + again.stderr
