"""Tests of the embedded demo data generator (python -m cavl.demo).

The truth checks below read the generated *text* (captions, questions, sentences, phrases,
token lists) with a small parser written here, independently of cavl.demo.language, and
compare what it claims with the scene description in scenes.json.
"""

import collections
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from cavl.demo import main, nlvr2

# The palettes of the demo's variants (cavl/demo/variants.py), written out here independently.
PALETTES = {
    1: {"red": (215, 40, 40), "green": (40, 160, 65), "blue": (40, 85, 215),
        "yellow": (240, 205, 35), "purple": (135, 55, 170), "orange": (245, 135, 25)},
    2: {"pink": (240, 125, 180), "brown": (130, 80, 35), "cyan": (35, 200, 215),
        "lime": (150, 220, 40), "navy": (30, 40, 135), "magenta": (195, 30, 190)},
}
COLORS = set(PALETTES[1]) | set(PALETTES[2])
# objects per scene: (min, max) for the VCR images and for every other dataset's
OBJECTS = {1: {"vcr": (2, 4), "other": (1, 4)}, 2: {"vcr": (3, 6), "other": (2, 6)}}
BACKGROUNDS = {"white", "gray", "black"}
SHAPES = {"circle", "square", "triangle", "star"}
SIZES = {"small", "large"}
HEADS = SHAPES | {"shape", "object"}
NUMBERS = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
           "six": 6, "seven": 7, "eight": 8}
RELATION_WORDS = {("to", "the", "left", "of"): "left of", ("to", "the", "right", "of"): "right of",
                  ("above",): "above", ("below",): "below"}
COUNTS = {"coco": 20, "vg": 10, "flickr30k": 16, "nlvr2": 24, "vcr": 12}


def _args(out, seed=3, size=160, counts=COUNTS, variant=None):
    argv = ["--out", str(out), "--seed", str(seed), "--image-size", str(size)]
    for k, v in counts.items():
        argv += ["--count", f"{k}={v}"]
    if variant is not None:
        argv += ["--variant", str(variant)]
    return argv


@pytest.fixture(scope="module", params=[1, 2], ids=["variant1", "variant2"])
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def demo(tmp_path_factory, variant):
    """Every test taking `demo` runs on both variants (variant 1: the default, no flag)."""
    out = tmp_path_factory.mktemp(f"demo_v{variant}")
    assert main(_args(out, variant=None if variant == 1 else variant)) == 0
    with open(out / "scenes.json") as f:
        scenes = json.load(f)
    return out, scenes


def _json(path):
    with open(path) as f:
        return json.load(f)


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- independent checker
def relation_holds(a, b, rel):
    """rel of box a with respect to box b: the whole box strictly on that side."""
    ax1, ay1, ax2, ay2 = a["bbox"]
    bx1, by1, bx2, by2 = b["bbox"]
    return {"left of": ax2 < bx1, "right of": ax1 > bx2,
            "above": ay2 < by1, "below": ay1 > by2}[rel]


def words_of(text):
    return re.findall(r"[a-z]+", text.lower())


def mentions(text):
    """Noun phrases of `text`: [{size, color, shape, quant, n, start, end}] where quant is
    'exact' (a number word, 'exactly N', 'no'), 'atleast' ('at least N') or 'exists'."""
    words = words_of(text)
    out = []
    for k, w in enumerate(words):
        plural = w.endswith("s") and w[:-1] in HEADS
        head = w[:-1] if plural else w
        if head not in HEADS:
            continue
        j, color, size = k - 1, None, None
        if j >= 0 and words[j] in COLORS:
            color, j = words[j], j - 1
        if j >= 0 and words[j] in SIZES:
            size, j = words[j], j - 1
        quant, n = "exists", 1
        if j >= 0 and words[j] in NUMBERS:
            quant, n = "exact", NUMBERS[words[j]]
            if j >= 2 and words[j - 2:j] == ["at", "least"]:
                quant, j = "atleast", j - 2
            elif j >= 1 and words[j - 1] == "exactly":
                j -= 1
        out.append({"size": size, "color": color,
                    "shape": head if head in SHAPES else None,
                    "quant": quant, "n": n, "start": j + 1, "end": k, "plural": plural})
    return out


def fits(obj, m):
    return all(m[a] is None or obj[a] == m[a] for a in ("size", "color", "shape"))


def count_ok(objects, m):
    c = sum(fits(o, m) for o in objects)
    return {"exact": c == m["n"], "atleast": c >= m["n"], "exists": c >= 1}[m["quant"]]


def relations_in(words):
    out = []
    for k in range(len(words)):
        for seq, rel in RELATION_WORDS.items():
            if tuple(words[k:k + len(seq)]) == seq:
                out.append((k, k + len(seq), rel))
    return out


