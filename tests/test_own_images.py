"""Own images (config `datasets.images.NAME`): the folder reader (cavl/formats/images.py), its
manifest CLI (`python -m cavl.manifest --kind images`), the config checks of the names, and one
real Snakemake run: features for a folder, the broken file in the failures table, a rerun that
does nothing and a new file that is picked up."""

import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cavl import manifest
from cavl.config import ConfigError, resolve_config
from cavl.data.regions import RegionReader
from cavl.formats import images
from cavl.formats.errors import FormatError, MissingImageError, SpecError
from workflow_run import ROOT, snakemake

# The folder every test starts from: relative path → oriented (width, height); None = broken.
GOOD = {"a.jpg": (40, 30), "sub/b.png": (20, 50), "rotated.jpg": (24, 64)}
BROKEN = "broken.jpg"


def _write_folder(root):
    """JPEGs and PNGs of different sizes (one in a subfolder, one stored 64×24 with EXIF
    orientation 6, so it is 24×64 upright), a .jpg of garbage bytes, and files the default listing
    passes over (a text file, a hidden image)."""
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 40, 40)).save(root / "a.jpg")
    Image.new("RGB", (20, 50), (40, 200, 40)).save(root / "sub" / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (64, 24), (40, 40, 200)).save(root / "rotated.jpg", exif=exif.tobytes())
    (root / BROKEN).write_bytes(b"\xff\xd8 this is not a JPEG " * 8)
    (root / "notes.txt").write_text("not an image\n")
    Image.new("RGB", (8, 8)).save(root / ".hidden.jpg")
    return root


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """tmp_path as working directory, holding photos/ (the folder above)."""
    monkeypatch.chdir(tmp_path)
    _write_folder(tmp_path / "photos")
    return tmp_path


def rows_by_id(rows):
    return {r["image_id"]: r for r in rows}


def build(spec, name="mine", *extra):
    """`python -m cavl.manifest --kind images`; → (exit status, manifest rows or None)."""
    rc = manifest.main(["--kind", "images", "--dataset", name, "--spec", json.dumps(spec),
                        "--out", "out/m.parquet", *extra])
    return rc, (pq.read_table("out/m.parquet").to_pylist() if rc == 0 else None)


# ---------------------------------------------------------------- the folder reader
def test_default_listing_ids_sizes_and_the_broken_file(folder):
    rows = images.manifest_rows("mine", {"root": "photos"})
    assert [r["image_id"] for r in rows] == sorted([*GOOD, BROKEN])  # no notes.txt, no .hidden.jpg
    by_id = rows_by_id(rows)
    for image_id, (width, height) in GOOD.items():
        assert (by_id[image_id]["width"], by_id[image_id]["height"]) == (width, height), image_id
        assert by_id[image_id]["path"] == os.path.join("photos", image_id)
        assert by_id[image_id]["gt_boxes"] == [] and by_id[image_id]["gt_box_labels"] == []
    # The broken file is listed, size 0: the extraction records it as a failure.
    assert (by_id[BROKEN]["width"], by_id[BROKEN]["height"]) == (0, 0)


def test_oriented_size_matches_what_the_extraction_reports(folder):
    from extract.images import Resize, load_image

    _, (height, width) = load_image("photos/rotated.jpg", Resize(32, 64))
    assert images.oriented_size("photos/rotated.jpg") == ((width, height), None) == ((24, 64), None)


def test_default_listing_takes_image_extensions_in_any_case(folder):
    Image.new("RGB", (10, 12)).save(folder / "photos" / "UPPER.JPG", format="JPEG")
    ids = [r["image_id"] for r in images.manifest_rows("mine", {"root": "photos"})]
    assert "UPPER.JPG" in ids and "notes.txt" not in ids


def test_glob_variants(folder):
    pngs = images.manifest_rows("mine", {"root": "photos", "glob": "**/*.png"})
    assert [r["image_id"] for r in pngs] == ["sub/b.png"]
    top = images.manifest_rows("mine", {"root": "photos", "glob": "*.jpg"})
    assert [r["image_id"] for r in top] == ["a.jpg", BROKEN, "rotated.jpg"]
    everything = images.manifest_rows("mine", {"root": "photos/", "glob": "**/*"})  # folders left out
    assert [r["image_id"] for r in everything] == sorted([*GOOD, BROKEN, "notes.txt"])
    assert rows_by_id(everything)["sub/b.png"]["path"] == "photos/sub/b.png"


