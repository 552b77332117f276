"""Manifest image layouts (NLVR2 as released vs flat) and `missing_images: error | skip`."""

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cavl import manifest
from cavl.formats import nlvr2, vg
from cavl.formats.errors import FormatError, MissingImageError, SpecError
from test_formats import IMAGES as FORMAT_IMAGES
from test_formats import M1, M2
from test_formats import SPECS as FORMAT_SPECS
from test_formats import assert_cli_error, assert_schema

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


NLVR2_SPLITS = {"train": "nlvr2/train.json", "dev": "nlvr2/dev.json", "test1": "nlvr2/test1.json"}

# The NLVR2 images the fixtures name, by split: (folder inside the split folder, stem).
NLVR2_IMAGES = {
    "train": [("47", "train-10171-0-img0"), ("47", "train-10171-0-img1"),
              ("3", "train-5-1-img0"),
              ("12", "train-5-1-img1")],  # not in the json's 'directory': found by searching
    "dev": [("", "dev-850-0-img0"), ("", "dev-850-0-img1")],
    "test1": [("", "test1-0-1-img0"), ("", "test1-0-1-img1")],
}
NLVR2_IDS = [stem for split in ("train", "dev", "test1") for _, stem in NLVR2_IMAGES[split]]

# The release unpacks train under images/ and dev, test1 beside it.
RELEASED = {"train": "nlvr2/images/train", "dev": "nlvr2/dev", "test1": "nlvr2/test1"}
FLAT = {split: f"nlvr2/images/{split}" for split in NLVR2_SPLITS}

# The official-format fixtures' specs (tests/test_formats.py), NLVR2 in its released layout.
SPECS = {name: FORMAT_SPECS[name] for name in ("coco", "vg", "vcr", "flickr30k")}
SPECS["nlvr2"] = {"splits": NLVR2_SPLITS, "image_root": RELEASED}

MISSING_TYPES = {"image_id": pa.string(), "path": pa.string(), "source": pa.string(),
                 "record": pa.string(), "reason": pa.string()}


def _png(path, size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 160, 90)).save(path)


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """Copy a dataset's fixture annotations into tmp_path, draw its images there, chdir."""
    monkeypatch.chdir(tmp_path)

    def _stage(dataset, folders=None):
        shutil.copytree(FIXTURES / dataset, tmp_path / dataset, dirs_exist_ok=True)
        if dataset == "nlvr2":
            for split, images in NLVR2_IMAGES.items():
                for k, (sub, stem) in enumerate(images):
                    _png(tmp_path / folders[split] / sub / f"{stem}.png", (20 + k, 10 + k))
        else:
            for rel, size in FORMAT_IMAGES[dataset].items():
                _png(tmp_path / rel, size)
        return tmp_path
    return _stage


def run(dataset, spec, out="out/m.parquet", *extra):
    rc = manifest.main(["--dataset", dataset, "--spec", json.dumps(spec), "--out", out, *extra])
    return rc, (pq.read_table(out).to_pylist() if rc == 0 else None)


def read_missing(path="out/m.missing.parquet"):
    table = pq.read_table(path)
    assert_schema(table, MISSING_TYPES)
    return table.to_pylist()


# ---------------------------------------------------------------- NLVR2 image layouts
def test_nlvr2_released_layout_mapping(stage):
    stage("nlvr2", RELEASED)
    assert not os.path.exists("nlvr2/images/dev")  # dev/ and test1/ sit beside images/
    rc, rows = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": RELEASED})
    assert rc == 0
    assert [r["image_id"] for r in rows] == NLVR2_IDS
    paths = {r["image_id"]: r["path"] for r in rows}
    assert paths["train-10171-0-img0"] == os.path.join("nlvr2/images/train", "47",
                                                       "train-10171-0-img0.png")
    assert paths["train-5-1-img1"] == os.path.join("nlvr2/images/train", "12", "train-5-1-img1.png")
    assert paths["dev-850-0-img0"] == os.path.join("nlvr2/dev", "dev-850-0-img0.png")
    assert paths["test1-0-1-img1"] == os.path.join("nlvr2/test1", "test1-0-1-img1.png")
    assert (rows[4]["width"], rows[4]["height"]) == (20, 10)  # header of the first dev image
    assert pq.read_table("out/m.missing.parquet").num_rows == 0