def statement_true(text, scene, objects=None):
    """A caption / region phrase / statement: every noun phrase's count claim, every
    '<colour> background' and every 'A <relation> B' must hold."""
    objects = scene["objects"] if objects is None else objects
    ms = mentions(text)
    if not all(count_ok(objects, m) for m in ms):
        return False
    for bg in re.findall(r"(\w+) background", text.lower()):
        if bg != scene["background"]:
            return False
    words = words_of(text)
    for start, end, rel in relations_in(words):
        before = [m for m in ms if m["end"] < start]
        after = [m for m in ms if m["start"] >= end]
        if not before or not after:
            return False
        a, b = before[-1], after[0]
        if not any(relation_holds(x, y, rel) for x in objects if fits(x, a)
                   for y in objects if y is not x and fits(y, b)):
            return False
    return True


def the(objects, phrase):
    """The single object a definite description names (assert it is unique)."""
    (m,) = mentions(phrase)
    found = [o for o in objects if fits(o, m)]
    assert len(found) == 1, (phrase, found)
    return found[0]


def vqa_answer(question, scene):
    """The true answer of a VQA question of either variant's templates."""
    objs = scene["objects"]
    if question in ("What color is the background?", "What is the color of the background?"):
        return scene["background"]
    # variant 2's forms
    m = re.fullmatch(r"Are there any (.+)\?", question)
    if m:
        return "yes" if count_ok(objs, mentions(m.group(1))[0]) else "no"
    m = re.fullmatch(r"Are there more (.+) than (.+)\?", question)
    if m:
        (a,), (b,) = mentions(m.group(1)), mentions(m.group(2))
        return "yes" if sum(fits(o, a) for o in objs) > sum(fits(o, b) for o in objs) else "no"
    m = re.fullmatch(r"Is the (.+) higher than the (.+)\?", question)
    if m:
        a, b = the(objs, m.group(1)), the(objs, m.group(2))
        assert relation_holds(a, b, "above") or relation_holds(a, b, "below"), question
        return "yes" if relation_holds(a, b, "above") else "no"
    m = re.fullmatch(r"How many (.+) are in the image\?", question)
    if m:
        return str(sum(fits(o, mentions(m.group(1))[0]) for o in objs))
    m = re.fullmatch(r"How many shapes are not (\w+)\?", question)
    if m:
        assert m.group(1) in COLORS, question
        return str(sum(o["color"] != m.group(1) for o in objs))
    m = re.fullmatch(r"How many (\w+)s are (?!there\?)(\w+)\?", question)
    if m:
        assert m.group(1) in SHAPES and m.group(2) in COLORS, question
        return str(sum(o["shape"] == m.group(1) and o["color"] == m.group(2) for o in objs))
    m = re.fullmatch(r"What color is the (largest|smallest) shape\?", question)
    if m:  # by box area, which must single out one object
        area = sorted(((o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]), k)
                      for k, o in enumerate(objs))
        if m.group(1) == "largest":
            area.reverse()
        assert len(area) >= 2 and area[0][0] != area[1][0], (question, objs)
        return objs[area[0][1]]["color"]
    m = re.fullmatch(r"What is the color of the (.+)\?", question)
    if m:
        return the(objs, m.group(1))["color"]
    m = re.fullmatch(r"Which shape is (\w+)\?", question)
    if m:
        return the(objs, m.group(1) + " shape")["shape"]
    m = re.fullmatch(r"Which side of the (.+) is the (.+) on\?", question)
    if m:
        b, a = the(objs, m.group(1)), the(objs, m.group(2))
        (side,) = [s for s in ("left", "right") if relation_holds(a, b, f"{s} of")]
        return side
    # variant 1's forms
    m = re.fullmatch(r"Is there an? (.+)\?", question)
    if m:
        return "yes" if count_ok(objs, mentions(m.group(1))[0]) else "no"
    m = re.fullmatch(r"Is the (.+) (to the left of|to the right of|above|below) the (.+)\?",
                     question)
    if m:
        rel = RELATION_WORDS[tuple(m.group(2).split())]
        return "yes" if relation_holds(the(objs, m.group(1)), the(objs, m.group(3)), rel) \
            else "no"
    m = re.fullmatch(r"How many (.+) are there\?", question)
    if m:
        return str(sum(fits(o, mentions(m.group(1))[0]) for o in objs))
    m = re.fullmatch(r"What color is the (.+)\?", question)
    if m:
        return the(objs, m.group(1))["color"]
    m = re.fullmatch(r"What shape is the (.+)\?", question)
    if m:
        return the(objs, m.group(1))["shape"]
    raise AssertionError(f"unknown question form: {question!r}")


def nlvr2_truth(sentence, left, right):
    s = sentence.rstrip(".")
    m = re.fullmatch(r"(The left image contains|The right image contains|Both images contain|"
                     r"Exactly one image contains|At least one image contains) (.+)", s)
    if m:
        (q,) = mentions(m.group(2))
        lt, rt = count_ok(left["objects"], q), count_ok(right["objects"], q)
        return {"The left image contains": lt, "The right image contains": rt,
                "Both images contain": lt and rt, "Exactly one image contains": lt != rt,
                "At least one image contains": lt or rt}[m.group(1)]
    m = re.fullmatch(r"There (?:is|are) exactly (\w+) (.+) in total", s)
    if m:
        (q,) = mentions(m.group(2))
        total = sum(fits(o, q) for o in left["objects"] + right["objects"])
        return total == NUMBERS[m.group(1)]
    m = re.fullmatch(r"The (left|right) image shows (.+)", s)
    if m:
        scene = left if m.group(1) == "left" else right
        assert relations_in(words_of(m.group(2))), sentence
        return statement_true(m.group(2), scene)
    raise AssertionError(f"unknown sentence form: {sentence!r}")


