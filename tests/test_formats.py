"""Readers of the official dataset formats, the manifest CLI and the task_data CLI."""

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cavl import manifest, task_data
from cavl.formats import coco, flickr30k, nlvr2, vcr, vg, vqa
from cavl.formats.errors import FormatError, SpecError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"

M1 = "lsmdc_3001_21_JUMP_STREET/3001_21_JUMP_STREET_00.03.07.498-00.03.10.975@0"
M2 = "movieclips_A_Fistful_of_Dollars/Sv_GcxkmW4Y@29"

# images each dataset's fixtures need: path relative to tmp_path → (width, height)
IMAGES = {
    "coco": {"coco/train2014/COCO_train2014_000000000009.jpg": (64, 48),
             "coco/train2014/COCO_train2014_000000000025.jpg": (40, 32),
             "coco/val2014/COCO_val2014_000000000042.jpg": (32, 24)},
    "vg": {"vg/VG_100K_2/1.jpg": (80, 60), "vg/VG_100K/10.jpg": (50, 40)},
    "vqa": {},
    "vcr": {f"vcr/vcr1images/{M1}.jpg": (64, 48), f"vcr/vcr1images/{M2}.jpg": (40, 30)},
    "nlvr2": {"nlvr2/images/train/47/train-10171-0-img0.png": (30, 20),
              "nlvr2/images/train/47/train-10171-0-img1.png": (31, 21),
              "nlvr2/images/train/3/train-5-1-img0.png": (32, 22),
              # not in the 'directory' the json names: found by searching the split folder
              "nlvr2/images/train/12/train-5-1-img1.png": (33, 23),
              "nlvr2/images/dev/dev-850-0-img0.png": (34, 24),
              "nlvr2/images/dev/dev-850-0-img1.png": (35, 25),
              "nlvr2/images/test1/test1-0-1-img0.png": (36, 26),
              "nlvr2/images/test1/test1-0-1-img1.png": (37, 27)},
    "flickr30k": {f"flickr30k/flickr30k-images/{i}.jpg": s for i, s in
                  [("1000092795", (64, 48)), ("1001", (32, 24)), ("1002", (40, 30)),
                   ("1003", (20, 10)), ("1004", (33, 22))]},
}

SPECS = {
    "coco": {"captions": {
        "train": {"annotations": "coco/annotations/captions_train2014.json",
                  "images": "coco/train2014"},
        "val": {"annotations": "coco/annotations/captions_val2014.json",
                "images": "coco/val2014"}}},
    "vg": {"image_data": "vg/image_data.json",
           "region_descriptions": "vg/region_descriptions.json", "image_root": "vg"},
    "vqa": {"splits": {
        "train": {"questions": "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
                  "annotations": "vqa/v2_mscoco_train2014_annotations.json"},
        "val": {"questions": "vqa/v2_OpenEnded_mscoco_val2014_questions.json",
                "annotations": "vqa/v2_mscoco_val2014_annotations.json"}}},
    "vcr": {"splits": {"train": "vcr/train.jsonl", "val": "vcr/val.jsonl"},
            "image_root": "vcr/vcr1images"},
    "nlvr2": {"splits": {"train": "nlvr2/train.json", "dev": "nlvr2/dev.json",
                         "test1": "nlvr2/test1.json"},
              "image_root": "nlvr2/images"},
    "flickr30k": {"image_root": "flickr30k/flickr30k-images",
                  "karpathy_split": "flickr30k/dataset_flickr30k.json",
                  "entities_root": "flickr30k/flickr30k_entities"},
}

MANIFEST_TYPES = {"image_id": pa.string(), "path": pa.string(), "width": pa.int32(),
                  "height": pa.int32(), "gt_boxes": pa.list_(pa.list_(pa.float32())),
                  "gt_box_labels": pa.list_(pa.string())}


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """Copy the fixtures of some datasets into tmp_path, draw their images, chdir there."""
    monkeypatch.chdir(tmp_path)

    def _stage(*datasets):
        for ds in datasets:
            shutil.copytree(FIXTURES / ds, tmp_path / ds, dirs_exist_ok=True)
            for rel, size in IMAGES[ds].items():
                p = tmp_path / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", size, (120, 30, 200)).save(p)
        return tmp_path
    return _stage


def assert_schema(table, expected):
    assert table.schema.names == list(expected)
    for name, typ in expected.items():
        assert table.schema.field(name).type == typ, name


def run_manifest(dataset, spec, out="out/m.parquet"):
    rc = manifest.main(["--dataset", dataset, "--spec", json.dumps(spec), "--out", out])
    return rc, (pq.read_table(out) if rc == 0 else None)


def run_task(task, spec, out_dir="out/task"):
    rc = task_data.main(["--task", task, "--spec", json.dumps(spec), "--out-dir", out_dir])
    if rc != 0:
        return rc, None
    return rc, {p.stem: pq.read_table(p) for p in sorted(Path(out_dir).glob("*.parquet"))}


def assert_cli_error(capsys, rc, *fragments):
    """CLI failed with exit status 1 and a one-line message holding every fragment."""
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


# ---------------------------------------------------------------- errors
def test_format_error_names_file_and_record():
    e = FormatError("a/captions_train2014.json", "annotations[3]", "missing key 'caption'")
    assert str(e) == "a/captions_train2014.json: annotations[3]: missing key 'caption'"
    assert (e.path, e.record) == ("a/captions_train2014.json", "annotations[3]")
    assert str(FormatError(Path("x.json"), None, "file not found")) == "x.json: file not found"
    assert isinstance(e, ValueError)


