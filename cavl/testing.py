"""Synthetic data in the pipeline's real formats, for the tests and the benchmarks (no downloads).

A scene is a few distinct (colour, shape) objects; each is a region whose feature is one-hot
colour + one-hot shape + noise, so questions, captions and phrases about it are answerable
from its features:

    write_synthetic_tasks(root)          # root/tasks/{vqa,vcr,nlvr2}/{split}.parquet
                                         # root/features/{coco,vcr,nlvr2}/shard-00000.parquet + index.parquet
    write_synthetic_flickr30k(root)      # root/tasks/{tir,rpg}/{split}.parquet + root/features/flickr30k/
    write_feature_shards(root, dataset, {image_id: (features, boxes, W, H, num_given)})
    write_tiny_backbone(root / "backbone")          # a random 2-layer BERT as a CavlModel folder
    write_tiny_pretrained(root / "pretrained")      # the same + ITM head, as pretraining saves it
    word_tokenizer()                     # a word-level tokenizer over VOCAB

Images for the extraction stage: :func:`write_scenes` (seeded JPEG scenes with their boxes),
:func:`write_bad_images` (every awkward case the extractor must survive), :func:`write_manifest`.
This module never imports `extract` (tests/test_layering.py).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from cavl.io import write_parquet_atomic
from cavl.manifest import MANIFEST_SCHEMA
from cavl.shards import ShardWriter, build_index
from cavl.task_data import TASK_SCHEMAS

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "there", "a", "what", "color", "the", "how", "many",
         "shapes", "?", ".", "yes", "no", "left", "right", "image", "has", "and", "0", "1", "2", "3"]
VOCAB = WORDS + COLOURS + SHAPES
FEATURE_DIM = 12
WIDTH, HEIGHT = 200, 160  # pixel size of every synthetic feature-level image


def scene_objects(rng, n):
    """`n` distinct (colour, shape) objects of COLOURS × SHAPES."""
    picks = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    return [(COLOURS[p // len(SHAPES)], SHAPES[p % len(SHAPES)]) for p in picks]


def object_feature(rng, colour, shape, dim=FEATURE_DIM):
    """One region's feature: one-hot colour + one-hot shape + N(0, 0.1) noise (colour None: a
    distractor, noise only)."""
    f = rng.normal(0, 0.1, dim).astype(np.float32)
    if colour is not None:
        f[COLOURS.index(colour)] += 1.0
        f[len(COLOURS) + SHAPES.index(shape)] += 1.0
    return f


def region_features(rng, objects, extra=2, w=WIDTH, h=HEIGHT, dim=FEATURE_DIM):
    """Features (N, D) and pixel boxes (N, 4): the objects first, then `extra` distractors."""
    feats, boxes = [], []
    for colour, shape in list(objects) + [(None, None)] * extra:
        f = object_feature(rng, colour, shape, dim)
        x1, y1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        feats.append(f)
        boxes.append([x1, y1, x1 + rng.uniform(10, w / 2), y1 + rng.uniform(10, h / 2)])
    return np.stack(feats), np.asarray(boxes, np.float32)


def write_feature_shards(root, dataset: str, images: dict, shard_size: int = 16, dim: int = FEATURE_DIM):
    """Shards + index of `dataset` under `root` from {image_id: (features (N, D), boxes (N, 4),
    width, height, num_given)}, written with cavl.shards as the extractor writes them."""
    out = Path(root) / dataset
    ids = list(images)
    paths = []
    meta = {"feature_dim": dim, "feature_dtype": "float16", "schema_version": 1, "weights_checksum": "synthetic",
            "boxes": {"mode": "synthetic"}, "detector": {"config_yaml": "synthetic", "weights_checksum": "synthetic"},
            "code_version": "synthetic"}
    for k, start in enumerate(range(0, len(ids), shard_size)):
        path = str(out / f"shard-{k:05d}.parquet")
        out.mkdir(parents=True, exist_ok=True)
        part = ids[start : start + shard_size]
        with ShardWriter(path, dim, "float16", {**meta, "shard": k}, row_group_size=8) as w:
            for i in part:
                f, b, width, height, given = images[i]
                n = len(f)
                w.add([i], [[height, width]], [n], [given], b, np.ones(n, np.float32), np.zeros(n, np.int32), f)
        paths.append(path)
    table, metadata = build_index(paths)
    write_parquet_atomic(table, out / "index.parquet", metadata)
    return out / "index.parquet"


def _vqa(rng, split, n_images, features):
    rows = []
    for k in range(n_images):
        image_id = str(100000 + k + (0 if split == "train" else 50000))
        objects = scene_objects(rng, int(rng.integers(1, 4)))
        f, b = region_features(rng, objects)
        features[image_id] = (f, b, 200, 160, 0)
        colour, shape = objects[0]
        other = COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
        asked = (other, shape) if rng.random() < 0.5 else (colour, shape)
        qa = [(f"is there a {asked[0]} {asked[1]} ?", "yes" if asked in objects else "no", "yes/no", "is there a"),
              (f"what color is the {shape} ?", colour, "other", "what color is the"),
              ("how many shapes ?", str(len(objects)), "number", "how many")]
        for j, (q, a, atype, qtype) in enumerate(qa):
            answers = [a] * 9 + [str(rng.choice(COLOURS))]
            rows.append({"question_id": int(image_id) * 10 + j, "image_id": image_id, "question": q,
                         "answers": answers, "multiple_choice_answer": a, "answer_type": atype,
                         "question_type": qtype})
    return pd.DataFrame(rows)


def _nlvr2(rng, split, n_pairs, features):
    rows = []
    for k in range(n_pairs):
        colour, shape = scene_objects(rng, 1)[0]
        for pair in range(2):
            left, right = scene_objects(rng, 2), scene_objects(rng, 2)
            label = bool(rng.random() < 0.5)
            if label:
                left[0] = (colour, shape)
            elif (colour, shape) in left:
                left.remove((colour, shape))
            ids = [f"{split}-{k}-{pair}-img{j}" for j in range(2)]
            for image_id, objects in zip(ids, (left, right)):
                f, b = region_features(rng, objects)
                features[image_id] = (f, b, 200, 160, 0)
            rows.append({"identifier": f"{split}-{k}-{pair}-0", "sentence": f"the left image has a {colour} {shape} .",
                         "label": label, "left_image_id": ids[0], "right_image_id": ids[1]})
    return pd.DataFrame(rows)


def _vcr(rng, split, n_images, features):
    rows = []
    for k in range(n_images):
        image_id = f"movie_{split}/clip_{k}@0"
        objects = scene_objects(rng, 3)
        f, b = region_features(rng, objects)
        features[image_id] = (f, b, 200, 160, len(objects))  # the objects are the given boxes
        names = [s for _, s in objects]
        for q in range(2):
            i = int(rng.integers(len(objects)))
            colour = objects[i][0]
            choices = [colour] + [c for c in COLOURS if c != colour][:3]
            order = rng.permutation(4)
            answers = [[[i], "is", choices[o], "."] for o in order]
            rationales = [[[i], "is", "a", choices[o], names[i], "."] for o in order]
            label = int(np.flatnonzero(order == 0)[0])
            rows.append({"annot_id": f"{split}-{k}-{q}", "image_id": image_id,
                         "question": json.dumps(["what", "color", "is", [i], "?"]),
                         "answer_choices": json.dumps(answers), "rationale_choices": json.dumps(rationales),
                         "answer_label": label, "rationale_label": label, "objects": names})
    return pd.DataFrame(rows).astype({"answer_label": np.int32, "rationale_label": np.int32})


def write_synthetic_tasks(root, sizes=None, seed: int = 0) -> Path:
    """Task tables and features of vqa (coco images), vcr and nlvr2 under `root`."""
    root = Path(root)
    sizes = {"vqa": (24, 8), "vcr": (12, 4), "nlvr2": (12, 4), **(sizes or {})}
    rng = np.random.default_rng(seed)
    features = {"coco": {}, "vcr": {}, "nlvr2": {}}
    builders = {"vqa": (_vqa, "coco", ("train", "val")), "vcr": (_vcr, "vcr", ("train", "val")),
                "nlvr2": (_nlvr2, "nlvr2", ("train", "dev"))}
    for task, (build, dataset, splits) in builders.items():
        for split, n in zip(splits, sizes[task]):
            write_parquet_atomic(build(rng, split, n, features[dataset]), root / "tasks" / task / f"{split}.parquet")
    for dataset, images in features.items():
        write_feature_shards(root / "features", dataset, images)
    return root


def _box(rng, w=WIDTH, h=HEIGHT):
    x1, y1 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
    return [x1, y1, x1 + rng.uniform(w * 0.2, w * 0.4), y1 + rng.uniform(h * 0.2, h * 0.4)]


def _jitter(rng, box, scale=0.05):
    """A detection of `box`: corners moved by a few percent of its size (IoU stays ≥ 0.6)."""
    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-scale, scale, 4) * np.array([w, h, w, h])
    return [box[0] + d[0], box[1] + d[1], box[2] + d[2], box[3] + d[3]]


def synthetic_flickr30k(sizes=None, seed: int = 0, dim: int = FEATURE_DIM):
    """(tables {task: {split: DataFrame}}, images {image_id: (features, boxes, W, H, num_given)}).

    Regions of an image with 2-3 shapes: each shape's gt box (the given boxes), then, shuffled,
    a jittered copy of each and 3 random distractors. rpg phrases: each named shape, "two
    shapes" (an entity with both boxes) and "the image" (notvisual: no box).
    """
    sizes = {"train": 12, "val": 4, "test": 6, **(sizes or {})}
    rng = np.random.default_rng(seed)
    tir, rpg, images = {}, {}, {}
    sentence_id, entity = 0, 1
    for split, n in sizes.items():
        tir[split], rpg[split] = [], []
        for k in range(n):
            image_id = str(7_000_000_000 + len(images))
            objects = scene_objects(rng, int(rng.integers(2, 4)))
            gt = [_box(rng) for _ in objects]
            detected = [(_jitter(rng, b), o) for b, o in zip(gt, objects)]
            detected += [(_box(rng), (None, None)) for _ in range(3)]
            order = rng.permutation(len(detected))
            detected = [detected[i] for i in order]
            feats = [object_feature(rng, c, s, dim) for c, s in [*objects, *(o for _, o in detected)]]
            boxes = gt + [b for b, _ in detected]
            images[image_id] = (np.stack(feats), np.asarray(boxes, np.float32), WIDTH, HEIGHT, len(gt))
            ids = {i: entity + i for i in range(len(objects))}
            pair_entity = entity + len(objects)
            entity += len(objects) + 1
            names = [f"a {c} {s}" for c, s in objects]
            templates = [(names[0] + " and " + names[1] + " .", [(0, 0), (4, 1)]),
                         ("the image has " + names[1] + " .", [(0, "image"), (3, 1)]),
                         ("two shapes : " + names[0] + " and " + names[1] + " .", [(0, "two"), (3, 0), (7, 1)]),
                         (names[1] + " .", [(0, 1)]),
                         ("the image has " + names[0] + " .", [(0, "image"), (3, 0)])]
            for s_index, (sentence, spans) in enumerate(templates):
                tir[split].append({"image_id": image_id, "sentence_id": sentence_id, "caption": sentence})
                sentence_id += 1
                words = sentence.split()
                for first, what in spans:
                    if what == "image":
                        phrase, eid, types, boxes_ = "the image", "0", ["notvisual"], []
                    elif what == "two":
                        phrase, eid, types, boxes_ = "two shapes", str(pair_entity), ["other"], [gt[0], gt[1]]
                    else:
                        phrase, eid, types, boxes_ = names[what], str(ids[what]), ["other"], [gt[what]]
                    assert words[first : first + len(phrase.split())] == phrase.split()
                    rpg[split].append({"image_id": image_id, "sentence_index": s_index, "sentence": sentence,
                                       "phrase": phrase, "phrase_types": types, "entity_id": eid,
                                       "first_word_index": first, "gt_boxes": [list(map(float, b)) for b in boxes_]})
    tables = {"tir": {s: pd.DataFrame(r) for s, r in tir.items()},
              "rpg": {s: pd.DataFrame(r) for s, r in rpg.items()}}
    return tables, images


def write_synthetic_flickr30k(root, sizes=None, seed: int = 0, dim: int = FEATURE_DIM) -> Path:
    """root/tasks/{tir,rpg}/{split}.parquet (the contract schemas) + root/features/flickr30k/."""
    root = Path(root)
    tables, images = synthetic_flickr30k(sizes, seed, dim)
    for task, splits in tables.items():
        for split, df in splits.items():
            table = pa.Table.from_pylist(df.to_dict("records"), schema=TASK_SCHEMAS[task])
            write_parquet_atomic(table, root / "tasks" / task / f"{split}.parquet")
    write_feature_shards(root / "features", "flickr30k", images, dim=dim)
    return root


def write_tiny_backbone(path, visual_dim: int = FEATURE_DIM, seed: int = 0) -> Path:
    """A random tiny BERT as a CavlModel folder (weights + tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel

    from cavl.model import CavlModel

    path = Path(path)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1,
                         attention_probs_dropout_prob=0.0)
        BertModel(cfg).save_pretrained(tmp)
        tokenizer = word_tokenizer()
        tokenizer.save_pretrained(tmp)
        model = CavlModel.from_bert(tmp, visual_dim)
        model.save_pretrained(path, extra=lambda d: tokenizer.save_pretrained(str(d)))
    return path


