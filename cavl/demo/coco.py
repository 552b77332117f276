"""COCO 2014 captions and object instances (``coco/annotations/captions_{train,val}2014.json``,
``instances_{train,val}2014.json``) + images."""

import os

from .files import rel, split_counts, write_json_atomic
from .language import captions, plain
from .scenes import SHAPES, public, save_image

SPLITS = ("train", "val")
HOST = "https://example.invalid"
INFO = {"description": "CAVL embedded demo: synthetic scenes in the COCO 2014 captions format",
        "url": f"{HOST}/cavl-demo", "version": "1.0", "year": 2014,
        "contributor": "cavl.demo", "date_created": "2015-01-27 09:11:52.357475"}
LICENSES = [{"url": f"{HOST}/licenses/{k}", "id": k, "name": f"Demo license {k}"}
            for k in range(1, 9)]


# Instances: one category per shape (the colour is an attribute, as in COCO's noun categories).
CATEGORIES = [{"supercategory": "shape", "id": k, "name": name} for k, name in enumerate(SHAPES, 1)]


def instances(doc, scenes):
    """The instances file of one split: the captions file's images + a box per scene object.
    Annotation ids derive from the image id (no draw from the rng: the other files stay as they were)."""
    anns = []
    for image_id, scene in scenes:
        for k, obj in enumerate(scene["objects"]):
            x1, y1, x2, y2 = obj["bbox"]
            anns.append({"segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0, "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "category_id": SHAPES.index(obj["shape"]) + 1, "id": image_id * 100 + k})
    return {"info": doc["info"], "images": doc["images"], "licenses": doc["licenses"],
            "annotations": anns, "categories": CATEGORIES}


def file_name(split, image_id):
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def write(out_dir, rng, count, image_size, variant):
    """→ ({split: [(image_id, scene)]}, scenes.json entries, summary line)."""
    n_train, n_val = split_counts(count, (0.8, 0.2))
    ids = rng.sample(range(1, 581930), count)
    by_split = {"train": ids[:n_train], "val": ids[n_train:]}
    images, entries = {s: [] for s in SPLITS}, {}
    for split in SPLITS:
        for image_id in by_split[split]:
            scene = variant.scene(rng, image_size)
            path = os.path.join(out_dir, "coco", f"{split}2014", file_name(split, image_id))
            save_image(scene, path, variant.colors)
            images[split].append((image_id, scene))
            entries[str(image_id)] = dict(file=rel(path, out_dir), **public(scene))
    ann_ids = iter(rng.sample(range(1, 830000), 5 * count))  # five captions per image
    for split in SPLITS:
        doc = {"info": INFO, "images": [], "licenses": LICENSES, "annotations": []}
        for image_id, scene in images[split]:
            name = file_name(split, image_id)
            doc["images"].append({
                "license": rng.randint(1, 8), "file_name": name,
                "coco_url": f"{HOST}/coco/{split}2014/{name}",
                "height": scene["height"], "width": scene["width"],
                "date_captured": f"2013-11-{rng.randint(14, 25)} {rng.randint(0, 23):02d}:"
                                 f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
                "flickr_url": f"{HOST}/flickr/{image_id}.jpg", "id": image_id})
            doc["annotations"] += [{"image_id": image_id, "id": next(ann_ids), "caption": plain(s)}
                                   for s in captions(scene, rng, 5)]
        write_json_atomic(doc, os.path.join(out_dir, "coco", "annotations",
                                            f"captions_{split}2014.json"))
        write_json_atomic(instances(doc, images[split]),
                          os.path.join(out_dir, "coco", "annotations", f"instances_{split}2014.json"))
    summary = (f"coco: {n_train} train + {n_val} val images, {5 * count} captions "
               f"→ {os.path.join(out_dir, 'coco')}")
    return images, entries, summary