def vcr_claim(tokens, objects):
    """Truth of a VCR answer/rationale token list about the referenced objects."""
    assert tokens[-1] == "." and isinstance(tokens[0], list) and tokens[1] == "is", tokens
    (i,), rest = tokens[0], tokens[2:-1]
    if isinstance(rest[-1], list):  # "[i] is to the left of [j]"
        (j,) = rest[-1]
        return relation_holds(objects[i], objects[j], RELATION_WORDS[tuple(rest[:-1])])
    (m,) = mentions(" ".join(rest) if rest[0] in ("a", "an") or rest[-1] in HEADS
                    else " ".join(rest) + " shape")
    return fits(objects[i], m)


# ---------------------------------------------------------------- the checker itself
SCENE = {"width": 100, "height": 100, "background": "white", "objects": [
    {"shape": "circle", "color": "red", "size": "small", "bbox": [5, 5, 20, 20]},
    {"shape": "square", "color": "blue", "size": "large", "bbox": [50, 40, 90, 80]}]}


@pytest.mark.parametrize("text, truth", [
    ("A small red circle is to the left of a large blue square.", True),
    ("A red circle is above a blue square.", True),
    ("A red circle is below a blue square.", False),
    ("A blue square is to the left of a red circle.", False),
    ("A large red circle on a white background.", False),
    ("Two shapes on a white background.", True),
    ("Three shapes on a white background.", False),
    ("Two shapes on a black background.", False),
    ("A green circle.", False),
])
def test_checker_can_say_false(text, truth):
    assert statement_true(text, SCENE) is truth


def test_checker_vqa_and_nlvr2_and_vcr_forms():
    assert vqa_answer("How many blue shapes are there?", SCENE) == "1"
    assert vqa_answer("Is the circle to the right of the square?", SCENE) == "no"
    assert vqa_answer("What is the color of the background?", SCENE) == "white"
    assert vqa_answer("Are there any red circles?", SCENE) == "yes"
    assert vqa_answer("Are there any blue circles?", SCENE) == "no"
    assert vqa_answer("Are there more circles than squares?", SCENE) == "no"
    assert vqa_answer("Are there more red shapes than green shapes?", SCENE) == "yes"
    assert vqa_answer("Is the circle higher than the square?", SCENE) == "yes"
    assert vqa_answer("Is the blue shape higher than the red circle?", SCENE) == "no"
    assert vqa_answer("How many objects are in the image?", SCENE) == "2"
    assert vqa_answer("How many shapes are not red?", SCENE) == "1"
    assert vqa_answer("How many squares are red?", SCENE) == "0"
    assert vqa_answer("How many large shapes are there?", SCENE) == "1"
    assert vqa_answer("What color is the largest shape?", SCENE) == "blue"
    assert vqa_answer("What color is the smallest shape?", SCENE) == "red"
    assert vqa_answer("What is the color of the small circle?", SCENE) == "red"
    assert vqa_answer("Which shape is blue?", SCENE) == "square"
    assert vqa_answer("Which side of the square is the circle on?", SCENE) == "left"
    assert vqa_answer("Which side of the red shape is the blue square on?", SCENE) == "right"
    assert nlvr2_truth("Both images contain a red circle.", SCENE, SCENE)
    assert not nlvr2_truth("Exactly one image contains a red circle.", SCENE, SCENE)
    assert vcr_claim([[0], "is", "a", "small", "red", "circle", "."], SCENE["objects"])
    assert not vcr_claim([[0], "is", "blue", "."], SCENE["objects"])
    assert not vcr_claim([[0], "is", "to", "the", "right", "of", [1], "."], SCENE["objects"])


# ---------------------------------------------------------------- layout and determinism
def test_layout_matches_config(demo):
    yaml = pytest.importorskip("yaml")
    out, _ = demo
    from cavl.config import resolve_config

    config_path = os.path.join(os.path.dirname(__file__), os.pardir, "config.yaml")
    with open(config_path) as f:
        config = resolve_config(yaml.safe_load(f))
    prefix = config["demo"]["out_dir"].rstrip("/") + "/"
    paths = []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, str) and node.startswith(prefix):
            paths.append(node[len(prefix):])

    walk(config["datasets"])
    assert len(paths) >= 20
    for p in paths:
        assert (out / p).exists(), p
    assert set(config["demo"]["images"]) == set(COUNTS)