# ---------------------------------------------------------------- COCO
def test_coco_read_captions():
    images, anns = coco.read_captions(FIXTURES / "coco/annotations/captions_train2014.json")
    assert [(i["id"], i["width"], i["height"]) for i in images] == [(9, 64, 48), (25, 40, 32)]
    assert images[0]["file_name"] == "COCO_train2014_000000000009.jpg"
    assert [(a["id"], a["image_id"]) for a in anns] == [(48, 9), (67, 9), (120, 25)]
    assert anns[0]["caption"] == "A plate of food with broccoli."  # stripped
    assert anns[2]["caption"] == "A giraffe eating leaves from a tree."


@pytest.mark.parametrize("name, fragments", [
    ("captions_missing_caption.json", ["captions_missing_caption.json: annotations[1]: "
                                       "missing key 'caption'"]),
    ("captions_width_string.json", ["captions_width_string.json: images[1]: key 'width' "
                                    "must be integer, got string"]),
    ("captions_broken.json", ["captions_broken.json: line ", "invalid JSON"]),
])
def test_coco_malformed(name, fragments):
    with pytest.raises(FormatError) as exc:
        coco.read_captions(FIXTURES / "coco/bad" / name)
    for f in fragments:
        assert f in str(exc.value)


def test_coco_missing_file():
    with pytest.raises(FormatError, match=r"nope\.json: file not found"):
        coco.read_captions(FIXTURES / "coco/nope.json")


def test_manifest_coco_cli(stage):
    stage("coco")
    rc, t = run_manifest("coco", SPECS["coco"])
    assert rc == 0
    assert_schema(t, MANIFEST_TYPES)
    assert t.column("image_id").to_pylist() == ["9", "25", "42"]
    assert t.column("path").to_pylist() == [
        os.path.join("coco/train2014", "COCO_train2014_000000000009.jpg"),
        os.path.join("coco/train2014", "COCO_train2014_000000000025.jpg"),
        os.path.join("coco/val2014", "COCO_val2014_000000000042.jpg")]
    assert t.column("width").to_pylist() == [64, 40, 32]
    assert t.column("height").to_pylist() == [48, 32, 24]
    assert t.column("gt_boxes").to_pylist() == [[], [], []]
    assert t.column("gt_box_labels").to_pylist() == [[], [], []]


def test_coco_instances_become_gt_boxes():
    boxes = coco.read_instances(FIXTURES / "coco/annotations/instances_train2014.json")
    # [x, y, w, h] → corners, file order kept; the crowd region and the zero-width box are skipped
    assert boxes == {9: ([[1.0, 2.0, 11.5, 22.0], [40.0, 1.0, 60.0, 9.0]], ["broccoli", "person"]),
                     25: ([[3.0, 4.0, 33.0, 28.0]], ["giraffe"])}


@pytest.mark.parametrize("name, fragment", [
    ("instances_unknown_category.json", "annotations[3]: category_id 7 is not in 'categories'"),
    ("instances_short_bbox.json", "annotations[0]: bbox must be [x, y, width, height], got 3 numbers"),
])
def test_coco_instances_malformed(name, fragment):
    with pytest.raises(FormatError) as exc:
        coco.read_instances(FIXTURES / "coco/bad" / name)
    assert f"{name}: {fragment}" in str(exc.value)


def test_manifest_coco_with_instances(stage):
    stage("coco")
    spec = json.loads(json.dumps(SPECS["coco"]))
    spec["captions"]["train"]["instances"] = "coco/annotations/instances_train2014.json"
    rc, t = run_manifest("coco", spec)
    assert rc == 0
    rows = {r["image_id"]: r for r in t.to_pylist()}
    assert rows["9"]["gt_boxes"] == [[1.0, 2.0, 11.5, 22.0], [40.0, 1.0, 60.0, 9.0]]
    assert rows["9"]["gt_box_labels"] == ["broccoli", "person"]
    assert rows["25"]["gt_box_labels"] == ["giraffe"]
    assert rows["42"]["gt_boxes"] == []  # val has no instances file here


def test_manifest_coco_missing_image(stage, capsys):
    root = stage("coco")
    (root / "coco/train2014/COCO_train2014_000000000025.jpg").unlink()
    rc, _ = run_manifest("coco", SPECS["coco"])
    assert_cli_error(capsys, rc, "captions_train2014.json: images[1]: image file missing",
                     "COCO_train2014_000000000025.jpg")
    assert not Path("out/m.parquet").exists()


def test_manifest_bad_spec(stage, capsys):
    stage("coco")
    rc = manifest.main(["--dataset", "coco", "--spec", '{"captions": {"train": {}}}',
                        "--out", "out/m.parquet"])
    assert_cli_error(capsys, rc, "datasets.coco.captions.train: missing key 'annotations'")
    rc = manifest.main(["--dataset", "vg", "--spec", "{not json", "--out", "out/m.parquet"])
    assert_cli_error(capsys, rc, "--spec: invalid JSON")


def test_manifest_spec_from_file(stage, tmp_path):
    stage("vg")
    (tmp_path / "spec.json").write_text(json.dumps(SPECS["vg"]))
    assert manifest.main(["--dataset", "vg", "--spec", "@spec.json", "--out", "m.parquet"]) == 0
    assert pq.read_table("m.parquet").num_rows == 2


