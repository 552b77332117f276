"""Visual Genome (``image_data.json``, ``region_descriptions.json``; images in VG_100K[_2]/).

Official structure (older v1.0/1.2 dumps name the image id ``id``; both are accepted):
- image_data.json: ``[{"image_id", "url", "width", "height", "coco_id", "flickr_id"}, …]``; the
  url ends in ``…/VG_100K/{image_id}.jpg`` or ``…/VG_100K_2/{image_id}.jpg``.
- region_descriptions.json: ``[{"id": image_id, "regions": [{"region_id", "image_id",
  "phrase", "x", "y", "width", "height"}, …]}, …]``.
- objects.json (optional; its boxes become the manifest's gt boxes): ``[{"image_id",
  "objects": [{"object_id", "x", "y", "w", "h", "names": [...], "synsets": [...]}, …]}, …]``.
- attributes.json (optional; the detector's attribute labels): as objects.json with
  ``"attributes"`` for ``"objects"``; each object may carry ``"attributes": ["green", …]``.
"""

import os
from urllib.parse import urlparse

from ._common import check_type, get, load_json, missing_image, size_keys
from .errors import FormatError

IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


def _image_id(entry, path, rec):
    older = isinstance(entry, dict) and "image_id" not in entry and "id" in entry
    return get(entry, "id" if older else "image_id", int, path, rec)


def read_image_data(path):
    """Parse image_data.json → list of {image_id:int, url:str|None, width:int, height:int,
    coco_id:int|None, flickr_id:int|None} (the last two: the same picture in COCO / Flickr30k)."""
    data = check_type(load_json(path), list, path, None, "top level")
    out = []
    for i, entry in enumerate(data):
        rec = f"[{i}]"
        out.append({
            "image_id": _image_id(entry, path, rec),
            "url": get(entry, "url", (str, type(None)), path, rec, default=None),
            **size_keys(entry, path, rec),
            "coco_id": get(entry, "coco_id", (int, type(None)), path, rec, default=None),
            "flickr_id": get(entry, "flickr_id", (int, type(None)), path, rec, default=None),
        })
    return out


def images_also_in(image_data_path, coco_ids=(), flickr_ids=()):
    """VG image ids (str) of the pictures that image_data.json marks as COCO images in `coco_ids`
    or Flickr30k images in `flickr_ids` (ids as strings)."""
    coco_ids, flickr_ids = set(map(str, coco_ids)), set(map(str, flickr_ids))
    return {str(im["image_id"]) for im in read_image_data(image_data_path)
            if (im["coco_id"] is not None and str(im["coco_id"]) in coco_ids)
            or (im["flickr_id"] is not None and str(im["flickr_id"]) in flickr_ids)}


def image_candidates(image_root, image_id, url):
    """Where an image may sit in the release layout, most likely first: the url's folder
    (VG_100K or VG_100K_2) and file name, then ``{image_id}.jpg`` in each release folder."""
    candidates = []
    if url:
        parts = urlparse(url).path.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-1]:
            candidates.append(os.path.join(image_root, parts[-2], parts[-1]))
            candidates.extend(os.path.join(image_root, d, parts[-1]) for d in IMAGE_FOLDERS)
    candidates.extend(os.path.join(image_root, d, f"{image_id}.jpg") for d in IMAGE_FOLDERS)
    return list(dict.fromkeys(candidates))


def read_objects(path):
    """Parse objects.json → {image_id: ([[x1, y1, x2, y2], …], [first name, …])}.

    Objects without area are skipped (no region token can stand for them)."""
    data = check_type(load_json(path), list, path, None, "top level")
    out = {}
    for i, entry in enumerate(data):
        rec = f"[{i}]"
        image_id = _image_id(entry, path, rec)
        boxes, labels = out.setdefault(image_id, ([], []))
        for j, obj in enumerate(get(entry, "objects", list, path, rec)):
            orec = f"[{i}].objects[{j}]"
            x, y, w, h = (float(get(obj, k, (int, float), path, orec)) for k in ("x", "y", "w", "h"))
            names = get(obj, "names", list, path, orec, default=None)
            name = get(obj, "name", str, path, orec, default="") if not names else names[0]
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(check_type(name, str, path, orec, "object name"))
    return out


def _string_list(obj, key, path, rec, default):
    values = get(obj, key, (list, type(None)), path, rec, default=default)
    if values is None:
        return []
    for k, v in enumerate(values):
        check_type(v, str, path, f"{rec}.{key}[{k}]", "entry")
    return list(values)


