"""extract/vocab.py: the detector's object / attribute vocabularies (published BUTD files or
built from Visual Genome's attributes.json), the string cleaning and the counting of strings
outside the vocabularies."""

import json
import random
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from cavl.formats.errors import FormatError
from cavl.formats.vocab import clean_attributes, clean_object_name
from cavl.io import file_sha256
from extract import vocab as V

ROOT = Path(__file__).resolve().parents[1]
OBJECTS_TXT, ATTRIBUTES_TXT = V.published_vocab_paths()


@pytest.fixture(scope="module")
def published():
    return V.read_vocab(OBJECTS_TXT), V.read_vocab(ATTRIBUTES_TXT)


def _attributes_json(path, images):
    """Write an official-layout attributes.json; `images`: [[(names, attributes or None)]]
    (None: the object has no "attributes" key)."""
    data, object_id = [], 100
    for image_id, objs in enumerate(images, start=1):
        records = []
        for names, attrs in objs:
            object_id += 1
            rec = {"synsets": [], "h": 10, "object_id": object_id, "names": names, "w": 12, "y": 1, "x": 2}
            if attrs is not None:
                rec["attributes"] = attrs
            records.append(rec)
        data.append({"image_id": image_id, "attributes": records})
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- the shipped files
def test_published_files_are_shipped_with_licence_and_packaged():
    folder = OBJECTS_TXT.parent
    assert folder == ROOT / "extract" / "vocabularies" / "butd_vg"
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "README.md", "attributes_vocab.txt",
                                                         "objects_vocab.txt"]
    assert "MIT License" in (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "peteanderson80/bottom-up-attention" in readme and "extract/vocabularies/butd_vg" in readme
    # installed with the package: pyproject's package-data patterns match all four files
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    matched = {p.name for pattern in data["extract"] for p in (ROOT / "extract").glob(pattern)}
    assert matched == {"LICENSE", "README.md", "attributes_vocab.txt", "objects_vocab.txt"}


def test_published_vocabularies(published):
    objects, attributes = published
    assert (len(objects), len(attributes)) == (1600, 400)
    # line i (0-based) is id i: the first lines of the files
    assert objects.names[:3] == ["yolk", "goal", "bathroom"] and attributes.name(4) == "red"
    assert attributes.id("gray") == attributes.id("grey") == attributes.id("Grey.") == 0
    assert attributes[0] == ("gray", "grey")
    assert len({objects.id(s) for s in ("tshirt", "t-shirt", "t shirt")}) == 1
    assert objects.id("t shirt") is not None and objects.id("square") is None
    assert "black and white" in attributes and "zorgy" not in attributes
    assert attributes.id("black and white") != attributes.id("black")


# ---------------------------------------------------------------- cleaning and mapping
@pytest.mark.parametrize("raw, expected", [
    ("White Shirt.", ("shirt", ["white"])),
    ("small red star", ("star", ["small", "red"])),
    ("tennis racket", ("tennis racket", [])),   # "tennis" is no common adjective
    ("purple circle", ("purple circle", [])),   # neither is "purple"
    ("  Clock. ", ("clock", [])),
    ("red", ("red", [])),
])
def test_clean_object_name(raw, expected):
    assert clean_object_name(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Black and White", ["black and white"]),
    ("black and white.", ["black and white"]),
    ("Red and Blue.", ["red", "blue"]),
    ("red and white and blue", ["red", "white", "blue"]),
    (" Tall. ", ["tall"]),
    ("", []),
    (".", []),
])
def test_clean_attributes(raw, expected):
    assert clean_attributes(raw) == expected


