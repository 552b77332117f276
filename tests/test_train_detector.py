"""extract/train.py: the detector trained with Detectron2's DefaultTrainer on the demo's VG objects
and attributes, resumed exactly after a crash and past a corrupt checkpoint."""

import json
import os
import shutil

import pytest
import torch

from cavl.demo.cli import main as demo_main
from cavl.demo.layout import demo_datasets
from cavl.manifest import build_manifest
from extract import train as T
from extract.vocab import make_vocabularies, read_vocab

DETECTOR = {"config": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", "device": "cpu", "attributes": True,
            "opts": ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"],
            "min_size": 96, "max_size": 160}
SETTINGS = {"init_weights": None, "opts": ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
                                            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200"],
            "num_workers": 0, "batch_size": 2, "lr": 0.005, "iterations": 6, "lr_steps": [0.8],
            "warmup_iterations": 2, "checkpoint_every": 3, "log_every": 1, "seed": 0, "val_fraction": 0.2,
            "eval_top_n": 8, "threads": 1, "gpus": 0}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's VG (objects.json + attributes.json) and COCO (instances) with their manifests and
    the vocabularies built from VG's attributes.json."""
    root = tmp_path_factory.mktemp("train_detector")
    data = root / "demo"
    assert demo_main(["--out", str(data), "--seed", "1", "--image-size", "96", "--count", "vg=16",
                      "--count", "coco=8", "--count", "flickr30k=10", "--count", "nlvr2=8",
                      "--count", "vcr=4"]) == 0
    datasets = demo_datasets(str(data))
    for name in ("vg", "coco"):
        build_manifest(name, datasets[name], str(root / f"{name}.parquet"))
    make_vocabularies(root / "vocab", vg_attributes=datasets["vg"]["attributes"])
    return root, datasets["vg"]["attributes"]


def _train(demo, out, checkpoints, settings=SETTINGS):
    root, attributes = demo
    argv = ["--config", json.dumps({"detector": DETECTOR, "train": settings}),
            "--source", f"vg={root / 'vg.parquet'}", "--source", f"coco={root / 'coco.parquet'}",
            "--vg-attributes", attributes, "--objects-vocab", str(root / "vocab" / "objects_vocab.txt"),
            "--attributes-vocab", str(root / "vocab" / "attributes_vocab.txt"),
            "--out", str(out), "--checkpoints", str(checkpoints)]
    assert T.main(argv) == 0


def _weights(out):
    return torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(demo, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    _train(demo, run / "out", run / "checkpoints")
    return run


def test_training_writes_the_model_its_config_metrics_and_log(demo, uninterrupted):
    out = uninterrupted / "out"
    assert {p.name for p in out.iterdir()} >= {"model.pth", "config.yaml", "metrics.json", "log.jsonl", "loss.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and metrics["train_images"] > 0 and metrics["val_images"] > 0
    assert metrics["val_objects"] >= metrics["val_images"] and 0 <= metrics["recall@0.5"] <= 1
    assert metrics["vocabulary"]["objects"]["outside"] == 0
    by_name = metrics["attribute_recall_by_name"]
    assert by_name and set(by_name) <= set(read_vocab(demo[0] / "vocab" / "attributes_vocab.txt").names)
    right, total = sum(c["right"] for c in by_name.values()), sum(c["total"] for c in by_name.values())
    assert 0 <= right <= total and total >= metrics["objects_with_attributes"]
    assert metrics["attribute_recall_given_boxes"] == pytest.approx(right / total)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(6))
    assert all(r["loss_attr"] > 0 for r in log)  # the attribute head trains on the demo's colours / sizes
    assert "AttributeStandardROIHeads" in (out / "config.yaml").read_text()


def test_resume_after_a_crash_equals_the_uninterrupted_run(demo, uninterrupted, tmp_path, caplog):
    """A run killed after its first checkpoint (iteration 3 of 6) and rerun ends with the same
    weights, bit for bit; a corrupt newer checkpoint is passed over."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("model_0000002.pth", "fingerprint.txt"):
        shutil.copy(uninterrupted / "checkpoints" / name, checkpoints)
    torn = checkpoints / "model_0000005.pth"
    torn.write_bytes((uninterrupted / "checkpoints" / "model_0000005.pth").read_bytes()[:5000])
    os.utime(torn, (os.path.getmtime(checkpoints / "model_0000002.pth") + 10,) * 2)

    with caplog.at_level("INFO", logger="extract.train"):
        _train(demo, tmp_path / "out", checkpoints)

    assert "model_0000005.pth is unreadable" in caplog.text
    assert "resuming from" in caplog.text and "model_0000002.pth (iteration 3 of 6)" in caplog.text
    expected, resumed = _weights(uninterrupted / "out"), _weights(tmp_path / "out")
    assert expected.keys() == resumed.keys()
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    # byte for byte too: extraction records model.pth's sha256 in every shard
    assert (uninterrupted / "out" / "model.pth").read_bytes() == (tmp_path / "out" / "model.pth").read_bytes()


def test_checkpoints_of_another_configuration_are_not_resumed(demo, uninterrupted, tmp_path, caplog):
    """A changed training setting starts afresh instead of resuming the old run's checkpoints;
    a setting that cannot change the weights (mem_mb) keeps them."""
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(uninterrupted / "checkpoints", checkpoints)
    with caplog.at_level("INFO", logger="extract.train"):
        _train(demo, tmp_path / "same", checkpoints, {**SETTINGS, "mem_mb": 1234})
    assert "resuming from" in caplog.text and "another configuration" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="extract.train"):
        _train(demo, tmp_path / "out", checkpoints, {**SETTINGS, "lr": 0.004})
    assert "of another configuration; training starts afresh" in caplog.text
    assert "resuming from" not in caplog.text and "training from random weights" in caplog.text
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(6)) and log[-1]["lr"] < 0.004


def test_an_image_without_known_objects_is_left_out(demo):
    root, attributes = demo
    from cavl.formats.vocab import Vocabulary

    shapes_only = Vocabulary([("nothing-here",)])
    records = T.training_records({"vg": {"manifest": str(root / "vg.parquet"), "attributes": attributes}},
                                 shapes_only, Vocabulary([("red",)]))
    assert records == []
