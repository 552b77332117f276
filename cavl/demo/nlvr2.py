"""NLVR2 (``nlvr2/{train,dev,test1}.json`` json-lines; images
``nlvr2/images/train/{directory}/``, ``nlvr2/images/dev/``, ``nlvr2/images/test1/`` named
``{split}-{set}-{pair}-img0.png`` / ``-img1.png``)."""

import math
import os
import random

from .files import rel, split_counts, write_jsonl_atomic
from .language import nlvr2_sentences
from .scenes import SHAPES, public, save_image

SPLITS = ("train", "dev", "test1")
PAIRS_PER_SET = 4
SENTENCES_PER_SET = 8
URL = "https://example.invalid/nlvr2/{}.png"


def write(out_dir, rng, count, image_size, variant):
    """count images → count // 2 pairs in sets of 4, eight statements per set (those whose
    labels over the set's pairs are the most mixed). → (scenes.json entries, summary)."""
    n_pairs = count // 2
    n_sets = math.ceil(n_pairs / PAIRS_PER_SET)
    set_splits = [s for s, n in zip(SPLITS, split_counts(n_sets, (0.6, 0.2, 0.2))) for _ in range(n)]
    set_ids = rng.sample(range(1, 11000), n_sets)
    text_rng = random.Random(rng.getrandbits(64))  # statements draw apart: the images do not depend on them
    entries, records = {}, {s: [] for s in SPLITS}
    for g, (split, set_id) in enumerate(zip(set_splits, set_ids)):
        theme = (rng.choice(SHAPES), rng.choice(sorted(variant.colors)))
        query = f"{theme[1]} {theme[0]}s{rng.randint(1, 30)}"
        pairs, names = [], []
        for pair_id in range(min(PAIRS_PER_SET, n_pairs - g * PAIRS_PER_SET)):
            directory = rng.randrange(100) if split == "train" else None
            folder = os.path.join(out_dir, "nlvr2", "images", split,
                                  *([str(directory)] if directory is not None else []))
            stems = [f"{split}-{set_id}-{pair_id}-img{side}" for side in (0, 1)]
            pair = []
            for stem in stems:
                scene = variant.scene(rng, image_size, required=theme if rng.random() < 0.6 else None)
                path = os.path.join(folder, stem + ".png")
                save_image(scene, path, variant.colors)
                entries[stem] = dict(file=rel(path, out_dir), **public(scene))
                pair.append(scene)
            pairs.append(tuple(pair))
            names.append((stems, directory))
        sentences = nlvr2_sentences(pairs, text_rng, SENTENCES_PER_SET)
        for sentence_id, (sentence, labels) in enumerate(sentences):
            writer = str(text_rng.randint(0, 160))
            for pair_id, ((stems, directory), label) in enumerate(zip(names, labels)):
                label = "True" if label else "False"
                rec = {"validation": {str(text_rng.randint(0, 160)): label},
                       "sentence": sentence, "left_url": URL.format(stems[0]),
                       "writer": writer, "label": label, "right_url": URL.format(stems[1]),
                       "synset": theme[0], "query": query,
                       "identifier": f"{split}-{set_id}-{pair_id}-{sentence_id}"}
                if directory is not None:
                    rec["directory"] = directory
                else:
                    rec["extra_validations"] = {str(w): label for w in
                                                sorted(text_rng.sample(range(161), 4))}
                records[split].append(rec)
    for split in SPLITS:
        write_jsonl_atomic(records[split], os.path.join(out_dir, "nlvr2", f"{split}.json"))
    counts = ", ".join(f"{len(records[s])} {s}" for s in SPLITS)
    labels = [r["label"] for s in SPLITS for r in records[s]]
    return entries, (f"nlvr2: {2 * n_pairs} images ({n_sets} sets), examples {counts} "
                     f"({labels.count('True')}/{len(labels)} True) → {os.path.join(out_dir, 'nlvr2')}")
