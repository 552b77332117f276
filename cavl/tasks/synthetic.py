"""Tiny synthetic inputs of the finetuning stage, in the real formats (tests and benchmarks).

    write_synthetic_tasks(root)          # root/tasks/{vqa,vcr,nlvr2}/{split}.parquet
                                         # root/features/{coco,vcr,nlvr2}/shard-00000.parquet + index.parquet
    write_tiny_backbone(root / "backbone", vocab)   # a random 2-layer BERT as a CavlModel folder

Scenes are a few coloured shapes; each region's feature is one-hot colour + one-hot shape +
noise, so the questions are answerable from the features. Shards are written with the
extraction stage's own writer and indexed with its gather step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cavl.io import write_parquet_atomic

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "there", "a", "what", "color", "the", "how", "many",
         "shapes", "?", ".", "yes", "no", "left", "right", "image", "has", "and", "0", "1", "2", "3"]
VOCAB = WORDS + COLOURS + SHAPES
FEATURE_DIM = 12


def _scene(rng, n):
    picks = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    return [(COLOURS[p // len(SHAPES)], SHAPES[p % len(SHAPES)]) for p in picks]


def _regions(rng, objects, extra=2, w=200, h=160, dim=FEATURE_DIM):
    """Features (N, D) and pixel boxes (N, 4): the objects first, then `extra` distractors."""
    feats, boxes = [], []
    for colour, shape in list(objects) + [(None, None)] * extra:
        f = rng.normal(0, 0.1, dim).astype(np.float32)
        if colour is not None:
            f[COLOURS.index(colour)] += 1.0
            f[len(COLOURS) + SHAPES.index(shape)] += 1.0
        x1, y1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        feats.append(f)
        boxes.append([x1, y1, x1 + rng.uniform(10, w / 2), y1 + rng.uniform(10, h / 2)])
    return np.stack(feats), np.asarray(boxes, np.float32)


def write_feature_shards(root, dataset: str, images: dict, shard_size: int = 16, dim: int = FEATURE_DIM):
    """Shards + index of `dataset` under `root` from {image_id: (features (N, D), boxes (N, 4),
    width, height, num_given)}, with the extraction stage's writer and gather step."""
    from extract.gather import build_index
    from extract.writer import ShardWriter

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
        objects = _scene(rng, int(rng.integers(1, 4)))
        f, b = _regions(rng, objects)
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
        colour, shape = _scene(rng, 1)[0]
        for pair in range(2):
            left, right = _scene(rng, 2), _scene(rng, 2)
            label = bool(rng.random() < 0.5)
            if label:
                left[0] = (colour, shape)
            elif (colour, shape) in left:
                left.remove((colour, shape))
            ids = [f"{split}-{k}-{pair}-img{j}" for j in range(2)]
            for image_id, objects in zip(ids, (left, right)):
                f, b = _regions(rng, objects)
                features[image_id] = (f, b, 200, 160, 0)
            rows.append({"identifier": f"{split}-{k}-{pair}-0", "sentence": f"the left image has a {colour} {shape} .",
                         "label": label, "left_image_id": ids[0], "right_image_id": ids[1]})
    return pd.DataFrame(rows)


def _vcr(rng, split, n_images, features):
    rows = []
    for k in range(n_images):
        image_id = f"movie_{split}/clip_{k}@0"
        objects = _scene(rng, 3)
        f, b = _regions(rng, objects)
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
    df = pd.DataFrame(rows)
    df["answer_label"] = df["answer_label"].astype(np.int32)
    df["rationale_label"] = df["rationale_label"].astype(np.int32)
    return df


def write_synthetic_tasks(root, sizes=None, seed: int = 0, dim: int = FEATURE_DIM) -> Path:
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
        if dim != FEATURE_DIM:
            images = {i: (np.pad(f, ((0, 0), (0, dim - f.shape[1]))), b, w, h, g) for i, (f, b, w, h, g) in images.items()}
        write_feature_shards(root / "features", dataset, images, dim=dim)
    return root


def write_tiny_backbone(path, visual_dim: int = FEATURE_DIM, hidden: int = 32, layers: int = 2, heads: int = 2,
                        vocab=VOCAB, seed: int = 0) -> Path:
    """A random tiny BERT turned into a CavlModel folder (save_pretrained + tokenizer), as the
    pretraining stage writes it."""
    import tempfile

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from cavl.model import CavlModel

    path = Path(path)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
        BertModel(cfg).save_pretrained(tmp)
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
        tokenizer.save_pretrained(tmp)
        model = CavlModel.from_bert(tmp, visual_dim)
        model.save_pretrained(path, extra=lambda d: tokenizer.save_pretrained(str(d)))
    return path


def word_tokenizer(vocab=VOCAB):
    """A word-level BERT tokenizer over `vocab` (lower-cased; unknown words → [UNK])."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