def test_map_object_on_the_published_files(published):
    objects, attributes = published
    counts = V.VocabCounts()
    obj, attrs = V.map_object(["White Shirt."], ["Black and White", "red and blue", "Zorgy.", "WHITE"],
                              objects, attributes, counts)
    assert obj == objects.id("shirt")
    # the name's adjective first, then the annotated ones; "white" once
    assert attrs == [attributes.id(a) for a in ("white", "black and white", "red", "blue")]
    assert counts.attribute_unknown == Counter({"zorgy": 1})
    assert counts.attribute_seen["white"] == 1 and counts.attribute_seen["black and white"] == 1

    # the first name in the vocabulary gives the class; the unknown one is still counted
    obj, attrs = V.map_object(["blorp", "man"], ["gray", "Grey"], objects, attributes, counts)
    assert obj == objects.id("man") and attrs == [attributes.id("gray")]
    assert counts.object_unknown == Counter({"blorp": 1})

    assert V.map_object(["square"], [], objects, attributes, counts) == (None, [])
    assert V.map_object([], ["tall"], objects, attributes, counts) == (None, [attributes.id("tall")])
    report = counts.report()
    assert report["objects"] == {
        "records": 4, "records_mapped": 2, "records_unmapped": 2, "records_without_name": 1,
        "strings": 4, "mapped": 2, "outside": 2, "distinct": 4, "distinct_outside": 2,
        "top_outside": [["blorp", 1], ["square", 1]]}
    assert report["attributes"]["outside"] == 1 and report["attributes"]["top_outside"] == [["zorgy", 1]]
    assert report["attributes"]["strings"] == 5 + 2 + 1  # per object, without repeats


# ---------------------------------------------------------------- Vocabulary, files
def test_vocab_round_trip_and_sha256(tmp_path, published):
    objects, _ = published
    path = tmp_path / "sub" / "objects.txt"
    sha = V.write_vocab(objects, path)
    assert sha == file_sha256(path) == objects.sha256
    assert V.read_vocab(path) == objects
    # the published file has no final line end: same classes, same canonical hash
    assert path.read_bytes() == OBJECTS_TXT.read_bytes() + b"\n"
    assert not list(path.parent.glob(".*.tmp"))
    other = V.Vocabulary([("a", "b"), "c"])
    assert other.text() == "a,b\nc\n" and other != objects and other.id("b") == 0 and other.id("d") is None


@pytest.mark.parametrize("text, fragment", [
    ("cat\n\ndog\n", "line 2: blank line"),
    ("cat\ndog,puppy\nbig,puppy\n", "line 3: 'puppy' is already on line 2"),
    ("cat,,kitten\n", "line 1: bad name ''"),
    ("", "no classes"),
])
def test_read_vocab_errors_name_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "v.txt"
    path.write_text(text)
    with pytest.raises(FormatError) as exc:
        V.read_vocab(path)
    assert str(exc.value).startswith(str(path)) and fragment in str(exc.value)
    with pytest.raises(FormatError, match="file not found"):
        V.read_vocab(tmp_path / "none.txt")


def test_vocabulary_rejects_shared_aliases():
    with pytest.raises(ValueError, match="'x' is already class 0"):
        V.Vocabulary([("x",), ("y", "x")])
    with pytest.raises(ValueError, match="bad name"):
        V.Vocabulary([("a,b",)])


def test_build_vocab_top_n_ties_by_string():
    counts = Counter({"c": 5, "b": 3, "a": 3, "d": 1, "e,f": 9, "": 7})
    assert V.build_vocab(counts, 3).names == ["c", "a", "b"]
    assert V.build_vocab(counts, 2).names == ["c", "a"]
    assert V.build_vocab(counts, 10).names == ["c", "a", "b", "d"]  # fewer strings than asked