def test_list_file_variant(folder):
    (folder / "files.txt").write_text("# my picks\nsub/b.png\n\n  a.jpg  \n./rotated.jpg\n")
    rows = images.manifest_rows("mine", {"root": "photos", "list": "files.txt"})
    assert [r["image_id"] for r in rows] == ["a.jpg", "rotated.jpg", "sub/b.png"]
    assert (rows_by_id(rows)["rotated.jpg"]["width"], rows_by_id(rows)["rotated.jpg"]["height"]) == (24, 64)


def test_list_file_missing_entry_errors_by_default_and_skip_records_it(folder, capsys):
    (folder / "files.txt").write_text("a.jpg\ngone.jpg\n")
    spec = {"root": "photos", "list": "files.txt"}
    with pytest.raises(MissingImageError, match=r"files\.txt: line 2: image file missing: photos/gone\.jpg"):
        images.manifest_rows("mine", spec)
    rc, _ = build(spec)
    assert rc == 1
    assert "datasets.images.mine.missing_images: skip" in capsys.readouterr().err

    rc, rows = build({**spec, "missing_images": "skip"})
    assert rc == 0 and [r["image_id"] for r in rows] == ["a.jpg"]
    missing = pq.read_table("out/m.missing.parquet").to_pylist()
    assert [(m["image_id"], m["path"], m["source"], m["record"]) for m in missing] == [
        ("gone.jpg", "photos/gone.jpg", "files.txt", "line 2")]


@pytest.mark.parametrize("entry", ["../outside.jpg", "/etc/hosts", "sub/../../x.jpg"])
def test_list_entry_outside_root_is_rejected(folder, entry):
    (folder / "files.txt").write_text(f"a.jpg\n{entry}\n")
    with pytest.raises(FormatError, match=r"files\.txt: line 2: .*relative to root"):
        images.manifest_rows("mine", {"root": "photos", "list": "files.txt"})


def test_list_entry_twice_is_rejected(folder):
    (folder / "files.txt").write_text("a.jpg\nsub/b.png\n./a.jpg\n")
    with pytest.raises(FormatError, match=r"line 3: .*listed twice \(first on line 1\)"):
        images.manifest_rows("mine", {"root": "photos", "list": "files.txt"})


def test_zero_matches_is_an_error_naming_the_key(folder, capsys):
    rc, _ = build({"root": "photos", "glob": "**/*.tiff"}, "my_photos")
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "datasets.images.my_photos.glob: no file under photos matches '**/*.tiff'" in err
    assert not os.path.exists("out/m.parquet")

    (folder / "empty").mkdir()
    with pytest.raises(SpecError, match=r"datasets\.images\.mine\.glob: no file with an image extension"):
        images.manifest_rows("mine", {"root": "empty"})
    (folder / "files.txt").write_text("# nothing yet\n\n")
    with pytest.raises(SpecError, match=r"datasets\.images\.mine\.list: files\.txt lists no files"):
        images.manifest_rows("mine", {"root": "photos", "list": "files.txt"})
    with pytest.raises(SpecError, match=r"datasets\.images\.mine\.root: image folder not found: nowhere"):
        images.manifest_rows("mine", {"root": "nowhere"})


def test_bad_specs_name_the_key(folder):
    with pytest.raises(SpecError, match=r"datasets\.images\.mine: give glob or list, not both"):
        images.manifest_rows("mine", {"root": "photos", "glob": "*.jpg", "list": "files.txt"})
    with pytest.raises(SpecError, match=r"datasets\.images\.mine\.glob: must be relative to root"):
        images.manifest_rows("mine", {"root": "photos", "glob": "../*.jpg"})
    with pytest.raises(SpecError, match=r"datasets\.images\.mine: missing key 'root'"):
        images.manifest_rows("mine", {"glob": "*.jpg"})


def test_cli_writes_manifest_and_empty_missing_table(folder, capsys):
    rc, rows = build({"root": "photos"})
    assert rc == 0
    assert [r["image_id"] for r in rows] == sorted([*GOOD, BROKEN])
    assert pq.read_schema("out/m.parquet").remove_metadata() == manifest.MANIFEST_SCHEMA
    assert pq.read_table("out/m.missing.parquet").num_rows == 0
    err = capsys.readouterr().err
    assert f"photos/{BROKEN}: cannot read the image header" in err
    assert "mine: 4 images → out/m.parquet" in err