def _object_records(path, list_key):
    """{image_id: [object record]} of objects.json (list_key "objects") or attributes.json
    (list_key "attributes"); see :func:`read_attributes`."""
    data = check_type(load_json(path), list, path, None, "top level")
    out = {}
    for i, entry in enumerate(data):
        rec = f"[{i}]"
        image_id = _image_id(entry, path, rec)
        objs = out.setdefault(image_id, [])
        for j, obj in enumerate(get(entry, list_key, list, path, rec)):
            orec = f"[{i}].{list_key}[{j}]"
            x, y, w, h = (float(get(obj, k, (int, float), path, orec)) for k in ("x", "y", "w", "h"))
            id_key = "object_id" if "object_id" in obj or "id" not in obj else "id"  # older: "id"
            object_id = get(obj, id_key, (int, type(None)), path, orec, default=None)
            names = _string_list(obj, "names", path, orec, default=None)
            if not names and "name" in obj:  # older dumps: one "name"
                names = [get(obj, "name", str, path, orec)]
            objs.append({"object_id": object_id, "box": [x, y, x + w, y + h], "names": names,
                         "attributes": _string_list(obj, "attributes", path, orec, default=None)})
    return out


def read_attributes(path):
    """Parse attributes.json → {image_id: [{"object_id": int | None, "box": [x1, y1, x2, y2],
    "names": [str, …], "attributes": [str, …]}, …]} in file order, entries of one image merged.

    Strings as annotated (extract/vocab.py cleans them); older dumps' ``id`` and ``name`` are
    accepted. Unlike :func:`read_objects`, objects without area are kept."""
    return _object_records(path, "attributes")


def read_object_records(path):
    """objects.json in :func:`read_attributes`'s form (every object and every name, objects
    without area included; ``attributes`` is ``[]`` unless the dump has them)."""
    return _object_records(path, "objects")


def manifest_rows(image_data_path, image_root, objects_path=None, on_missing=None):
    """Manifest rows of image_data.json; with objects.json, its boxes are the gt boxes.
    `on_missing`: as :func:`_common.missing_image`."""
    objects = read_objects(objects_path) if objects_path else {}
    rows, seen = [], set()
    for i, im in enumerate(read_image_data(image_data_path)):
        image_id = str(im["image_id"])
        if image_id in seen:
            raise FormatError(image_data_path, f"[{i}]", f"duplicate image_id {image_id}")
        seen.add(image_id)
        candidates = image_candidates(image_root, im["image_id"], im["url"])
        image_path = next((c for c in candidates if os.path.isfile(c)), None)
        if image_path is None:
            missing_image(on_missing, image_data_path, f"[{i}]", candidates[0], image_id,
                          f"image file missing: no {im['image_id']}.jpg under "
                          f"{image_root}/{{{','.join(IMAGE_FOLDERS)}}}")
            continue
        boxes, labels = objects.get(im["image_id"], ([], []))
        rows.append({"image_id": image_id, "path": image_path, "width": im["width"],
                     "height": im["height"], "gt_boxes": boxes, "gt_box_labels": labels})
    return rows


def read_region_descriptions(path):
    """Parse region_descriptions.json → list of {region_id, image_id (the region's own, else
    the entry's), phrase}; the region box is not needed downstream."""
    data = check_type(load_json(path), list, path, None, "top level")
    out = []
    for i, entry in enumerate(data):
        rec = f"[{i}]"
        regions = get(entry, "regions", list, path, rec)
        entry_image = get(entry, "id", int, path, rec, default=None)
        if entry_image is None:
            entry_image = get(entry, "image_id", int, path, rec, default=None)
        for j, reg in enumerate(regions):
            rrec = f"[{i}].regions[{j}]"
            image_id = get(reg, "image_id", int, path, rrec, default=entry_image)
            if image_id is None:
                raise FormatError(path, rrec, "missing key 'image_id' (and no 'id' on the entry)")
            out.append({
                "region_id": get(reg, "region_id", int, path, rrec),
                "image_id": image_id,
                "phrase": get(reg, "phrase", str, path, rrec).strip(),
            })
    return out


def caption_rows(region_path, image_data_path):
    """Pretraining rows (example_id, dataset, image_id, caption), one per non-empty region
    description; every region's image must be listed in image_data.json."""
    known = {im["image_id"] for im in read_image_data(image_data_path)}
    rows = []
    for k, reg in enumerate(read_region_descriptions(region_path)):
        if reg["image_id"] not in known:
            raise FormatError(region_path, f"region_id {reg['region_id']}",
                              f"image_id {reg['image_id']} is not in "
                              f"{os.path.basename(image_data_path)}")
        if reg["phrase"]:
            rows.append({"example_id": f"vg-{reg['region_id']}", "dataset": "vg",
                         "image_id": str(reg["image_id"]), "caption": reg["phrase"]})
    return rows