# ---------------------------------------------------------------- the step
def test_top_n_from_attributes_json(tmp_path):
    path = _attributes_json(tmp_path / "attributes.json", [
        [(["Dog"], ["brown", "Small."]), (["cat"], ["white", "fluffy"]), (["white cat"], None)],
        [(["dog."], ["brown and white"]), (["bird"], []), (["tree"], ["tall", "green"])],
        [(["cat"], ["black and white"]), (["car"], ["red"]), (["tree"], ["green"])],
    ])
    report = V.make_vocabularies(tmp_path / "out", vg_attributes=path, num_objects=3, num_attributes=4)
    objects = V.read_vocab(tmp_path / "out" / "objects_vocab.txt")
    attributes = V.read_vocab(tmp_path / "out" / "attributes_vocab.txt")
    # cat 3 ("white cat" → cat), dog 2, tree 2 (tie: by string), then bird 1 and car 1 are left out
    assert objects.names == ["cat", "dog", "tree"]
    # white 3 (one split off "white cat"), brown 2, green 2, then "black and white" before the rest
    assert attributes.names == ["white", "brown", "green", "black and white"]
    counts = report["counts"]
    assert counts["objects"]["outside"] == 2 and counts["objects"]["top_outside"] == [["bird", 1], ["car", 1]]
    assert counts["attributes"]["top_outside"] == [["fluffy", 1], ["red", 1], ["small", 1], ["tall", 1]]
    assert counts["attributes"]["strings"] == 12 and counts["attributes"]["mapped"] == 8
    assert report["vocabularies"]["objects"] == {
        "source": "built", "requested": 3, "file": "objects_vocab.txt", "classes": 3,
        "sha256": file_sha256(tmp_path / "out" / "objects_vocab.txt")}
    assert report["inputs"]["images"] == 3
    # deterministic: the same input gives the same files
    V.make_vocabularies(tmp_path / "again", vg_attributes=path, num_objects=3, num_attributes=4)
    for name in ("objects_vocab.txt", "attributes_vocab.txt", "vocab_report.json"):
        again = (tmp_path / "again" / name).read_text().replace(str(tmp_path / "again"), str(tmp_path / "out"))
        assert (tmp_path / "out" / name).read_text() == again


def test_objects_json_adds_the_objects_attributes_json_lacks(tmp_path):
    attrs = _attributes_json(tmp_path / "attributes.json", [[(["dog"], ["brown"])]])
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"image_id": 1, "objects": [
        {"object_id": 101, "x": 2, "y": 1, "w": 12, "h": 10, "names": ["dog"]},      # in attributes.json
        {"object_id": 102, "x": 0, "y": 0, "w": 5, "h": 5, "names": ["Frisbee."]}]},  # only here
        {"image_id": 2, "objects": [{"object_id": 103, "x": 0, "y": 0, "w": 1, "h": 1, "names": ["dog"]}]}]))
    records, seen = V.vg_records(attrs, objects)
    assert [r["names"] for r in records] == [["dog"], ["Frisbee."], ["dog"]]
    assert seen == {"images": 2, "objects_json_only": 2}
    report = V.make_vocabularies(tmp_path / "out", vg_attributes=attrs, vg_objects=objects)
    assert report["counts"]["objects"]["records"] == 3
    assert V.read_vocab(tmp_path / "out" / "objects_vocab.txt").names == ["dog", "frisbee"]