def test_cli_rejects_an_unknown_official_dataset_and_a_bad_own_name(folder, capsys):
    with pytest.raises(SystemExit):
        manifest.main(["--dataset", "mine", "--spec", "{}", "--out", "out/m.parquet"])
    assert "--kind images" in capsys.readouterr().err
    rc, _ = build({"root": "photos"}, "coco")
    err = capsys.readouterr().err
    assert rc == 1 and "datasets.images.coco: 'coco' is the name of an official dataset" in err


def test_listing_digest_changes_with_the_files(folder):
    spec = {"root": "photos"}
    first = images.listing_digest("mine", spec)
    assert images.listing_digest("mine", spec) == first
    assert first.startswith("4:")
    Image.new("RGB", (10, 10)).save(folder / "photos" / "sub" / "new.png")
    added = images.listing_digest("mine", spec)
    assert added != first and added.startswith("5:")
    (folder / "photos" / "a.jpg").write_bytes((folder / "photos" / "rotated.jpg").read_bytes())  # replaced
    assert images.listing_digest("mine", spec) not in (first, added)
    assert images.listing_digest("mine", {"root": "nowhere"}).startswith("error:")  # never raises


# ---------------------------------------------------------------- config checks
# The attribute head with the published vocabularies, as configs/paper.yaml has it (the README's
# command): no VG data needed.
PUBLISHED_VOCAB = {"attributes": True, "vocab": {
    kind: os.path.join(ROOT, "extract", "vocabularies", "butd_vg", f"{kind}_vocab.txt")
    for kind in ("objects", "attributes")}}


def base_config(**datasets):
    with open(os.path.join(ROOT, "config.yaml")) as f:
        config = yaml.safe_load(f)
    config["demo"]["enabled"] = False
    config["datasets"] = datasets
    config["extract"]["detector"].update(PUBLISHED_VOCAB)
    return config


def test_config_accepts_own_images_and_drops_null_entries():
    config = base_config(images={"my_photos": {"root": "data/my_photos", "glob": "**/*.jpg"},
                                 "other-2": {"root": "data/other", "list": "data/other/files.txt"},
                                 "off": None})
    resolved = resolve_config(config)
    assert resolved["datasets"]["images"] == {"my_photos": {"root": "data/my_photos", "glob": "**/*.jpg"},
                                              "other-2": {"root": "data/other", "list": "data/other/files.txt"}}
    assert resolved["pretrain"]["data"]["sources"] == []  # own images are no caption source


@pytest.mark.parametrize("name, reason", [
    ("coco", "is the name of an official dataset"),
    ("VQA", "is the name of an official dataset"),
    ("my photos", "is not a usable name"),
    ("my.photos", "is not a usable name"),
    ("x/y", "is not a usable name"),
    ("-x", "is not a usable name"),
    ("mine|coco", "is not a usable name"),
])
def test_config_rejects_a_bad_name_naming_the_key(name, reason):
    config = base_config(images={name: {"root": "data/x"}})
    with pytest.raises(ConfigError, match=rf"config key 'datasets\.images\.{re.escape(name)}': .*{reason}"):
        resolve_config(config)


