"""COCO captions (``captions_{train,val}2014.json``) and, optionally, object instances
(``instances_{train,val}2014.json``), whose boxes become the manifest's ground-truth boxes.

Official structure: ``{"info", "licenses", "images": [{"id", "file_name", "width", "height",
…}], "annotations": [{"id", "image_id", "caption"}]}``; instances files have the same
``images`` and ``annotations: [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
"area", "iscrowd", "segmentation"}]`` plus ``categories: [{"id", "name", "supercategory"}]``.
"""

import os

from ._common import check_type, get, load_json, require_image, size_keys
from .errors import FormatError


def read_captions(path):
    """Parse one captions file → (images [{id, file_name, width, height}], annotations [{id,
    image_id, caption (stripped)}]), in file order."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise FormatError(path, None, "top level must be a JSON object")
    raw_images = get(data, "images", list, path, None)
    raw_anns = get(data, "annotations", list, path, None)

    images, known = [], set()
    for i, im in enumerate(raw_images):
        rec = f"images[{i}]"
        image_id = get(im, "id", int, path, rec)
        if image_id in known:
            raise FormatError(path, rec, f"duplicate image id {image_id}")
        images.append({
            "id": image_id,
            "file_name": get(im, "file_name", str, path, rec), **size_keys(im, path, rec),
        })
        known.add(image_id)

    annotations = []
    for i, ann in enumerate(raw_anns):
        rec = f"annotations[{i}]"
        image_id = get(ann, "image_id", int, path, rec)
        if image_id not in known:
            raise FormatError(path, rec, f"image_id {image_id} is not in 'images'")
        annotations.append({
            "id": get(ann, "id", int, path, rec),
            "image_id": image_id,
            "caption": get(ann, "caption", str, path, rec).strip(),
        })
    return images, annotations


def read_instances(path):
    """Parse one instances file → {image_id: ([[x1, y1, x2, y2], …], [category name, …])} in
    file order; crowd regions and boxes without area (not objects a region token could stand
    for) are skipped."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise FormatError(path, None, "top level must be a JSON object")
    names = {get(cat, "id", int, path, f"categories[{i}]"): get(cat, "name", str, path, f"categories[{i}]")
             for i, cat in enumerate(get(data, "categories", list, path, None))}
    known = {get(im, "id", int, path, f"images[{i}]")
             for i, im in enumerate(get(data, "images", list, path, None))}
    boxes = {}
    for i, ann in enumerate(get(data, "annotations", list, path, None)):
        rec = f"annotations[{i}]"
        image_id = get(ann, "image_id", int, path, rec)
        if image_id not in known:
            raise FormatError(path, rec, f"image_id {image_id} is not in 'images'")
        category = get(ann, "category_id", int, path, rec)
        if category not in names:
            raise FormatError(path, rec, f"category_id {category} is not in 'categories'")
        bbox = get(ann, "bbox", list, path, rec)
        if len(bbox) != 4:
            raise FormatError(path, rec, f"bbox must be [x, y, width, height], got {len(bbox)} numbers")
        x, y, w, h = (float(check_type(v, (int, float), path, rec, "bbox value")) for v in bbox)
        if get(ann, "iscrowd", int, path, rec, default=0) or w <= 0 or h <= 0:
            continue
        entry = boxes.setdefault(image_id, ([], []))
        entry[0].append([x, y, x + w, y + h])
        entry[1].append(names[category])
    return boxes


def manifest_rows(splits, on_missing=None):
    """Manifest rows for every image of `splits` (first occurrence of an id wins): (captions
    json, image folder, instances json or None) triples; the instances' boxes are the gt boxes.
    `on_missing`: as :func:`_common.missing_image`."""
    rows, seen = [], set()
    for ann_path, image_dir, instances_path in splits:
        images, _ = read_captions(ann_path)
        instances = read_instances(instances_path) if instances_path else {}
        for i, im in enumerate(images):
            image_id = str(im["id"])
            if image_id in seen:
                continue
            seen.add(image_id)
            image_path = os.path.join(image_dir, im["file_name"])
            if require_image(image_path, ann_path, f"images[{i}]", image_id, on_missing) is None:
                continue
            boxes, labels = instances.get(im["id"], ([], []))
            rows.append({"image_id": image_id, "path": image_path, "width": im["width"],
                         "height": im["height"], "gt_boxes": boxes, "gt_box_labels": labels})
    return rows


def caption_rows(ann_path):
    """Pretraining rows (example_id, dataset, image_id, caption) of one captions file."""
    _, annotations = read_captions(ann_path)
    return [{"example_id": f"coco-{a['id']}", "dataset": "coco",
             "image_id": str(a["image_id"]), "caption": a["caption"]}
            for a in annotations if a["caption"]]