def test_cli_with_the_published_files(tmp_path, capsys, published):
    path = _attributes_json(tmp_path / "attributes.json", [
        [(["White Shirt."], ["Grey", "black and white"]), (["squarish blob"], ["zorgy"])],
        [(["man"], ["gray", "zorgy", "red and blue"]), (["shirt"], None)],
    ])
    out = tmp_path / "resources" / "detector"
    rc = V.main(["--vg-attributes", str(path), "--objects-vocab", str(OBJECTS_TXT),
                 "--attributes-vocab", str(ATTRIBUTES_TXT), "--out-dir", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["attributes_vocab.txt", "objects_vocab.txt", "vocab_report.json"]
    assert (V.read_vocab(out / "objects_vocab.txt"), V.read_vocab(out / "attributes_vocab.txt")) == published
    report = json.loads((out / "vocab_report.json").read_text())
    for kind in ("objects", "attributes"):
        entry = report["vocabularies"][kind]
        assert entry["sha256"] == file_sha256(out / entry["file"]) == published[kind == "attributes"].sha256
        assert entry["source"] == "file" and entry["classes"] == len(published[kind == "attributes"])
    assert report["counted"] is True
    assert report["counts"]["objects"]["top_outside"] == [["squarish blob", 1]]
    assert report["counts"]["attributes"]["top_outside"] == [["zorgy", 2]]
    # gray / grey: one class, counted as mapped; "white" split off the name
    assert report["counts"]["attributes"]["mapped"] == 3 + 3 and report["counts"]["attributes"]["outside"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'zorgy' ×2" in err[0] and "2 outside" in err[0]


def test_cli_published_files_without_vg(tmp_path, capsys, published):
    out = tmp_path / "out"
    rc = V.main(["--objects-vocab", str(OBJECTS_TXT), "--attributes-vocab", str(ATTRIBUTES_TXT),
                 "--num-objects", "1600", "--out-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "vocab_report.json").read_text())
    assert report["counted"] is False and report["counts"] is None
    assert V.read_vocab(out / "attributes_vocab.txt") == published[1]
    assert "nothing counted" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["--objects-vocab", str(OBJECTS_TXT)], "building the attributes vocabulary needs --vg-attributes"),
    ([], "building the objects vocabulary needs"),
    (["--objects-vocab", str(OBJECTS_TXT), "--attributes-vocab", str(ATTRIBUTES_TXT), "--num-attributes", "300"],
     "--num-attributes 300, but"),
    (["--vg-attributes", "missing.json"], "missing.json: file not found"),
])
def test_cli_errors(tmp_path, capsys, args, fragment):
    assert V.main(args + ["--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_demo_attributes_build_a_shape_vocabulary(tmp_path):
    """The demo's attributes.json, cleaned: the shapes are the most frequent objects and the
    colour / size words the most frequent attributes."""
    from cavl.demo import vg as demo_vg
    from cavl.demo.scenes import COLORS, SHAPES, sample_scene

    rng = random.Random(0)
    scenes = [(image_id, sample_scene(rng, 128)) for image_id in range(1, 41)]
    path = tmp_path / "attributes.json"
    path.write_text(json.dumps(demo_vg.attributes(scenes)))
    report = V.make_vocabularies(tmp_path / "out", vg_attributes=path, num_objects=4, num_attributes=10)
    assert set(V.read_vocab(tmp_path / "out" / "objects_vocab.txt").names) == set(SHAPES)
    attributes = set(V.read_vocab(tmp_path / "out" / "attributes_vocab.txt").names)
    assert attributes <= set(COLORS) | {"small", "large", "big", "little", "dark"}
    assert {"small", "large", "big", "little"} <= attributes
    # names holding an attribute ("red circle", "Large star.") clean to the shape: none is outside
    names = [n for entry in json.loads(path.read_text()) for o in entry["attributes"] for n in o["names"]]
    assert any(" " in n for n in names)
    assert report["counts"]["objects"]["outside"] == 0


def test_release_sample_with_the_published_files(tmp_path, capsys):
    """The paper config's inputs (tests/release_samples.py): VG's released attributes.json and
    objects.json, the shipped vocabularies; every object there has a class."""
    from release_samples import write_release_samples

    write_release_samples(tmp_path, ["vg"])
    vg = tmp_path / "data" / "vg"
    assert V.main(["--vg-attributes", str(vg / "attributes.json"), "--vg-objects", str(vg / "objects.json"),
                   "--objects-vocab", str(OBJECTS_TXT), "--attributes-vocab", str(ATTRIBUTES_TXT),
                   "--out-dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "vocab_report.json").read_text())
    released = json.loads((vg / "objects.json").read_text())
    n_objects = sum(len(e["objects"]) for e in released)
    assert report["inputs"]["images"] == len(released) and report["inputs"]["objects_json_only"] == 0
    assert report["counts"]["objects"]["records"] == report["counts"]["objects"]["records_mapped"] == n_objects
    assert 0 < report["counts"]["attributes"]["records_with_attributes"] < n_objects
    assert "0 outside" in capsys.readouterr().err
