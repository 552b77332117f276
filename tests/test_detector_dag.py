"""extract.detector.weights: trained in the workflow: rule train_detector feeds every extraction,
what a training setting changes is what reruns, and a killed training resumes exactly."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from cavl.data.regions import RegionReader
from test_caching import planned_jobs
from tiny_run import run, run_until
from workflow_run import ROOT, snakemake

CONFIGS = [Path(ROOT) / "config.yaml", Path(ROOT) / "tests" / "fixtures" / "tiny_demo.yaml"]
TRAINED = {"extract": {
    "detector": {"weights": "trained", "attributes": True},
    "given_boxes": {"coco": "none", "vg": "none"},
    "train": {"iterations": 4, "batch_size": 2, "lr": 0.005, "warmup_iterations": 1, "checkpoint_every": 2,
              "log_every": 1, "num_workers": 0, "threads": 1, "val_fraction": 0.25,
              "opts": ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"]}}}
TARGET = "resources/features/vg/index.parquet"


def _overlay(tmp_path, name, **train):
    config = json.loads(json.dumps(TRAINED))
    config["extract"]["train"].update(train)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("detector_dag")
    result = snakemake(work, "--cores", "2", TARGET, configfiles=[*CONFIGS, _overlay(work, "trained.yaml")])
    assert result.returncode == 0, result.stderr[-4000:]
    return work


def test_extraction_uses_the_trained_detector(trained_run):
    detector = trained_run / "resources" / "detector"
    assert {"model.pth", "config.yaml", "metrics.json", "log.jsonl", "loss.png", "objects_vocab.txt",
            "attributes_vocab.txt"} <= {p.name for p in detector.iterdir()}
    assert sorted(p.name for p in (detector / "checkpoints").glob("model_*.pth"))[:2] == [
        "model_0000001.pth", "model_0000003.pth"]
    reader = RegionReader(trained_run / "resources" / "features" / "vg" / "index.parquet")
    described = reader.metadata["detector"]
    assert described["weights"] == "resources/detector/model.pth" and not described["random_init"]
    assert described["config"] == "resources/detector/config.yaml"
    regions = reader.regions(reader.image_ids[0])
    assert regions.attributes is not None and len(regions.attributes) == regions.num_boxes


def test_a_training_setting_reruns_training_and_extraction_mem_mb_nothing(trained_run, tmp_path):
    same = snakemake(trained_run, "-n", TARGET, configfiles=[*CONFIGS, _overlay(tmp_path, "mem.yaml", mem_mb=1234,
                                                                                runtime=5)])
    assert planned_jobs(same) == []

    changed = snakemake(trained_run, "-n", TARGET, configfiles=[*CONFIGS, _overlay(tmp_path, "lr.yaml", lr=0.004)])
    rules = sorted({rule for rule, _ in planned_jobs(changed)})
    assert rules == ["extract_shard", "gather_features", "train_detector"]


def test_killed_training_resumes_from_its_checkpoint_to_the_same_weights(trained_run, tmp_path):
    """SIGKILL to the whole run once training has written a checkpoint; the README's rerun
    continues from it and ends with the uninterrupted run's weights, bit for bit."""
    work, overlay = tmp_path / "work", _overlay(tmp_path, "trained.yaml")
    detector = work / "resources" / "detector"
    # last_checkpoint is written once a checkpoint file is complete
    def trained_part_way():
        return (detector / "checkpoints" / "last_checkpoint").exists() and not (detector / "model.pth").exists()

    run_until(work, trained_part_way, TARGET, "--cores", "2", out_name="killed", configfiles=[overlay])
    assert not (detector / "model.pth").exists()

    assert run(work, "--unlock", out_name="unlock", configfiles=[overlay])[0] == 0
    rc, out = run(work, TARGET, "--cores", "2", "--rerun-incomplete", out_name="rerun", configfiles=[overlay])
    assert rc == 0, out[-4000:]

    assert "resuming from" in (work / "logs" / "detector" / "train.log").read_text()
    expected = torch.load(trained_run / "resources" / "detector" / "model.pth", weights_only=True)["model"]
    resumed = torch.load(detector / "model.pth", weights_only=True)["model"]
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