def word_tokenizer(vocab=VOCAB):
    """A word-level BERT tokenizer over `vocab` (lower-cased; unknown words → [UNK])."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def write_tiny_pretrained(path, visual_dim: int = FEATURE_DIM, seed: int = 0) -> Path:
    """A random tiny model saved as the pretraining stage saves it: backbone + ITM head + tokenizer."""
    import torch

    from cavl.model import CavlForPretraining, CavlModel

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = CavlModel.from_pretrained(write_tiny_backbone(Path(tmp) / "b", visual_dim, seed))
    torch.manual_seed(seed + 1)
    model = CavlForPretraining(backbone.config)
    model.bert.load_state_dict(backbone.state_dict())
    model.save_pretrained(path, extra=lambda d: word_tokenizer().save_pretrained(str(d)))
    return path


def scene_image(rng, height, width):
    """(height, width, 3) uint8 RGB: a gradient with a few filled shapes, and the shapes' boxes."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    img = (base + 40 * np.stack([yy / max(height, 1), xx / max(width, 1), (xx + yy) / max(height + width, 1)], -1))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw, boxes = ImageDraw.Draw(im), []
    for _ in range(int(rng.integers(2, 5))):
        x1, y1 = rng.uniform(0, 0.7) * width, rng.uniform(0, 0.7) * height
        x2, y2 = x1 + rng.uniform(0.15, 0.3) * width, y1 + rng.uniform(0.15, 0.3) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x1, y1, x2, y2], fill=colour)
        boxes.append([float(x1), float(y1), float(min(x2, width)), float(min(y2, height))])
    return np.asarray(im), boxes