def _tree(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = f.read()
    return files


def test_deterministic_for_a_seed(tmp_path, capsys):
    small = {"coco": 5, "vg": 3, "flickr30k": 4, "nlvr2": 8, "vcr": 4}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert main(_args(tmp_path / name, seed=seed, size=128, counts=small)) == 0
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert not any(k.startswith(".") or k.endswith(".tmp") for k in a)  # no temp files left
    assert a["scenes.json"] != c["scenes.json"]
    printed = capsys.readouterr().out.splitlines()
    assert len([l for l in printed if l.startswith("coco:")]) == 3
    assert {l.split(":")[0] for l in printed} == {"coco", "vqa", "vg", "flickr30k", "nlvr2",
                                                 "vcr"}


def test_bad_count_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--count", "imagenet=3"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--count", "coco=-1"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--variant", "3"])


SMALL = {"coco": 5, "vg": 3, "flickr30k": 4, "nlvr2": 8, "vcr": 4}
# sha256 over the annotation files (not the images: JPEG/PNG bytes depend on the Pillow
# version) of `_args(out, seed=1, size=128, counts=SMALL)`: variant 1 writes exactly this until
# the demo is changed on purpose (last: eight NLVR2 sentences per set, from their own stream).
VARIANT_1_TEXT_SHA256 = "c5df9184641f7a36d2afa8db3ad8d98b1b96c44f75367ac90c10dec7330d041f"
# vg/attributes.json and the vocabularies are left out of that digest: they came later and take
# no draw from the random streams, so the files above stayed byte for byte; attributes.json's own
# sha256 for the same run (the vocabularies: test_vg_vocabularies_name_every_object_and_attribute_truly):
VARIANT_1_VG_ATTRIBUTES_SHA256 = "7786416420b44f453436bef4c0d832d6948da8606f923089256a74ae2ee71b10"
LATER_FILES = {"vg/attributes.json", "vocab/objects_vocab.txt", "vocab/attributes_vocab.txt"}


def _text_digest(root, exclude=LATER_FILES):
    h = hashlib.sha256()
    files = sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                   for d, _, names in os.walk(root) for n in names
                   if not n.endswith((".jpg", ".png")))
    files = [f for f in files if f not in exclude]
    for name in files:
        with open(os.path.join(root, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return len(files), h.hexdigest()


def test_variant_1_is_the_original_demo(tmp_path):
    for name, variant in (("default", None), ("v1", 1)):
        assert main(_args(tmp_path / name, seed=1, size=128, counts=SMALL, variant=variant)) == 0
    assert _tree(tmp_path / "default") == _tree(tmp_path / "v1")
    assert _text_digest(tmp_path / "v1") == (33, VARIANT_1_TEXT_SHA256)
    attributes = (tmp_path / "v1" / "vg" / "attributes.json").read_bytes()
    assert hashlib.sha256(attributes).hexdigest() == VARIANT_1_VG_ATTRIBUTES_SHA256


def test_variant_2_deterministic_and_another_world(tmp_path):
    runs = (("a", 2, 1), ("b", 2, 1), ("c", 2, 2), ("v1", 1, 1))
    for name, variant, seed in runs:
        assert main(_args(tmp_path / name, seed=seed, size=128, counts=SMALL,
                          variant=variant)) == 0
    a, b, c, v1 = (_tree(tmp_path / n) for n, _, _ in runs)
    assert a.keys() == b.keys() and len(a) == len(v1)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert a["scenes.json"] != c["scenes.json"]
    scenes = {n: json.loads(t["scenes.json"]) for n, t in (("v2", a), ("v1", v1))}
    colours = {n: {o["color"] for d in sc.values() for e in d.values() for o in e["objects"]}
               for n, sc in scenes.items()}
    assert colours["v2"] <= set(PALETTES[2]) and colours["v1"] <= set(PALETTES[1])
    # its own random streams: not even the image ids drawn first are variant 1's
    assert set(scenes["v2"]["coco"]).isdisjoint(scenes["v1"]["coco"])


def test_variant_palettes_disjoint_and_in_the_config_schema():
    from cavl.demo import variants
    from cavl.demo.scenes import BACKGROUNDS

    assert {k: dict(v.colors) for k, v in variants.VARIANTS.items()} == PALETTES
    assert not set(PALETTES[1]) & set(PALETTES[2])
    assert not set(PALETTES[1].values()) & set(PALETTES[2].values())
    assert not COLORS & set(BACKGROUNDS) and not COLORS & HEADS
    yaml = pytest.importorskip("yaml")
    schema_path = os.path.join(os.path.dirname(__file__), os.pardir, "workflow", "schemas",
                               "config.schema.yaml")
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    key = schema["properties"]["demo"]["properties"]["variant"]
    assert key["enum"] == sorted(variants.VARIANTS) and key["default"] == 1


def test_variant_2_asks_other_questions(tmp_path):
    """Its VQA questions share no wording with variant 1's and include kinds variant 1 has
    not (comparing counts, negation, largest / smallest, which side)."""
    counts = dict(COUNTS, coco=40)
    questions = {}
    for variant in (1, 2):
        out = tmp_path / f"v{variant}"
        assert main(_args(out, counts=counts, variant=variant)) == 0
        questions[variant] = [q["question"] for split in ("train", "val") for q in _json(
            out / "vqa" / f"v2_OpenEnded_mscoco_{split}2014_questions.json")["questions"]]

    def forms(qs):
        return {" ".join(w for w in q.rstrip("?").split()
                         if w.lower() not in COLORS | SHAPES | {s + "s" for s in SHAPES})
                for q in qs}

    assert not forms(questions[1]) & forms(questions[2])
    v2 = " | ".join(questions[2])
    for kind in ("Are there more ", "How many shapes are not ", "est shape?", "Which side of "):
        assert kind in v2, kind


def test_images_open_with_annotated_size(demo, variant):
    out, scenes = demo
    palette = PALETTES[variant]
    assert set(scenes) == set(COUNTS)
    shapes = set()
    for dataset, entries in scenes.items():
        assert len(entries) == COUNTS[dataset], dataset
        for image_id, s in entries.items():
            with Image.open(out / s["file"]) as im:
                assert im.size == (s["width"], s["height"]), (dataset, image_id)
                assert im.format == ("PNG" if dataset == "nlvr2" else "JPEG")
                # the rendered colour at an object's centre is its colour, not the background
                for o in s["objects"]:
                    x1, y1, x2, y2 = o["bbox"]
                    assert 0 <= x1 < x2 < s["width"] and 0 <= y1 < y2 < s["height"]
                    px = im.convert("RGB").getpixel(((x1 + x2) // 2, (y1 + y2) // 2 + 2))
                    assert o["color"] in palette, (dataset, image_id, o)
                    assert _colour_name(px, palette) == o["color"], (dataset, image_id, o, px)
            lo, hi = OBJECTS[variant]["vcr" if dataset == "vcr" else "other"]
            assert lo <= len(s["objects"]) <= hi, (dataset, image_id)
            assert s["background"] in BACKGROUNDS
            boxes = [o["bbox"] for o in s["objects"]]
            for i, a in enumerate(boxes):  # no two objects overlap
                for b in boxes[i + 1:]:
                    assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
            shapes.add((s["width"], s["height"]))
    assert len(shapes) > 1  # not every image is square


def _colour_name(px, palette):
    ref = dict(palette, white=(245, 245, 245), gray=(150, 150, 150), black=(25, 25, 25))
    return min(ref, key=lambda k: sum((a - b) ** 2 for a, b in zip(ref[k], px)))


# ---------------------------------------------------------------- COCO + VQA
def test_coco_captions_official_and_true(demo):
    out, scenes = demo
    ids = {}
    for split in ("train", "val"):
        doc = _json(out / "coco" / "annotations" / f"captions_{split}2014.json")
        assert {"info", "licenses", "images", "annotations"} <= set(doc)
        per_image = collections.Counter(a["image_id"] for a in doc["annotations"])
        for im in doc["images"]:
            assert im["file_name"] == f"COCO_{split}2014_{im['id']:012d}.jpg"
            assert (out / "coco" / f"{split}2014" / im["file_name"]).is_file()
            s = scenes["coco"][str(im["id"])]
            assert (im["width"], im["height"]) == (s["width"], s["height"])
            assert per_image[im["id"]] == 5
            ids[im["id"]] = split
        assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
        for a in doc["annotations"]:
            assert set(a) == {"id", "image_id", "caption"}
            assert mentions(a["caption"]), a
            assert statement_true(a["caption"], scenes["coco"][str(a["image_id"])]), a
    assert len(ids) == COUNTS["coco"]
    n_val = sum(v == "val" for v in ids.values())
    assert 0.1 <= n_val / len(ids) <= 0.3


def test_vqa_official_and_majority_true(demo):
    out, scenes = demo
    types = collections.Counter()
    for split in ("train", "val"):
        images = {im["id"] for im in _json(out / "coco" / "annotations" /
                                           f"captions_{split}2014.json")["images"]}
        q = _json(out / "vqa" / f"v2_OpenEnded_mscoco_{split}2014_questions.json")
        a = _json(out / "vqa" / f"v2_mscoco_{split}2014_annotations.json")
        assert set(q) == {"info", "task_type", "data_type", "license", "data_subtype",
                          "questions"}
        assert {"info", "license", "data_subtype", "annotations", "data_type"} <= set(a)
        assert q["data_subtype"] == a["data_subtype"] == f"{split}2014"
        questions = {x["question_id"]: x for x in q["questions"]}
        assert len(questions) == len(q["questions"]) == len(a["annotations"])
        per_image = collections.Counter(x["image_id"] for x in q["questions"])
        assert set(per_image) == images and set(per_image.values()) <= {4, 5, 6}  # two per answer type where the scene allows
        for ann in a["annotations"]:
            assert set(ann) == {"question_type", "multiple_choice_answer", "answers",
                                "image_id", "answer_type", "question_id"}
            qq = questions[ann["question_id"]]
            assert qq["image_id"] == ann["image_id"]
            answers = [x["answer"] for x in ann["answers"]]
            assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in ann["answers"])
            top, n_top = collections.Counter(answers).most_common(1)[0]
            assert top == ann["multiple_choice_answer"] and n_top >= 6
            truth = vqa_answer(qq["question"], scenes["coco"][str(ann["image_id"])])
            assert ann["multiple_choice_answer"] == truth, (qq, ann)
            assert ann["answer_type"] == {"yes": "yes/no", "no": "yes/no"}.get(
                truth, "number" if truth.isdigit() else "other")
            assert qq["question"].lower().startswith(ann["question_type"])
            types[ann["answer_type"]] += 1
            types["disagree"] += len(set(answers)) > 1
    assert set(types) == {"yes/no", "number", "other", "disagree"}


# ---------------------------------------------------------------- Visual Genome
def test_vg_official_and_regions_true(demo):
    out, scenes = demo
    image_data = _json(out / "vg" / "image_data.json")
    regions = _json(out / "vg" / "region_descriptions.json")
    assert len(image_data) == len(regions) == COUNTS["vg"]
    for im in image_data:
        assert set(im) == {"image_id", "url", "width", "height", "coco_id", "flickr_id"}
        assert im["url"].endswith(f"VG_100K/{im['image_id']}.jpg")
        assert (out / "vg" / "VG_100K" / f"{im['image_id']}.jpg").is_file()
    region_ids = set()
    for entry in regions:
        assert set(entry) == {"id", "regions"}
        s = scenes["vg"][str(entry["id"])]
        assert len(entry["regions"]) >= len(s["objects"]) + 1
        for r in entry["regions"]:
            assert set(r) == {"region_id", "width", "height", "image_id", "phrase", "y", "x"}
            assert r["image_id"] == entry["id"] and r["region_id"] not in region_ids
            region_ids.add(r["region_id"])
            x1, y1, x2, y2 = r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]
            inside = [o for o in s["objects"] if o["bbox"][0] >= x1 and o["bbox"][1] >= y1
                      and o["bbox"][2] <= x2 and o["bbox"][3] <= y2]
            assert statement_true(r["phrase"], s, inside), r
            ms = mentions(r["phrase"])
            if len(ms) == 1 and ms[0]["quant"] == "exists":  # one object: its own box
                assert any(o["bbox"] == [x1, y1, x2, y2] and fits(o, ms[0]) for o in inside), r


def test_object_boxes_official_and_equal_to_the_scenes(demo):
    """COCO instances_*.json and VG objects.json hold one box per scene object, named by shape."""
    out, scenes = demo
    for split in ("train", "val"):
        doc = _json(out / "coco" / "annotations" / f"instances_{split}2014.json")
        assert set(doc) == {"info", "images", "licenses", "annotations", "categories"}
        captions = _json(out / "coco" / "annotations" / f"captions_{split}2014.json")
        assert doc["images"] == captions["images"]
        names = {c["id"]: c["name"] for c in doc["categories"]}
        assert set(names.values()) == SHAPES
        got = collections.defaultdict(list)
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["area"] == w * h and a["iscrowd"] == 0
            got[a["image_id"]].append(([x, y, x + w, y + h], names[a["category_id"]]))
        for im in doc["images"]:
            objs = scenes["coco"][str(im["id"])]["objects"]
            assert got[im["id"]] == [(o["bbox"], o["shape"]) for o in objs]
    objects = _json(out / "vg" / "objects.json")
    assert len(objects) == COUNTS["vg"]
    for entry in objects:
        objs = scenes["vg"][str(entry["image_id"])]["objects"]
        assert [([o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]], o["names"]) for o in entry["objects"]] \
            == [(o["bbox"], [o["shape"]]) for o in objs]


# how the demo's VG attributes.json may write a colour or a size (written out here independently)
VG_COLOR_WORDS = {**{c: {c} for c in COLORS}, "blue": {"blue", "dark blue"}, "purple": {"purple", "violet"},
                  "navy": {"navy", "navy blue", "dark blue"}, "lime": {"lime", "lime green"}}
VG_SIZE_WORDS = {"large": {"large", "big"}, "small": {"small", "little"}}


def _vg_clean(s):
    s = s.lower().strip()
    return s[:-1] if s.endswith(".") else s


def test_vg_attributes_official_and_true(demo):
    """VG attributes.json: objects.json's objects (every shape), each with its true colour and
    size written as annotators write them; some objects without attributes."""
    from cavl.formats.vg import read_attributes

    out, scenes = demo
    raw = _json(out / "vg" / "attributes.json")
    objects = _json(out / "vg" / "objects.json")
    assert [e["image_id"] for e in raw] == [e["image_id"] for e in objects]
    parsed = read_attributes(out / "vg" / "attributes.json")
    styles = collections.Counter()
    for entry, objs_entry in zip(raw, objects):
        assert set(entry) == {"image_id", "attributes"}
        scene_objs = scenes["vg"][str(entry["image_id"])]["objects"]
        assert len(entry["attributes"]) == len(scene_objs) == len(objs_entry["objects"])
        assert [r["box"] for r in parsed[entry["image_id"]]] == [o["bbox"] for o in scene_objs]
        for rec, o, plain in zip(entry["attributes"], scene_objs, objs_entry["objects"]):
            assert {k: rec[k] for k in ("object_id", "x", "y", "w", "h", "synsets")} \
                == {k: plain[k] for k in ("object_id", "x", "y", "w", "h", "synsets")}
            assert len(rec["names"]) == 1
            words = _vg_clean(rec["names"][0]).split()
            assert words[-1] == o["shape"], rec
            phrases = [p for a in rec.get("attributes", []) for p in _vg_clean(a).split(" and ")]
            if len(words) > 1:
                phrases.append(" ".join(words[:-1]))
                styles["attribute in the name"] += 1
            colour = [p for p in phrases if p in VG_COLOR_WORDS[o["color"]]]
            size = [p for p in phrases if p in VG_SIZE_WORDS[o["size"]]]
            assert len(colour) + len(size) == len(phrases), (rec, o)  # nothing false
            if rec.get("attributes"):
                assert colour and size, (rec, o)
            kind = "missing" if "attributes" not in rec else "empty" if not rec["attributes"] else "some"
            styles[kind] += 1
            for s in rec["names"] + rec.get("attributes", []):
                styles["period"] += s.endswith(".")
                styles["capital"] += s[0].isupper()
                styles["alias"] += _vg_clean(s) in {"big", "little"}
                styles["two in one"] += " and " in s
    assert all(styles[k] for k in ("missing", "empty", "some", "period", "capital", "alias",
                                   "attribute in the name", "two in one")), styles
    assert styles["some"] > styles["missing"] + styles["empty"]


def test_vg_vocabularies_name_every_object_and_attribute_truly(demo, variant):
    """vocab/{objects,attributes}_vocab.txt: every annotated object maps (through BUTD's cleaning)
    to its shape and only to its true colour and size; no string falls outside."""
    from cavl.formats.vg import read_attributes
    from extract.vocab import VocabCounts, map_object, read_vocab

    out, scenes = demo
    objects, attributes = (read_vocab(out / "vocab" / f"{k}_vocab.txt") for k in ("objects", "attributes"))
    assert objects.names == ["circle", "square", "triangle", "star"]
    assert set(attributes.names) == set(PALETTES[variant]) | {"large", "small"}
    counts = VocabCounts()
    for image_id, records in read_attributes(out / "vg" / "attributes.json").items():
        for rec, o in zip(records, scenes["vg"][str(image_id)]["objects"]):
            shape, attrs = map_object(rec["names"], rec["attributes"], objects, attributes, counts)
            assert objects.names[shape] == o["shape"]
            assert {attributes.names[a] for a in attrs} <= {o["color"], o["size"]}, (rec, o)
    assert all(report["outside"] == 0 for report in counts.report(top=0).values())


# ---------------------------------------------------------------- VCR
VCR_KEYS = {"movie", "objects", "interesting_scores", "answer_likelihood", "img_fn",
            "metadata_fn", "answer_orig", "question_orig", "rationale_orig", "question",
            "answer_match_iter", "answer_sources", "answer_choices", "answer_label",
            "rationale_choices", "rationale_sources", "rationale_match_iter",
            "rationale_label", "img_id", "question_number", "annot_id", "match_fold",
            "match_index"}


def test_vcr_official_and_exactly_one_right(demo):
    out, scenes = demo
    root = out / "vcr" / "vcr1images"
    seen_images = set()
    for split in ("train", "val"):
        records = _jsonl(out / "vcr" / f"{split}.jsonl")
        assert records, split
        for r in records:
            assert set(r) == VCR_KEYS
            s = scenes["vcr"][r["img_fn"][:-len(".jpg")]]
            assert r["img_fn"].split("/")[0] == f"lsmdc_{r['movie']}"
            meta = _json(root / r["metadata_fn"])
            assert set(meta) == {"boxes", "segms", "names", "width", "height"}
            assert (meta["width"], meta["height"]) == (s["width"], s["height"])
            assert [b[:4] for b in meta["boxes"]] == [o["bbox"] for o in s["objects"]]
            assert all(len(b) == 5 and 0 < b[4] <= 1 for b in meta["boxes"])
            assert meta["names"] == r["objects"] == [o["shape"] for o in s["objects"]]
            assert len(meta["segms"]) == len(meta["boxes"])
            assert (root / r["img_fn"]).is_file()
            assert any(isinstance(t, list) for t in r["question"])
            for choices, label in ((r["answer_choices"], r["answer_label"]),
                                   (r["rationale_choices"], r["rationale_label"])):
                assert len(choices) == 4
                truth = [vcr_claim(c, s["objects"]) for c in choices]
                assert truth == [k == label for k in range(4)], (r["annot_id"], choices, label)
            assert r["answer_match_iter"][r["answer_label"]] == 0
            assert sorted(r["answer_match_iter"]) == [0, 1, 2, 3]
            seen_images.add(r["img_fn"])
    assert len(seen_images) == COUNTS["vcr"]


# ---------------------------------------------------------------- NLVR2
NLVR2_KEYS = {"validation", "sentence", "left_url", "writer", "label", "right_url", "synset",
              "query", "identifier"}


def test_nlvr2_official_and_labels_true(demo):
    out, scenes = demo
    images = out / "nlvr2" / "images"
    labels, per_sentence = collections.Counter(), collections.defaultdict(set)
    n = 0
    for split in ("train", "dev", "test1"):
        for r in _jsonl(out / "nlvr2" / f"{split}.json"):
            n += 1
            extra = {"directory"} if split == "train" else {"extra_validations"}
            assert set(r) == NLVR2_KEYS | extra
            sp, set_id, pair_id, sentence_id = r["identifier"].split("-")
            assert sp == split and 0 <= int(sentence_id) < nlvr2.SENTENCES_PER_SET and 0 <= int(pair_id) <= 3
            folder = images / "train" / str(r["directory"]) if split == "train" \
                else images / split
            stem = f"{split}-{set_id}-{pair_id}"
            for side in (0, 1):
                assert (folder / f"{stem}-img{side}.png").is_file()
            assert r["left_url"].endswith(f"{stem}-img0.png")
            assert r["right_url"].endswith(f"{stem}-img1.png")
            assert r["label"] in ("True", "False")
            left, right = scenes["nlvr2"][f"{stem}-img0"], scenes["nlvr2"][f"{stem}-img1"]
            assert nlvr2_truth(r["sentence"], left, right) == (r["label"] == "True"), r
            labels[r["label"]] += 1
            per_sentence[(split, set_id, sentence_id, r["sentence"])].add(pair_id)
    assert n == sum(len(p) for p in per_sentence.values())
    assert labels["True"] >= n // 4 and labels["False"] >= n // 4
    assert max(len(p) for p in per_sentence.values()) == 4  # consistency is meaningful


# ---------------------------------------------------------------- Flickr30k
ENTITY = re.compile(r"\[/EN#(\d+)((?:/[a-z]+)+) ([^\]]+)\]")


def _xml_boxes(path):
    root = ET.parse(path).getroot()
    boxes, nobox, scene, multi = collections.defaultdict(list), set(), set(), 0
    for obj in root.findall("object"):
        names = [n.text for n in obj.findall("name")]
        multi += len(names) > 1
        bb = obj.find("bndbox")
        if bb is not None:
            box = [int(bb.find(t).text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
            for n in names:
                boxes[n].append(box)
        else:
            if int(obj.find("nobndbox").text) > 0:
                nobox.update(names)
            if int(obj.find("scene").text) > 0:
                scene.update(names)
    size = root.find("size")
    return boxes, nobox, scene, multi, (int(size.find("width").text),
                                        int(size.find("height").text))


def test_flickr30k_karpathy_and_entities_true(demo):
    out, scenes = demo
    fl = out / "flickr30k"
    ent = fl / "flickr30k_entities"
    karpathy = _json(fl / "dataset_flickr30k.json")
    assert set(karpathy) == {"dataset", "images"} and karpathy["dataset"] == "flickr30k"
    splits = collections.defaultdict(list)
    sentids, seen = set(), collections.Counter()
    for imgid, im in enumerate(karpathy["images"]):
        assert set(im) == {"filename", "imgid", "sentids", "sentences", "split"}
        image_id = im["filename"][:-len(".jpg")]
        assert image_id.isdigit() and im["imgid"] == imgid
        assert (fl / "flickr30k-images" / im["filename"]).is_file()
        splits[im["split"]].append(image_id)
        s = scenes["flickr30k"][image_id]
        assert len(im["sentences"]) == 5 and im["sentids"] == [x["sentid"] for x in im["sentences"]]
        for x in im["sentences"]:
            assert set(x) == {"tokens", "raw", "imgid", "sentid"} and x["imgid"] == imgid
            assert x["sentid"] not in sentids
            sentids.add(x["sentid"])
            assert x["tokens"] == words_of(x["raw"])
            assert statement_true(x["raw"], s), x
        boxes, nobox, scene_ids, multi, size = _xml_boxes(ent / "Annotations" / f"{image_id}.xml")
        assert size == (s["width"], s["height"])
        seen["multi-name objects"] += multi
        with open(ent / "Sentences" / f"{image_id}.txt") as f:
            lines = f.read().splitlines()
        assert len(lines) == 5
        for line, x in zip(lines, im["sentences"]):
            assert words_of(ENTITY.sub(lambda m: m.group(3), line)) == x["tokens"]
            for eid, types, phrase in ENTITY.findall(line):
                types = types.strip("/").split("/")
                seen["multi-type"] += len(types) > 1
                if eid in boxes:
                    ms = mentions(phrase)
                    assert len(ms) == 1, phrase
                    found = [o for b in boxes[eid] for o in s["objects"] if o["bbox"] == b]
                    assert len(found) == len(boxes[eid]), (phrase, boxes[eid])
                    assert all(fits(o, ms[0]) for o in found), (phrase, found)
                    assert len(found) == (ms[0]["n"] if ms[0]["quant"] == "exact" else 1)
                    seen["several boxes"] += len(found) > 1
                    assert "other" in types
                elif "notvisual" in types:
                    seen["notvisual"] += 1
                    assert not mentions(phrase)
                else:
                    assert eid in scene_ids and eid in nobox and "scene" in types, line
                    assert statement_true(phrase, s)
                    seen["scene"] += 1
    for k in ("multi-name objects", "multi-type", "several boxes", "notvisual", "scene"):
        assert seen[k], k
    assert set(splits) == {"train", "val", "test"}
    for split, ids in splits.items():
        with open(ent / f"{split}.txt") as f:
            assert f.read().split() == ids
    assert len(splits["test"]) == COUNTS["flickr30k"] // 4