# ---------------------------------------------------------------- Visual Genome
def test_vg_manifest(stage):
    stage("vg")
    rc, t = run_manifest("vg", SPECS["vg"])
    assert rc == 0
    assert_schema(t, MANIFEST_TYPES)
    rows = t.to_pylist()
    assert [r["image_id"] for r in rows] == ["1", "10"]
    # the url's release folder decides where the image sits
    assert rows[0]["path"] == os.path.join("vg", "VG_100K_2", "1.jpg")
    assert rows[1]["path"] == os.path.join("vg", "VG_100K", "10.jpg")
    assert [(r["width"], r["height"]) for r in rows] == [(80, 60), (50, 40)]


def test_vg_objects_become_gt_boxes(stage):
    stage("vg")
    rc, t = run_manifest("vg", dict(SPECS["vg"], objects="vg/objects.json"))
    assert rc == 0
    rows = t.to_pylist()
    # x, y, w, h → corners; first name; the object without height is skipped; old "id"/"name" keys
    assert rows[0]["gt_boxes"] == [[2.0, 5.0, 32.0, 25.0], [50.0, 10.0, 65.0, 50.0]]
    assert rows[0]["gt_box_labels"] == ["trees", "man"]
    assert rows[1]["gt_boxes"] == [[4.0, 3.0, 12.0, 15.0]] and rows[1]["gt_box_labels"] == ["shade"]
    with pytest.raises(FormatError, match=r"objects_missing_w\.json: \[0\]\.objects\[2\]: missing key 'w'"):
        vg.read_objects(FIXTURES / "vg/bad/objects_missing_w.json")


def test_vg_image_found_in_other_release_folder(stage):
    root = stage("vg")
    (root / "vg/VG_100K/10.jpg").rename(root / "vg/VG_100K_2/10.jpg")
    rows = vg.manifest_rows("vg/image_data.json", "vg")
    assert rows[1]["path"] == os.path.join("vg", "VG_100K_2", "10.jpg")
    (root / "vg/VG_100K_2/10.jpg").unlink()
    with pytest.raises(FormatError, match=r"image_data\.json: \[1\]: image file missing"):
        vg.manifest_rows("vg/image_data.json", "vg")


def test_vg_region_descriptions():
    regs = vg.read_region_descriptions(FIXTURES / "vg/region_descriptions.json")
    assert [(r["region_id"], r["image_id"]) for r in regs] == [(1382, 1), (1383, 1), (5000, 10)]
    assert regs[1]["phrase"] == "shade is along the street"


def test_vg_image_data_accepts_old_id_key(tmp_path):
    p = tmp_path / "image_data.json"
    p.write_text(json.dumps([{"id": 7, "url": "https://x/VG_100K/7.jpg", "width": 5,
                              "height": 6}]))
    assert vg.read_image_data(p)[0]["image_id"] == 7


@pytest.mark.parametrize("reader, name, fragment", [
    (vg.read_region_descriptions, "region_descriptions_missing_phrase.json",
     "region_descriptions_missing_phrase.json: [1].regions[0]: missing key 'phrase'"),
    (vg.read_image_data, "image_data_null_height.json",
     "image_data_null_height.json: [1]: key 'height' must be integer, got null"),
])
def test_vg_malformed(reader, name, fragment):
    with pytest.raises(FormatError) as exc:
        reader(FIXTURES / "vg/bad" / name)
    assert fragment in str(exc.value)


def test_vg_region_of_unknown_image():
    with pytest.raises(FormatError, match=r"region_descriptions_unknown_image\.json: "
                                          r"region_id 1383: image_id 77 is not in"):
        vg.caption_rows(FIXTURES / "vg/bad/region_descriptions_unknown_image.json",
                        FIXTURES / "vg/image_data.json")


def test_vg_read_attributes():
    got = vg.read_attributes(FIXTURES / "vg/attributes.json")
    assert list(got) == [1, 10]  # the repeated image 1 is merged; the old "id" key is read
    assert got[1][0] == {"object_id": 1058498, "box": [2.0, 5.0, 32.0, 25.0], "names": ["clock"],
                         "attributes": ["green", "Tall."]}  # as annotated: cleaning is extract.vocab's
    # no "attributes" key, null and [] → []; objects without area are kept
    assert got[1][1]["attributes"] == [] and got[1][1]["box"] == [1.0, 1.0, 11.0, 1.0]
    assert got[1][2]["names"] == ["White Shirt", "shirt"]
    assert got[1][2]["attributes"] == ["black and white", "red and blue"]
    assert got[1][3] == {"object_id": 7, "box": [6.0, 4.5, 9.0, 6.5], "names": ["grey cat"], "attributes": []}
    assert got[10] == [{"object_id": 5, "box": [4.0, 3.0, 12.0, 15.0], "names": ["shade"], "attributes": []}]
    # objects.json in the same form: every object and name, nothing skipped
    objs = vg.read_object_records(FIXTURES / "vg/objects.json")
    assert [[(o["object_id"], o["names"]) for o in objs[k]] for k in (1, 10)] == [
        [(1058498, ["trees"]), (1058534, ["sidewalk"]), (3798579, ["man", "person"])], [(5, ["shade"])]]
    assert all(o["attributes"] == [] for os_ in objs.values() for o in os_)


@pytest.mark.parametrize("name, fragment", [
    ("attributes_not_strings.json", "attributes_not_strings.json: [0].attributes[2].attributes[1]: "
                                    "entry must be string, got integer"),
    ("attributes_missing_list.json", "attributes_missing_list.json: [1]: missing key 'attributes'"),
    ("attributes_string_x.json",
     "attributes_string_x.json: [0].attributes[1]: key 'x' must be integer or number, got string"),
])
def test_vg_attributes_malformed(name, fragment):
    with pytest.raises(FormatError) as exc:
        vg.read_attributes(FIXTURES / "vg/bad" / name)
    assert fragment in str(exc.value)


