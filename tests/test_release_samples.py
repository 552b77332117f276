"""tests/release_samples.py: samples in the released layouts, where configs/paper.yaml points,
read by the project's own readers (manifests and task tables)."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cavl.manifest import manifest_rows
from cavl.task_data import task_rows
from release_samples import DATASETS, paper_datasets_config, write_release_samples

PAPER = yaml.safe_load((Path(__file__).parents[1] / "configs" / "paper.yaml").read_text())["datasets"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(working directory holding data/, what write_release_samples returned)."""
    root = tmp_path_factory.mktemp("release")
    return root, write_release_samples(root)


@pytest.fixture
def workdir(release, monkeypatch):
    """The samples' folder as the working directory, so the config's relative paths resolve."""
    monkeypatch.chdir(release[0])
    return release[0]


def _leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    else:
        yield node


def _images(written, dataset):
    return [f for f in written[dataset] if f.endswith((".jpg", ".png"))]


def test_files_are_where_paper_yaml_points(release):
    root, written = release
    assert set(written) == set(DATASETS)
    for path in _leaves(PAPER):
        assert (root / path).exists(), path
    for folder in ("VG_100K", "VG_100K_2"):
        assert list((root / "data/vg" / folder).glob("*.jpg")), folder
    assert len([d for d in (root / "data/nlvr2/images/train").iterdir() if d.name.isdigit()]) >= 2
    for split in ("dev", "test1"):
        assert list((root / "data/nlvr2" / split).glob(f"{split}-*-img0.png"))
    assert all((root / f).is_file() for files in written.values() for f in files)
    assert "data/vg/attributes.json" in written["vg"]
    assert len(_images(written, "coco")) == 20 and len(_images(written, "vg")) == 8


def test_config_is_paper_yaml_plus_the_optional_files():
    config, paper = paper_datasets_config(), json.loads(json.dumps(PAPER))
    assert config["vg"].pop("objects") == "data/vg/objects.json"
    for split, entry in config["coco"]["captions"].items():
        assert entry.pop("instances") == f"data/coco/annotations/instances_{split}2014.json"
    assert config["nlvr2"].pop("image_root") == {
        "train": "data/nlvr2/images/train", "dev": "data/nlvr2/dev", "test1": "data/nlvr2/test1"}
    paper["vg"].pop("objects", None)  # paper.yaml may come to name these too
    for entry in paper["coco"]["captions"].values():
        entry.pop("instances", None)
    del paper["nlvr2"]["image_root"]
    assert config == paper
    assert paper_datasets_config("/x")["vg"]["image_root"] == "/x/data/vg"


def test_images_are_deterministic_and_distinct(release, tmp_path):
    root, written = release
    again = write_release_samples(tmp_path, ["nlvr2"])
    assert again == {"nlvr2": written["nlvr2"]}
    digests = set()
    for rel in written["nlvr2"]:
        data = (root / rel).read_bytes()
        assert (tmp_path / rel).read_bytes() == data, rel
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(written["nlvr2"])
    formats = {Image.open(root / f).format for files in written.values() for f in files
               if f.endswith((".jpg", ".png"))}
    assert formats == {"JPEG", "PNG"}


def test_subset_writes_only_those_datasets(tmp_path):
    written = write_release_samples(tmp_path, ["vg"])
    assert list(written) == ["vg"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["vg"]
    with pytest.raises(ValueError, match="unknown"):
        write_release_samples(tmp_path, ["coco2017"])


@pytest.mark.parametrize("dataset", ["coco", "vg", "flickr30k", "vcr"])
def test_manifest_sizes_equal_the_image_files(workdir, release, dataset):
    rows = manifest_rows(dataset, paper_datasets_config()[dataset])
    assert sorted(r["path"] for r in rows) == _images(release[1], dataset)
    for r in rows:
        with Image.open(r["path"]) as im:
            assert im.size == (r["width"], r["height"]), r["path"]
        assert r["gt_boxes"] and len(r["gt_boxes"]) == len(r["gt_box_labels"])
        for x1, y1, x2, y2 in r["gt_boxes"]:
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]


def test_nlvr2_manifest_released_layout(workdir, release):
    """image_root: {train: nlvr2/images/train, dev: nlvr2/dev, test1: nlvr2/test1}."""
    rows = manifest_rows("nlvr2", paper_datasets_config()["nlvr2"])
    assert sorted(r["path"] for r in rows) == _images(release[1], "nlvr2")
    assert any(r["path"].startswith("data/nlvr2/images/train/") for r in rows)
    for r in rows:
        with Image.open(r["path"]) as im:
            assert im.size == (r["width"], r["height"]), r["path"]


@pytest.mark.parametrize("task", ["vqa", "vcr", "nlvr2", "rpg", "tir"])
def test_task_rows_are_not_empty(workdir, task):
    splits = task_rows(task, paper_datasets_config())
    assert splits and all(splits.values()), {s: len(r) for s, r in splits.items()}


def test_vqa_answers(workdir, release):
    rows = [r for split in task_rows("vqa", paper_datasets_config()).values() for r in split]
    assert {r["answer_type"] for r in rows} == {"yes/no", "number", "other"}
    assert "t-shirt" in {r["multiple_choice_answer"] for r in rows}
    assert all(len(r["answers"]) == 10 for r in rows)
    coco_ids = {Path(f).stem.rsplit("_", 1)[1].lstrip("0") for f in _images(release[1], "coco")}
    assert {r["image_id"] for r in rows} <= coco_ids


def test_pretrain_leaves_out_vg_copies_of_evaluation_images(workdir):
    config = paper_datasets_config()
    config["vg"]["exclude_eval_images"] = ["coco", "flickr30k"]
    kept = {r["image_id"] for r in task_rows("pretrain", config, "train")["train"] if r["dataset"] == "vg"}
    everything = {r["image_id"] for r in task_rows("pretrain", paper_datasets_config(), "train")["train"]
                  if r["dataset"] == "vg"}
    assert len(everything) == 8 and everything - kept == {"2", "2417891"}