def test_nlvr2_flat_layout_string(stage):
    stage("nlvr2", FLAT)
    rc, rows = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": "nlvr2/images"})
    assert rc == 0
    assert [r["image_id"] for r in rows] == NLVR2_IDS
    paths = {r["image_id"]: r["path"] for r in rows}
    assert paths["train-10171-0-img1"] == os.path.join("nlvr2/images/train", "47",
                                                       "train-10171-0-img1.png")
    assert paths["dev-850-0-img1"] == os.path.join("nlvr2/images/dev", "dev-850-0-img1.png")
    assert paths["test1-0-1-img0"] == os.path.join("nlvr2/images/test1", "test1-0-1-img0.png")


def test_nlvr2_flat_layout_numbered_subfolders_in_every_split(stage, tmp_path):
    stage("nlvr2", FLAT)
    for stem in ("dev-850-0-img0", "dev-850-0-img1"):
        (tmp_path / "nlvr2/images/dev/7").mkdir(exist_ok=True)
        (tmp_path / f"nlvr2/images/dev/{stem}.png").rename(tmp_path / f"nlvr2/images/dev/7/{stem}.png")
    rows = nlvr2.manifest_rows(NLVR2_SPLITS, "nlvr2/images")
    assert {r["image_id"]: r["path"] for r in rows}["dev-850-0-img1"] == os.path.join(
        "nlvr2/images/dev", "7", "dev-850-0-img1.png")


def test_nlvr2_mapping_of_only_the_configured_splits(stage):
    stage("nlvr2", RELEASED)
    splits = {"dev": NLVR2_SPLITS["dev"]}
    rc, rows = run("nlvr2", {"splits": splits, "image_root": RELEASED})  # extra keys: unused
    assert rc == 0
    assert [r["image_id"] for r in rows] == ["dev-850-0-img0", "dev-850-0-img1"]


def test_nlvr2_split_missing_from_mapping(stage, capsys):
    stage("nlvr2", RELEASED)
    image_root = {"train": RELEASED["train"], "dev": RELEASED["dev"]}
    rc, _ = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": image_root})
    assert_cli_error(capsys, rc, "datasets.nlvr2.image_root.test1", "no image folder for split 'test1'")
    assert not Path("out/m.parquet").exists()
    with pytest.raises(SpecError, match=r"datasets\.nlvr2\.image_root\.test1"):
        nlvr2.manifest_rows(NLVR2_SPLITS, image_root)


def test_nlvr2_mapping_folder_not_found(stage, capsys):
    stage("nlvr2", RELEASED)
    image_root = dict(RELEASED, dev="nlvr2/images/dev")  # the flat place, not the release's
    rc, _ = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": image_root})
    assert_cli_error(capsys, rc, "datasets.nlvr2.image_root.dev", "not found: nlvr2/images/dev")
    # a string image_root with the released layout: names the split folder it looked for
    rc, _ = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": "nlvr2/images"})
    assert_cli_error(capsys, rc, "datasets.nlvr2.image_root", os.path.join("nlvr2/images", "dev"))


def test_nlvr2_image_root_of_wrong_type(stage, capsys):
    stage("nlvr2", RELEASED)
    rc, _ = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": ["nlvr2/images"]})
    assert_cli_error(capsys, rc, "datasets.nlvr2.image_root")
    rc, _ = run("nlvr2", {"splits": NLVR2_SPLITS, "image_root": dict(RELEASED, dev=3)})
    assert_cli_error(capsys, rc, "datasets.nlvr2.image_root.dev: must be a folder path")


# ---------------------------------------------------------------- missing_images
def test_missing_images_error_is_the_default(stage, capsys):
    root = stage("vg")
    (root / "vg/VG_100K/10.jpg").unlink()
    for spec in (SPECS["vg"], dict(SPECS["vg"], missing_images="error")):
        rc, _ = run("vg", spec)
        err = assert_cli_error(capsys, rc, "image_data.json: [1]: image file missing",
                        "10.jpg", "datasets.vg.missing_images: skip")
        assert len(err.strip().splitlines()) == 1
        assert not Path("out/m.parquet").exists()
        assert not Path("out/m.missing.parquet").exists()