# ---------------------------------------------------------------- pretrain task
PRETRAIN_TYPES = {"example_id": pa.string(), "dataset": pa.string(), "image_id": pa.string(),
                  "caption": pa.string()}


def test_task_pretrain_cli(stage):
    stage("coco", "vg")
    rc, tables = run_task("pretrain", {"coco": SPECS["coco"], "vg": SPECS["vg"]})
    assert rc == 0
    assert set(tables) == {"train", "val"}
    for t in tables.values():
        assert_schema(t, PRETRAIN_TYPES)
    train = tables["train"].to_pylist()
    assert [r["example_id"] for r in train] == ["coco-48", "coco-67", "coco-120",
                                               "vg-1382", "vg-1383", "vg-5000"]
    assert [r["dataset"] for r in train] == ["coco"] * 3 + ["vg"] * 3
    assert [r["image_id"] for r in train] == ["9", "9", "25", "1", "1", "10"]
    assert train[3]["caption"] == "the clock is green in colour"
    val = tables["val"].to_pylist()
    assert [(r["example_id"], r["image_id"]) for r in val] == [("coco-301", "42"),
                                                              ("coco-302", "42")]


def _vg_overlapping(root):
    """The fixture's VG pictures re-labelled: image 1 is COCO val image 42, image 10 Flickr30k
    test image 1002 (the release marks such pictures with coco_id / flickr_id)."""
    path = root / "vg/image_data.json"
    data = json.loads(path.read_text())
    data[0]["coco_id"], data[1]["coco_id"], data[1]["flickr_id"] = 42, 25, 1002
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("exclude, vg_rows, left_out", [
    ([], ["vg-1382", "vg-1383", "vg-5000"], 0),
    (["coco"], ["vg-5000"], 1),
    (["flickr30k"], ["vg-1382", "vg-1383"], 1),
    (["coco", "flickr30k"], [], 2),
])
def test_task_pretrain_leaves_out_evaluation_images(stage, capsys, exclude, vg_rows, left_out):
    _vg_overlapping(stage("coco", "vg", "flickr30k"))
    spec = {"coco": SPECS["coco"], "vg": {**SPECS["vg"], "exclude_eval_images": exclude},
            "flickr30k": SPECS["flickr30k"]}
    rc, tables = run_task("pretrain", spec)
    assert rc == 0
    train = tables["train"].to_pylist()
    assert [r["example_id"] for r in train if r["dataset"] == "vg"] == vg_rows
    assert [r["example_id"] for r in train if r["dataset"] == "coco"] == ["coco-48", "coco-67", "coco-120"]
    assert f"left out {left_out} VG images" in capsys.readouterr().err


def test_task_pretrain_evaluation_overlap_errors(stage, capsys):
    _vg_overlapping(stage("coco", "vg"))
    rc, _ = run_task("pretrain", {"coco": SPECS["coco"], "vg": {**SPECS["vg"], "exclude_eval_images": ["flickr30k"]}})
    assert_cli_error(capsys, rc, "datasets.vg.exclude_eval_images names it", "missing key 'flickr30k'")
    rc, _ = run_task("pretrain", {"coco": SPECS["coco"], "vg": {**SPECS["vg"], "exclude_eval_images": ["vqa"]}})
    assert_cli_error(capsys, rc, "datasets.vg.exclude_eval_images: unknown dataset(s) ['vqa']")


def test_vg_image_data_overlap_ids(tmp_path):
    p = tmp_path / "image_data.json"
    p.write_text(json.dumps([{"image_id": 7, "width": 5, "height": 6, "coco_id": 3, "flickr_id": None},
                             {"image_id": 8, "width": 5, "height": 6},
                             {"image_id": 9, "width": 5, "height": 6, "flickr_id": 11}]))
    assert [(r["coco_id"], r["flickr_id"]) for r in vg.read_image_data(p)] == [(3, None), (None, None), (None, 11)]
    assert vg.images_also_in(p, coco_ids={"3"}, flickr_ids={"11", "12"}) == {"7", "9"}
    assert vg.images_also_in(p) == set()
    p.write_text(json.dumps([{"image_id": 7, "width": 5, "height": 6, "coco_id": "3"}]))
    with pytest.raises(FormatError, match=r"\[0\]: key 'coco_id' must be integer"):
        vg.read_image_data(p)


def test_task_pretrain_needs_coco_or_vg(capsys):
    rc, _ = run_task("pretrain", {"vqa": SPECS["vqa"]})
    assert_cli_error(capsys, rc, "pretraining needs datasets.coco or datasets.vg")


def test_task_pretrain_from_coco_alone(stage):
    stage("coco")
    rc, tables = run_task("pretrain", {"coco": SPECS["coco"]})
    assert rc == 0
    assert set(tables["train"].column("dataset").to_pylist()) == {"coco"}


# ---------------------------------------------------------------- VQA
VQA_TYPES = {"question_id": pa.int64(), "image_id": pa.string(), "question": pa.string(),
             "answers": pa.list_(pa.string()), "multiple_choice_answer": pa.string(),
             "answer_type": pa.string(), "question_type": pa.string()}