def test_config_rejects_names_differing_only_in_case_and_glob_with_list():
    with pytest.raises(ConfigError, match=r"'datasets\.images\.Mine': 'Mine' differs from 'mine' only in letter case"):
        resolve_config(base_config(images={"mine": {"root": "a"}, "Mine": {"root": "b"}}))
    with pytest.raises(ConfigError, match=r"'datasets\.images\.mine': give glob or list, not both"):
        resolve_config(base_config(images={"mine": {"root": "a", "glob": "*.jpg", "list": "l.txt"}}))
    with pytest.raises(ConfigError, match=r"datasets\.images\.mine.*'root' is a required property"):
        resolve_config(base_config(images={"mine": {"glob": "*.jpg"}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'datasets\.images\.mine\.folder'"):
        resolve_config(base_config(images={"mine": {"root": "a", "folder": "b"}}))


def test_demo_rejects_own_images_outside_its_folder_naming_the_key():
    config = base_config(images={"mine": {"root": "data/my_photos", "glob": "**/*.jpg"}})
    config["demo"]["enabled"] = True
    with pytest.raises(ConfigError, match=r"'datasets\.images\.mine\.root': 'data/my_photos'") as e:
        resolve_config(config)
    assert "glob" not in str(e.value)  # a pattern, not a path
    # A dataset named like a non-path key is still checked.
    config["datasets"] = {"images": {"glob": {"root": "elsewhere", "list": "data/demo/l.txt"}}}
    with pytest.raises(ConfigError, match=r"'datasets\.images\.glob\.root': 'elsewhere'"):
        resolve_config(config)
    # Inside demo.out_dir: allowed, next to the demo's own datasets.
    config["datasets"] = {"images": {"mine": {"root": "data/demo/coco"}}}
    resolved = resolve_config(config)
    assert resolved["datasets"]["images"] == {"mine": {"root": "data/demo/coco"}}
    assert "coco" in resolved["datasets"]


# ---------------------------------------------------------------- the workflow
def planned(output, rule):
    """How many jobs of `rule` a run's job-count table lists (0 when absent)."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


def test_workflow_extracts_a_folder_skips_the_broken_file_and_resumes(tmp_path):
    work = tmp_path / "work"
    _write_folder(work / "photos")
    small = tmp_path / "mine.yaml"
    small.write_text(yaml.safe_dump({
        "demo": {"enabled": False},
        "datasets": {"images": {"mine": {"root": "photos"}}},
        "extract": {"detector": {"weights": None, "min_size": 64, "max_size": 96, "proposals": 50, **PUBLISHED_VOCAB},
                    "boxes": {"max_boxes": 5, "min_boxes": 2}, "shard_size": 3, "batch_size": 2,
                    "num_workers": 0, "threads": 1}}))
    target = "resources/features/mine/index.parquet"
    first = snakemake(work, "--cores", "1", target, configfiles=[small])
    assert first.returncode == 0, first.stderr[-4000:]

    features = work / "resources" / "features" / "mine"
    index = pq.read_table(features / "index.parquet").to_pandas()
    assert sorted(index.image_id) == sorted(GOOD)  # every good image, the broken one not
    assert sorted(set(index.shard)) == [0, 1]  # 4 manifest rows, shard_size 3
    shards = {k: pq.read_table(features / f"shard-{k:05d}.parquet").to_pandas() for k in (0, 1)}
    sizes = {row.image_id: (row.width, row.height) for s in shards.values() for row in s.itertuples()}
    assert sizes == GOOD  # rotated.jpg upright, as in the manifest
    assert all((s.num_boxes == 5).all() and (s.num_given == 0).all() for s in shards.values())
    regions = RegionReader(features / "index.parquet").regions("a.jpg")  # each box's attribute too
    assert len(regions.attributes) == 5 and ((regions.attributes >= 0) & (regions.attributes < 400)).all()
    failures = pq.read_table(features / "shard-00000.failures.parquet").to_pylist()  # rows a.jpg, broken.jpg, rotated.jpg
    assert [(f["image_id"], f["path"]) for f in failures] == [(BROKEN, f"photos/{BROKEN}")]
    assert "not an image" in failures[0]["reason"]
    assert pq.read_table(features / "shard-00001.failures.parquet").num_rows == 0
    rows = pq.read_table(work / "resources" / "manifests" / "mine.parquet").to_pylist()
    assert [r["image_id"] for r in rows] == sorted([*GOOD, BROKEN])
    assert (work / "resources" / "manifests" / "mine.missing.parquet").exists()
    assert BROKEN in (work / "logs" / "manifest" / "mine.log").read_text()

    written = {p.name: p.stat().st_mtime_ns for p in [*features.iterdir(), *(work / "resources" / "manifests").iterdir()]}
    again = snakemake(work, "--cores", "1", target, configfiles=[small])
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert written == {p.name: p.stat().st_mtime_ns
                       for p in [*features.iterdir(), *(work / "resources" / "manifests").iterdir()]}

    # A new file in the folder is picked up on the next run, without --forcerun.
    shutil.copy(work / "photos" / "a.jpg", work / "photos" / "sub" / "c.jpg")
    added = snakemake(work, "--cores", "1", target, configfiles=[small])
    assert added.returncode == 0, added.stderr[-4000:]
    output = added.stdout + added.stderr
    assert planned(output, "images_manifest") == 1 and planned(output, "gather_features") == 1, output[-3000:]
    assert "Params have changed" in output
    index = pq.read_table(features / "index.parquet").to_pandas()
    assert sorted(index.image_id) == sorted([*GOOD, "sub/c.jpg"])