def test_missing_images_skip_vg(stage, capsys):
    root = stage("vg")
    (root / "vg/VG_100K/10.jpg").unlink()
    rc, rows = run("vg", dict(SPECS["vg"], missing_images="skip"))
    assert rc == 0
    assert [r["image_id"] for r in rows] == ["1"]
    assert read_missing() == [{
        "image_id": "10", "path": os.path.join("vg", "VG_100K", "10.jpg"),
        "source": "vg/image_data.json", "record": "[1]",
        "reason": "image file missing: no 10.jpg under vg/{VG_100K,VG_100K_2}"}]
    err = capsys.readouterr().err
    assert "vg: skipped 1 images whose file is missing" in err
    assert "out/m.missing.parquet" in err


def test_missing_images_coco(stage, capsys):
    root = stage("coco")
    (root / "coco/train2014/COCO_train2014_000000000025.jpg").unlink()
    rc, _ = run("coco", SPECS["coco"])
    assert_cli_error(capsys, rc, "captions_train2014.json: images[1]: image file missing",
              "COCO_train2014_000000000025.jpg")
    rc, rows = run("coco", dict(SPECS["coco"], missing_images="skip"))
    assert rc == 0
    assert [r["image_id"] for r in rows] == ["9", "42"]
    missing = read_missing()
    assert [(m["image_id"], m["path"], m["source"], m["record"]) for m in missing] == [
        ("25", os.path.join("coco/train2014", "COCO_train2014_000000000025.jpg"),
         "coco/annotations/captions_train2014.json", "images[1]")]
    assert missing[0]["reason"].startswith("image file missing: ")


def test_missing_images_nlvr2_reported_once_per_image(stage, capsys, tmp_path):
    stage("nlvr2", RELEASED)
    # train-10171-0-img1 is named by two statements (lines 1 and 2 of train.json)
    (tmp_path / "nlvr2/images/train/47/train-10171-0-img1.png").unlink()
    (tmp_path / "nlvr2/dev/dev-850-0-img0.png").unlink()
    spec = {"splits": NLVR2_SPLITS, "image_root": RELEASED}
    rc, _ = run("nlvr2", spec)
    assert_cli_error(capsys, rc, "train.json: line 1 (train-10171-0-0): image file missing",
              "train-10171-0-img1")
    rc, rows = run("nlvr2", dict(spec, missing_images="skip"))
    assert rc == 0
    assert [r["image_id"] for r in rows] == [
        i for i in NLVR2_IDS if i not in ("train-10171-0-img1", "dev-850-0-img0")]
    missing = read_missing()
    assert [(m["image_id"], m["path"], m["source"], m["record"]) for m in missing] == [
        ("train-10171-0-img1", os.path.join("nlvr2/images/train", "47", "train-10171-0-img1.png"),
         "nlvr2/train.json", "line 1 (train-10171-0-0)"),
        ("dev-850-0-img0", os.path.join("nlvr2/dev", "dev-850-0-img0.png"),
         "nlvr2/dev.json", "line 1 (dev-850-0-0)")]
    assert "nlvr2: skipped 2 images" in capsys.readouterr().err


def test_missing_images_vcr_and_flickr30k(stage):
    root = stage("vcr")
    (root / f"vcr/vcr1images/{M2}.jpg").unlink()
    rc, rows = run("vcr", dict(SPECS["vcr"], missing_images="skip"))
    assert rc == 0 and [r["image_id"] for r in rows] == [M1]
    assert [(m["image_id"], m["source"], m["record"]) for m in read_missing()] == [
        (M2, "vcr/train.jsonl", "line 3 (train-2)")]  # once, though val names it too

    stage("flickr30k")
    (root / "flickr30k/flickr30k-images/1001.jpg").unlink()  # in the Karpathy json
    (root / "flickr30k/flickr30k-images/1003.jpg").unlink()  # only in Entities' train.txt
    rc, rows = run("flickr30k", dict(SPECS["flickr30k"], missing_images="skip"),
                   "out/f.parquet")
    assert rc == 0
    assert [r["image_id"] for r in rows] == ["1000092795", "1002", "1004"]
    assert [(m["image_id"], m["path"], m["source"], m["record"])
            for m in read_missing("out/f.missing.parquet")] == [
        ("1001", os.path.join("flickr30k/flickr30k-images", "1001.jpg"),
         "flickr30k/dataset_flickr30k.json", "images[1]"),
        ("1003", os.path.join("flickr30k/flickr30k-images", "1003.jpg"),
         "flickr30k/flickr30k_entities/train.txt", "line 2")]


