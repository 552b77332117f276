"""VCR v1.0 (``vcr/{train,val}.jsonl`` and ``vcr/vcr1images/lsmdc_{movie}/{clip}.jpg`` with
the per-image metadata ``{clip}.json``)."""

import math
import os

from .files import rel, split_counts, write_json_atomic, write_jsonl_atomic
from .language import vcr_items, vcr_text
from .scenes import outline, public, save_image

SPLITS = ("train", "val")
IMAGES_PER_MOVIE = 4
TITLES = ("SHAPES_OF_THINGS", "RED_CIRCLE", "THE_BLUE_SQUARE", "STAR_STRUCK", "TRIANGLE_TALES",
          "COLOR_FIELD", "GEOMETRY_NIGHT", "ORANGE_SKY")


def _metadata(scene, rng):
    objs = scene["objects"]
    return {"boxes": [[float(v) for v in o["bbox"]] + [round(rng.uniform(0.9, 1.0), 4)]
                      for o in objs],
            "segms": [[[[round(x, 1), round(y, 1)] for x, y in outline(o)]] for o in objs],
            "names": [o["shape"] for o in objs],
            "width": scene["width"], "height": scene["height"]}


def _match(label, own, rng, total):
    """(match_iter, sources): 0 / this annotation at the right answer, others elsewhere."""
    order = [1, 2, 3]
    rng.shuffle(order)
    match_iter = order[:label] + [0] + order[label:]
    sources = [own if k == label else rng.randrange(total + 5000) for k in range(4)]
    return match_iter, sources


def write(out_dir, rng, count, image_size, variant):
    """→ (scenes.json entries, summary line)."""
    n_movies = math.ceil(count / IMAGES_PER_MOVIE)
    n_train_m, n_val_m = split_counts(n_movies, (0.75, 0.25)) if n_movies >= 2 else (n_movies, 0)
    root = os.path.join(out_dir, "vcr", "vcr1images")
    entries, images = {}, {s: [] for s in SPLITS}
    for m in range(n_movies):
        split = "train" if m < n_train_m else "val"
        movie = f"{1001 + m}_{TITLES[m % len(TITLES)]}"
        for c in range(min(IMAGES_PER_MOVIE, count - m * IMAGES_PER_MOVIE)):
            stem = f"lsmdc_{movie}/{movie}_00.{c:02d}.10.250-00.{c:02d}.13.750@{rng.randint(0, 3)}"
            scene = variant.scene(rng, image_size, vcr=True)
            path = os.path.join(root, stem + ".jpg")
            save_image(scene, path, variant.colors)
            write_json_atomic(_metadata(scene, rng), os.path.join(root, stem + ".json"))
            images[split].append((movie, stem, scene))
            entries[stem] = dict(file=rel(path, out_dir), **public(scene))
    n_annots = 0
    for split in SPLITS:
        records = []
        for img_idx, (movie, stem, scene) in enumerate(images[split]):
            for qn, item in enumerate(vcr_items(scene, rng, variant.colors)):
                idx = len(records)
                a_iter, a_src = _match(item["answer_label"], idx, rng, 4 * len(images[split]))
                r_iter, r_src = _match(item["rationale_label"], idx, rng, 4 * len(images[split]))
                answers, rationales = item["answer_choices"], item["rationale_choices"]
                records.append({
                    "movie": movie, "objects": [o["shape"] for o in scene["objects"]],
                    "interesting_scores": [rng.choice((-1, 0, 0, 1))],
                    "answer_likelihood": rng.choice(("likely", "possible", "unlikely")),
                    "img_fn": stem + ".jpg", "metadata_fn": stem + ".json",
                    "answer_orig": vcr_text(answers[item["answer_label"]]),
                    "question_orig": vcr_text(item["question"]),
                    "rationale_orig": vcr_text(rationales[item["rationale_label"]]),
                    "question": item["question"],
                    "answer_match_iter": a_iter, "answer_sources": a_src,
                    "answer_choices": answers, "answer_label": item["answer_label"],
                    "rationale_choices": rationales,
                    "rationale_sources": r_src, "rationale_match_iter": r_iter,
                    "rationale_label": item["rationale_label"],
                    "img_id": f"{split}-{img_idx}", "question_number": qn,
                    "annot_id": f"{split}-{idx}", "match_fold": f"{split}-{idx % 2}",
                    "match_index": idx})
        n_annots += len(records)
        write_jsonl_atomic(records, os.path.join(out_dir, "vcr", f"{split}.jsonl"))
    return entries, (f"vcr: {len(images['train'])} train + {len(images['val'])} val images "
                     f"({n_movies} movies), {n_annots} questions → {os.path.join(out_dir, 'vcr')}")