def test_task_vqa_cli(stage):
    stage("vqa")
    rc, tables = run_task("vqa", {"vqa": SPECS["vqa"]})
    assert rc == 0
    assert set(tables) == {"train", "val"}
    for t in tables.values():
        assert_schema(t, VQA_TYPES)
    train = tables["train"].to_pylist()
    assert [(r["question_id"], r["image_id"]) for r in train] == [(9000, "9"), (25000, "25")]
    assert train[0]["answers"] == ["broccoli"] * 7 + ["vegetables", "food", "broccoli and rice"]
    assert train[0]["multiple_choice_answer"] == "broccoli"
    assert (train[1]["answer_type"], train[1]["question_type"]) == ("yes/no", "is this a")
    assert tables["val"].to_pylist()[0]["answers"] == ["1"] * 9 + ["one"]


def test_vqa_split_without_annotations_keeps_types(stage):
    stage("vqa")
    spec = {"vqa": {"splits": {"test": {
        "questions": "vqa/v2_OpenEnded_mscoco_val2014_questions.json"}}}}
    rc, tables = run_task("vqa", spec)
    assert rc == 0
    t = tables["test"]
    assert_schema(t, VQA_TYPES)
    assert t.to_pylist()[0]["answers"] == []
    assert t.column("multiple_choice_answer").null_count == 1


def test_vqa_malformed(stage, capsys):
    stage("vqa")
    spec = json.loads(json.dumps(SPECS["vqa"]))
    spec["splits"]["train"]["annotations"] = "vqa/bad/annotations_missing_mca.json"
    rc, _ = run_task("vqa", {"vqa": spec})
    assert_cli_error(capsys, rc, "annotations_missing_mca.json: annotations[1]: "
                                 "missing key 'multiple_choice_answer'")
    assert not Path("out/task/val.parquet").exists()  # nothing written on failure
    with pytest.raises(FormatError, match=r"questions_string_id\.json: questions\[0\]: "
                                          r"key 'question_id' must be integer"):
        vqa.read_questions("vqa/bad/questions_string_id.json")


def test_vqa_question_without_annotation(stage):
    stage("vqa")
    with pytest.raises(FormatError, match=r"v2_mscoco_val2014_annotations\.json: "
                                          r"question_id 9000: no annotation"):
        vqa.task_rows("vqa/v2_OpenEnded_mscoco_train2014_questions.json",
                      "vqa/v2_mscoco_val2014_annotations.json")


# ---------------------------------------------------------------- VCR
VCR_TYPES = {"annot_id": pa.string(), "image_id": pa.string(), "question": pa.string(),
             "answer_choices": pa.string(), "rationale_choices": pa.string(),
             "answer_label": pa.int32(), "rationale_label": pa.int32(),
             "objects": pa.list_(pa.string())}


def test_vcr_manifest(stage):
    stage("vcr")
    rc, t = run_manifest("vcr", SPECS["vcr"])
    assert rc == 0
    assert_schema(t, MANIFEST_TYPES)
    rows = t.to_pylist()
    assert [r["image_id"] for r in rows] == [M1, M2]  # one row per image, first-seen order
    assert rows[0]["path"] == os.path.join("vcr/vcr1images", M1 + ".jpg")
    assert (rows[0]["width"], rows[0]["height"]) == (64, 48)
    # the 5th (score) value of each box is dropped
    assert rows[0]["gt_boxes"] == [[10.5, 5.0, 30.25, 40.0], [32.0, 4.0, 60.0, 44.5],
                                   [0.0, 20.0, 20.0, 47.0]]
    assert rows[0]["gt_box_labels"] == ["person", "person", "car"]
    assert rows[1]["gt_boxes"] == [[1.0, 2.0, 20.0, 22.0]] and rows[1]["gt_box_labels"] == ["horse"]


def test_task_vcr_cli(stage):
    stage("vcr")
    rc, tables = run_task("vcr", {"vcr": SPECS["vcr"]})
    assert rc == 0
    assert set(tables) == {"train", "val"}
    for t in tables.values():
        assert_schema(t, VCR_TYPES)
    r = tables["train"].to_pylist()[0]
    assert (r["annot_id"], r["image_id"]) == ("train-0", M1)
    assert json.loads(r["question"]) == ["What", "are", [0, 1], "doing", "?"]
    assert json.loads(r["answer_choices"])[1] == [[0], "is", "driving", [2], "."]
    assert len(json.loads(r["rationale_choices"])) == 4
    assert (r["answer_label"], r["rationale_label"]) == (0, 2)
    assert r["objects"] == ["person", "person", "car"]
    assert tables["val"].column("annot_id").to_pylist() == ["val-0"]


def test_vcr_test_split_has_no_labels():
    rows = vcr.task_rows(FIXTURES / "vcr/test.jsonl")
    assert (rows[0]["answer_label"], rows[0]["rationale_label"]) == (-1, -1)


@pytest.mark.parametrize("name, fragment", [
    ("train_broken_line.jsonl", "train_broken_line.jsonl: line 2: invalid JSON"),
    ("train_bad_reference.jsonl", "train_bad_reference.jsonl: line 2 (train-1): question[1] "
                                  "refers to object 7, but there are 3 objects"),
])
def test_vcr_malformed_jsonl(name, fragment):
    with pytest.raises(FormatError) as exc:
        vcr.read_split(FIXTURES / "vcr/bad" / name)
    assert fragment in str(exc.value)


def test_vcr_malformed_metadata(stage, capsys):
    root = stage("vcr")
    shutil.copy(root / "vcr/bad/metadata_short_box.json", root / f"vcr/vcr1images/{M2}.json")
    rc, _ = run_manifest("vcr", SPECS["vcr"])
    assert_cli_error(capsys, rc, "Sv_GcxkmW4Y@29.json: boxes[0]: box must have 5 values")