def write_scenes(directory, sizes, seed=0):
    """One scene per (height, width) in `sizes`; returns manifest rows (dicts)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (h, w) in enumerate(sizes):
        array, boxes = scene_image(rng, h, w)
        path = os.path.join(directory, f"img{i:05d}.jpg")
        Image.fromarray(array).save(path, quality=90)
        rows.append({"image_id": f"img{i:05d}", "path": path, "width": w, "height": h,
                     "gt_boxes": boxes, "gt_box_labels": [str(k) for k in range(len(boxes))]})
    return rows


def write_manifest(path, rows):
    """A manifest Parquet (cavl.manifest's schema) of `rows`; missing columns empty."""
    rows = [{"gt_boxes": [], "gt_box_labels": [], "width": 0, "height": 0, **r} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return path


def write_bad_images(directory, huge=(9000, 12000)):
    """Every awkward input once. Returns {image_id: (path, expected)} where expected is
    ("ok", (H, W) of the oriented image) or ("fail", substring of the recorded reason)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1)
    cases = {}

    def path(name):
        return os.path.join(directory, name)

    array, _ = scene_image(rng, 48, 64)
    open(path("zero_byte.jpg"), "wb").close()
    cases["zero_byte"] = (path("zero_byte.jpg"), ("fail", "empty file"))

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    with open(path("truncated.jpg"), "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["truncated"] = (path("truncated.jpg"), ("fail", "truncated"))

    with open(path("text.jpg"), "w") as f:
        f.write("this is not an image\n" * 20)
    cases["text_named_jpg"] = (path("text.jpg"), ("fail", "not an image"))

    cases["missing"] = (path("does_not_exist.jpg"), ("fail", "missing file"))

    Image.fromarray(array).convert("L").save(path("gray.jpg"))
    cases["grayscale"] = (path("gray.jpg"), ("ok", (48, 64)))

    Image.fromarray(array).convert("CMYK").save(path("cmyk.jpg"))
    cases["cmyk"] = (path("cmyk.jpg"), ("ok", (48, 64)))

    rgba = Image.fromarray(array).convert("RGBA")
    rgba.putalpha(Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8)))
    rgba.save(path("rgba.png"))
    cases["rgba_png"] = (path("rgba.png"), ("ok", (48, 64)))

    pal = Image.fromarray(array).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(path("palette.png"), transparency=0)
    cases["palette_png"] = (path("palette.png"), ("ok", (48, 64)))

    sixteen = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(sixteen).save(path("sixteen.png"))
    cases["png_16bit"] = (path("sixteen.png"), ("ok", (48, 64)))

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored 64 wide × 48 tall, shown 48 × 64
    Image.fromarray(array).save(path("exif_rotated.jpg"), exif=exif.tobytes())
    cases["exif_rotated"] = (path("exif_rotated.jpg"), ("ok", (64, 48)))

    Image.fromarray(array[:1, :1]).save(path("one_pixel.png"))
    cases["one_by_one"] = (path("one_pixel.png"), ("ok", (1, 1)))

    if huge:
        big = Image.new("RGB", (huge[1], huge[0]), (90, 120, 150))
        ImageDraw.Draw(big).rectangle([huge[1] // 4, huge[0] // 4, huge[1] // 2, huge[0] // 2], fill=(220, 40, 40))
        big.save(path("huge.jpg"), quality=80)
        cases["huge"] = (path("huge.jpg"), ("ok", huge))
    return cases