def test_missing_table_written_empty_on_every_build(stage, capsys):
    stage("vg")
    rc, rows = run("vg", SPECS["vg"], "out/vg.parquet")
    assert rc == 0 and len(rows) == 2
    assert read_missing("out/vg.missing.parquet") == []
    assert "skipped" not in capsys.readouterr().err
    rc, _ = run("vg", dict(SPECS["vg"], missing_images="skip"), "out/vg.parquet")
    assert rc == 0 and read_missing("out/vg.missing.parquet") == []
    assert "vg: skipped 0 images" in capsys.readouterr().err
    # its path can be given
    rc, _ = run("vg", SPECS["vg"], "out/vg.parquet", "--missing-out", "elsewhere/missing.parquet")
    assert rc == 0 and read_missing("elsewhere/missing.parquet") == []
    assert manifest.missing_path("resources/manifests/vg.parquet") == \
        "resources/manifests/vg.missing.parquet"


def test_cli_writes_manifest_and_missing_table(stage):
    root = stage("vg")
    (root / "vg/VG_100K_2/1.jpg").unlink()
    out = "resources/manifests/vg.parquet"
    assert manifest.main(["--dataset", "vg", "--spec",
                          json.dumps(dict(SPECS["vg"], missing_images="skip")), "--out", out]) == 0
    assert pq.read_table(out).column("image_id").to_pylist() == ["10"]
    missing = pq.read_table("resources/manifests/vg.missing.parquet")
    assert missing.column("image_id").to_pylist() == ["1"]
    assert json.loads(missing.schema.metadata[b"dataset"]) == "vg"
    assert sorted(os.listdir("resources/manifests")) == ["vg.missing.parquet", "vg.parquet"]


def test_bad_missing_images_value(stage, capsys):
    stage("vg")
    rc, _ = run("vg", dict(SPECS["vg"], missing_images="ignore"))
    assert_cli_error(capsys, rc, "datasets.vg.missing_images: must be one of error, skip")


def test_skip_with_every_image_missing_is_an_error(stage, capsys, tmp_path):
    stage("vg")
    for rel in FORMAT_IMAGES["vg"]:
        (tmp_path / rel).unlink()
    rc, _ = run("vg", dict(SPECS["vg"], missing_images="skip"))
    assert_cli_error(capsys, rc, "datasets.vg: all 2 listed images are missing")
    assert not Path("out/m.parquet").exists()


def test_image_folder_not_found_names_the_key(stage, capsys):
    stage("vg")
    rc, _ = run("vg", dict(SPECS["vg"], image_root="vg/nope", missing_images="skip"))
    assert_cli_error(capsys, rc, "datasets.vg.image_root: image folder not found: vg/nope")
    stage("coco")
    spec = json.loads(json.dumps(SPECS["coco"]))
    spec["captions"]["val"]["images"] = "coco/val2017"
    rc, _ = run("coco", spec)
    assert_cli_error(capsys, rc, "datasets.coco.captions.val.images: image folder not found")


def test_readers_report_through_one_callback(stage):
    root = stage("vg")
    (root / "vg/VG_100K/10.jpg").unlink()
    with pytest.raises(MissingImageError) as exc:
        vg.manifest_rows("vg/image_data.json", "vg")
    assert isinstance(exc.value, FormatError)  # callers catching FormatError still do
    assert (exc.value.image_id, exc.value.record) == ("10", "[1]")
    reported = []
    rows = vg.manifest_rows("vg/image_data.json", "vg", on_missing=reported.append)
    assert [r["image_id"] for r in rows] == ["1"]
    assert [e.image_path for e in reported] == [os.path.join("vg", "VG_100K", "10.jpg")]