def test_vcr_missing_image(stage, capsys):
    root = stage("vcr")
    (root / f"vcr/vcr1images/{M2}.jpg").unlink()
    rc, _ = run_manifest("vcr", SPECS["vcr"])
    assert_cli_error(capsys, rc, "train.jsonl: line 3 (train-2): image file missing")


# ---------------------------------------------------------------- NLVR2
NLVR2_TYPES = {"identifier": pa.string(), "sentence": pa.string(), "label": pa.bool_(),
               "left_image_id": pa.string(), "right_image_id": pa.string()}


def test_nlvr2_image_stems():
    assert nlvr2.image_stems("dev-850-0-0") == ("dev-850-0-img0", "dev-850-0-img1")


def test_nlvr2_manifest(stage):
    stage("nlvr2")
    rc, t = run_manifest("nlvr2", SPECS["nlvr2"])
    assert rc == 0
    assert_schema(t, MANIFEST_TYPES)
    rows = t.to_pylist()
    assert [r["image_id"] for r in rows] == [
        "train-10171-0-img0", "train-10171-0-img1", "train-5-1-img0", "train-5-1-img1",
        "dev-850-0-img0", "dev-850-0-img1", "test1-0-1-img0", "test1-0-1-img1"]
    paths = [r["path"] for r in rows]
    assert paths[0] == os.path.join("nlvr2/images/train", "47", "train-10171-0-img0.png")
    assert paths[3] == os.path.join("nlvr2/images/train", "12", "train-5-1-img1.png")
    assert paths[4] == os.path.join("nlvr2/images/dev", "dev-850-0-img0.png")
    # sizes come from the image headers
    assert [(r["width"], r["height"]) for r in rows] == [(30 + k, 20 + k) for k in range(8)]


def test_task_nlvr2_cli(stage):
    stage("nlvr2")
    rc, tables = run_task("nlvr2", {"nlvr2": SPECS["nlvr2"]})
    assert rc == 0
    assert set(tables) == {"train", "dev", "test1"}
    for t in tables.values():
        assert_schema(t, NLVR2_TYPES)
    train = tables["train"].to_pylist()
    assert [r["label"] for r in train] == [False, True, True]
    assert train[0] == {"identifier": "train-10171-0-0", "sentence": "There are two dogs.",
                        "label": False, "left_image_id": "train-10171-0-img0",
                        "right_image_id": "train-10171-0-img1"}


@pytest.mark.parametrize("name, fragment", [
    ("dev_bad_label.json", "dev_bad_label.json: line 2 (dev-850-0-1): key 'label' must be"),
    ("dev_bad_identifier.json", "dev_bad_identifier.json: line 1 (dev-850-0): identifier"),
])
def test_nlvr2_malformed(name, fragment):
    with pytest.raises(FormatError) as exc:
        nlvr2.read_split(FIXTURES / "nlvr2/bad" / name)
    assert fragment in str(exc.value)


def test_nlvr2_missing_image(stage, capsys):
    root = stage("nlvr2")
    (root / "nlvr2/images/dev/dev-850-0-img1.png").unlink()
    rc, _ = run_manifest("nlvr2", SPECS["nlvr2"])
    assert_cli_error(capsys, rc, "dev.json: line 1 (dev-850-0-0): image file missing",
                     "dev-850-0-img1")


def test_nlvr2_unreadable_image(stage, capsys):
    root = stage("nlvr2")
    (root / "nlvr2/images/dev/dev-850-0-img1.png").write_bytes(b"not a png")
    rc, _ = run_manifest("nlvr2", SPECS["nlvr2"])
    assert_cli_error(capsys, rc, "dev.json: line 1 (dev-850-0-0): cannot read image header")


# ---------------------------------------------------------------- Flickr30k Entities sentences
def test_parse_sentence_basic():
    line = ("[/EN#18/people A man] in [/EN#19/clothing a blue shirt] is climbing "
            "[/EN#20/other a rock wall] .")
    sentence, phrases = flickr30k.parse_sentence(line)
    assert sentence == "A man in a blue shirt is climbing a rock wall ."
    assert [(p["phrase"], p["entity_id"], p["phrase_types"], p["first_word_index"])
            for p in phrases] == [("A man", "18", ["people"], 0),
                                  ("a blue shirt", "19", ["clothing"], 3),
                                  ("a rock wall", "20", ["other"], 8)]
    words = sentence.split()
    for p in phrases:  # first_word_index points at the phrase in the plain sentence
        n = len(p["phrase"].split())
        assert words[p["first_word_index"]:p["first_word_index"] + n] == p["phrase"].split()


def test_parse_sentence_types_notvisual_single_word():
    sentence, phrases = flickr30k.parse_sentence(
        "Look at [/EN#5/clothing/other a red hat] on [/EN#6/people him] in "
        "[/EN#0/notvisual the moment] .")
    assert sentence == "Look at a red hat on him in the moment ."
    assert phrases[0]["phrase_types"] == ["clothing", "other"]
    assert (phrases[0]["first_word_index"], phrases[1]["first_word_index"]) == (2, 6)
    assert phrases[1]["phrase"] == "him"
    assert (phrases[2]["entity_id"], phrases[2]["phrase_types"]) == ("0", ["notvisual"])
    assert phrases[2]["first_word_index"] == 8


@pytest.mark.parametrize("line, fragment", [
    ("[/EN#1/people A man] walks [/EN#2/other a dog .", "never closed"),
    ("[/EN#1/people A [/EN#2/other man] walks .", "'[' inside the phrase"),
    ("A man] walks .", "unexpected bracket"),
    ("[/EN1/people A man] walks .", "malformed phrase header"),
    ("[/EN#1 A man] walks .", "malformed phrase header"),
    ("[/EN#1/people] walks .", "malformed phrase header"),
])
def test_parse_sentence_syntax_errors(line, fragment):
    with pytest.raises(FormatError) as exc:
        flickr30k.parse_sentence(line, "Sentences/1.txt", "line 4")
    assert str(exc.value).startswith("Sentences/1.txt: line 4: ")
    assert fragment in str(exc.value)


def test_read_sentences_file_error():
    with pytest.raises(FormatError, match=r"Sentences_unclosed\.txt: line 2: .*never closed"):
        flickr30k.read_sentences(FIXTURES / "flickr30k/bad/Sentences_unclosed.txt")


# ---------------------------------------------------------------- Flickr30k Entities xml
def test_read_annotation():
    ann = flickr30k.read_annotation(
        FIXTURES / "flickr30k/flickr30k_entities/Annotations/1000092795.xml")
    assert (ann["width"], ann["height"]) == (64, 48)
    # 1-based corners in the file → 0-based, as the official get_annotations does;
    # an object with two <name>s gives its box to both entities
    assert ann["boxes"] == [("1", [10.0, 5.0, 30.0, 39.0]), ("1", [32.0, 4.0, 59.0, 40.0]),
                            ("2", [11.0, 6.0, 29.0, 19.0]), ("3", [11.0, 6.0, 29.0, 19.0])]
    assert ann["scene"] == ["8"] and ann["nobox"] == ["5"]


def test_read_annotation_broken_xml():
    with pytest.raises(FormatError, match=r"Annotations_broken\.xml: line \d+ column \d+: "
                                          r"invalid XML"):
        flickr30k.read_annotation(FIXTURES / "flickr30k/bad/Annotations_broken.xml")


def test_read_annotation_object_without_box(tmp_path):
    p = tmp_path / "9.xml"
    p.write_text("<annotation><size><width>4</width><height>3</height></size>"
                 "<object><name>1</name></object></annotation>")
    with pytest.raises(FormatError, match=r"9\.xml: object 0: object has neither"):
        flickr30k.read_annotation(p)


# ---------------------------------------------------------------- Flickr30k manifest / tasks
def test_flickr30k_manifest(stage):
    stage("flickr30k")
    rc, t = run_manifest("flickr30k", SPECS["flickr30k"])
    assert rc == 0
    assert_schema(t, MANIFEST_TYPES)
    rows = {r["image_id"]: r for r in t.to_pylist()}
    # Karpathy images first, then Entities-only images (1003)
    assert t.column("image_id").to_pylist() == ["1000092795", "1001", "1002", "1004", "1003"]
    r = rows["1000092795"]
    assert r["path"] == os.path.join("flickr30k/flickr30k-images", "1000092795.jpg")
    assert (r["width"], r["height"]) == (64, 48)
    assert r["gt_box_labels"] == ["1", "1", "2", "3"]
    assert r["gt_boxes"][0] == [10.0, 5.0, 30.0, 39.0]
    assert rows["1002"]["gt_boxes"] == [] and rows["1002"]["gt_box_labels"] == []
    assert (rows["1004"]["width"], rows["1004"]["height"]) == (33, 22)  # no xml: image header
    assert rows["1003"]["path"] == os.path.join("flickr30k/flickr30k-images", "1003.jpg")


def test_flickr30k_manifest_errors(stage, capsys):
    root = stage("flickr30k")
    shutil.copy(root / "flickr30k/bad/Annotations_broken.xml",
                root / "flickr30k/flickr30k_entities/Annotations/1001.xml")
    rc, _ = run_manifest("flickr30k", SPECS["flickr30k"])
    assert_cli_error(capsys, rc, "1001.xml: line ", "invalid XML")
    spec = dict(SPECS["flickr30k"], karpathy_split="flickr30k/bad/dataset_missing_raw.json")
    rc, _ = run_manifest("flickr30k", spec)
    assert_cli_error(capsys, rc, "dataset_missing_raw.json: images[2].sentences[1]: "
                                 "missing key 'raw'")


RPG_TYPES = {"image_id": pa.string(), "sentence_index": pa.int32(), "sentence": pa.string(),
             "phrase": pa.string(), "phrase_types": pa.list_(pa.string()),
             "entity_id": pa.string(), "first_word_index": pa.int32(),
             "gt_boxes": pa.list_(pa.list_(pa.float32()))}


def test_task_rpg_cli(stage):
    stage("flickr30k")
    rc, tables = run_task("rpg", {"flickr30k": SPECS["flickr30k"]})
    assert rc == 0
    assert set(tables) == {"train", "val", "test"}
    for t in tables.values():
        assert_schema(t, RPG_TYPES)
    train = tables["train"].to_pylist()
    assert [(r["image_id"], r["sentence_index"], r["entity_id"]) for r in train] == [
        ("1000092795", 0, "1"), ("1000092795", 0, "2"), ("1000092795", 0, "3"),
        ("1000092795", 0, "8"), ("1000092795", 1, "1"), ("1000092795", 1, "5"),
        ("1003", 0, "9")]
    assert train[0]["sentence"] == ("Two young guys with shaggy hair look at their hands "
                                    "while hanging out in the yard .")
    assert train[0]["gt_boxes"] == [[10.0, 5.0, 30.0, 39.0], [32.0, 4.0, 59.0, 40.0]]
    assert (train[1]["phrase"], train[1]["first_word_index"]) == ("shaggy hair", 4)
    assert train[3]["gt_boxes"] == []  # scene: no box
    assert train[4]["phrase"] == "Two young , White males"
    val = tables["val"].to_pylist()
    assert val[0]["phrase_types"] == ["clothing", "other"]
    assert (val[2]["entity_id"], val[2]["phrase_types"], val[2]["gt_boxes"]) == (
        "0", ["notvisual"], [])
    test = tables["test"].to_pylist()
    assert (test[0]["phrase"], test[0]["first_word_index"], test[1]["sentence_index"]) == (
        "man", 1, 1)


def test_task_rpg_bad_sentence(stage, capsys):
    root = stage("flickr30k")
    shutil.copy(root / "flickr30k/bad/Sentences_unclosed.txt",
                root / "flickr30k/flickr30k_entities/Sentences/1002.txt")
    rc, _ = run_task("rpg", {"flickr30k": SPECS["flickr30k"]})
    assert_cli_error(capsys, rc, "1002.txt: line 2: phrase [/EN#2/")


TIR_TYPES = {"image_id": pa.string(), "sentence_id": pa.int64(), "caption": pa.string()}


def test_task_tir_cli(stage):
    stage("flickr30k")
    rc, tables = run_task("tir", {"flickr30k": SPECS["flickr30k"]})
    assert rc == 0
    assert set(tables) == {"train", "val", "test"}
    for t in tables.values():
        assert_schema(t, TIR_TYPES)
    assert [(r["image_id"], r["sentence_id"]) for r in tables["train"].to_pylist()] == [
        ("1000092795", 0), ("1000092795", 1), ("1004", 5)]
    assert tables["test"].to_pylist() == [
        {"image_id": "1002", "sentence_id": 3, "caption": "A man smiles."},
        {"image_id": "1002", "sentence_id": 4, "caption": "Someone is happy."}]


# ---------------------------------------------------------------- task_splits
def test_task_splits_from_specs():
    assert task_data.task_splits("pretrain", SPECS) == ["train", "val"]
    assert task_data.task_splits("vqa", SPECS) == ["train", "val"]
    assert task_data.task_splits("vcr", SPECS) == ["train", "val"]
    assert task_data.task_splits("nlvr2", SPECS) == ["train", "dev", "test1"]
    assert task_data.task_splits("rpg", SPECS) == ["train", "val", "test"]
    assert task_data.task_splits("tir", {}) == ["train", "val", "test"]
    only_val = {"coco": {"captions": {"val": SPECS["coco"]["captions"]["val"]}}}
    assert task_data.task_splits("pretrain", only_val) == ["train", "val"]
    assert set(task_data.TASK_SOURCES) == {"pretrain", "vqa", "vcr", "nlvr2", "rpg", "tir"}
    with pytest.raises(SpecError, match="unknown task"):
        task_data.task_splits("gqa", SPECS)
    with pytest.raises(SpecError, match="missing key 'vcr'"):
        task_data.task_splits("vcr", {})


def test_task_splits_of_repo_config():
    yaml = pytest.importorskip("yaml")
    from cavl.config import resolve_config

    cfg = Path(__file__).resolve().parents[1] / "config.yaml"
    datasets = resolve_config(yaml.safe_load(cfg.read_text()))["datasets"]
    assert task_data.task_splits("pretrain", datasets) == ["train", "val"]
    assert task_data.task_splits("vqa", datasets) == list(datasets["vqa"]["splits"])
    assert task_data.task_splits("nlvr2", datasets) == list(datasets["nlvr2"]["splits"])


def test_task_files_match_task_splits(stage):
    stage("nlvr2")
    rc, tables = run_task("nlvr2", {"nlvr2": SPECS["nlvr2"]})
    assert rc == 0
    assert sorted(tables) == sorted(task_data.task_splits("nlvr2", {"nlvr2": SPECS["nlvr2"]}))


def test_task_single_split_mode(stage, capsys):
    """The Snakemake rule's form: --split NAME --out PATH writes only that split."""
    stage("coco")  # no VG staged: the val split of pretrain does not read it
    spec = json.dumps({"coco": SPECS["coco"], "vg": SPECS["vg"]}, sort_keys=True)
    rc = task_data.main(["--task", "pretrain", "--split", "val", "--spec", spec,
                         "--out", "out/val.parquet"])
    assert rc == 0
    assert sorted(os.listdir("out")) == ["val.parquet"]
    t = pq.read_table("out/val.parquet")
    assert_schema(t, PRETRAIN_TYPES)
    assert t.column("example_id").to_pylist() == ["coco-301", "coco-302"]
    rc = task_data.main(["--task", "pretrain", "--split", "test", "--spec", spec,
                         "--out", "out/test.parquet"])
    assert_cli_error(capsys, rc, "task pretrain has no split 'test'")


def test_task_single_split_tir(stage):
    stage("flickr30k")
    rc = task_data.main(["--task", "tir", "--split", "val", "--spec",
                         json.dumps({"flickr30k": SPECS["flickr30k"]}), "--out", "v.parquet"])
    assert rc == 0
    assert pq.read_table("v.parquet").to_pylist() == [
        {"image_id": "1001", "sentence_id": 2, "caption": "A man in a red hat."}]
