"""VCR v1.0 (``{train,val,test}.jsonl``; ``vcr1images/{movie}/{image}.jpg`` + ``.json``).

Official structure (README of the release):
- each jsonl line: ``annot_id``, ``img_fn``, ``metadata_fn``, ``objects`` (list of names),
  ``question``, ``answer_choices``, ``rationale_choices`` (token lists where a detection
  reference is a list of object indexes, e.g. ``["What", "are", [0, 1], "doing", "?"]``),
  ``answer_label``, ``rationale_label`` (absent in test), plus bookkeeping keys.
- metadata json: ``boxes`` (``[x1, y1, x2, y2, score]`` per object), ``segms``, ``names``,
  ``width``, ``height``.
"""

import json
import os

from ._common import (check_type, get, iter_json_lines, load_json, require_image, size_keys,
                      tables_per_split_file)
from .errors import FormatError


def _check_tokens(tokens, path, rec, what, n_objects):
    check_type(tokens, list, path, rec, what)
    for k, tok in enumerate(tokens):
        if isinstance(tok, list):
            for ref in tok:
                check_type(ref, int, path, rec, f"{what}[{k}] object reference")
                if not 0 <= ref < n_objects:
                    raise FormatError(path, rec, f"{what}[{k}] refers to object {ref}, "
                                                 f"but there are {n_objects} objects")
        else:
            check_type(tok, str, path, rec, f"{what}[{k}]")
    return tokens


def _check_choices(choices, path, rec, what, n_objects):
    for k, c in enumerate(choices):
        _check_tokens(c, path, rec, f"{what}[{k}]", n_objects)
    return choices


def _label(rec_obj, key, n_choices, path, rec):
    value = get(rec_obj, key, (int, type(None)), path, rec, default=None)
    if value is None:
        return -1
    if not 0 <= value < n_choices:
        raise FormatError(path, rec, f"{key} {value} is out of range for {n_choices} choices")
    return value


def read_split(path):
    """Parse one jsonl file → list of records (validated; line number in ``_line``)."""
    out, seen = [], set()
    for lineno, obj in iter_json_lines(path):
        rec = f"line {lineno}"
        annot_id = get(obj, "annot_id", str, path, rec)
        rec = f"line {lineno} ({annot_id})"
        if annot_id in seen:
            raise FormatError(path, rec, f"duplicate annot_id {annot_id}")
        seen.add(annot_id)
        objects = get(obj, "objects", list, path, rec)
        for k, name in enumerate(objects):
            check_type(name, str, path, rec, f"objects[{k}]")
        question = _check_tokens(get(obj, "question", list, path, rec), path, rec,
                                 "question", len(objects))
        answers = _check_choices(get(obj, "answer_choices", list, path, rec), path, rec,
                                 "answer_choices", len(objects))
        rationales = _check_choices(get(obj, "rationale_choices", list, path, rec), path, rec,
                                    "rationale_choices", len(objects))
        out.append({
            "_line": lineno,
            "annot_id": annot_id,
            "img_fn": get(obj, "img_fn", str, path, rec),
            "metadata_fn": get(obj, "metadata_fn", str, path, rec),
            "objects": objects,
            "question": question,
            "answer_choices": answers,
            "rationale_choices": rationales,
            "answer_label": _label(obj, "answer_label", len(answers), path, rec),
            "rationale_label": _label(obj, "rationale_label", len(rationales), path, rec),
        })
    return out


def image_id_of(img_fn):
    """``movie/clip@0.jpg`` → ``movie/clip@0``."""
    return os.path.splitext(img_fn)[0]


def read_metadata(path):
    """Per-image metadata json → {boxes: [[x1,y1,x2,y2]] (score dropped), names (None when
    the file has none), width, height}."""
    meta = check_type(load_json(path), dict, path, None, "top level")
    boxes = []
    for k, box in enumerate(get(meta, "boxes", list, path, None)):
        rec = f"boxes[{k}]"
        check_type(box, list, path, rec, "box")
        if len(box) not in (4, 5):
            raise FormatError(path, rec, f"box must have 5 values [x1, y1, x2, y2, score], "
                                         f"got {len(box)}")
        for v in box:
            check_type(v, float, path, rec, "box value")
        boxes.append([float(v) for v in box[:4]])
    names = get(meta, "names", list, path, None, default=None)
    if names is not None:
        for k, n in enumerate(names):
            check_type(n, str, path, f"names[{k}]", "name")
        if len(names) != len(boxes):
            raise FormatError(path, None, f"{len(names)} names for {len(boxes)} boxes")
    return {"boxes": boxes, "names": names, **size_keys(meta, path, None)}


def manifest_rows(split_paths, image_root, on_missing=None):
    """One row per distinct img_fn over the given jsonl files (first occurrence order).
    `on_missing`: as :func:`_common.missing_image`; a missing metadata json is a FormatError."""
    rows, seen = [], set()
    for jsonl in split_paths:
        for r in read_split(jsonl):
            image_id = image_id_of(r["img_fn"])
            if image_id in seen:
                continue
            seen.add(image_id)
            rec = f"line {r['_line']} ({r['annot_id']})"
            image_path = os.path.join(image_root, r["img_fn"])
            if require_image(image_path, jsonl, rec, image_id, on_missing) is None:
                continue
            meta_path = os.path.join(image_root, r["metadata_fn"])
            if not os.path.isfile(meta_path):
                raise FormatError(jsonl, rec, f"metadata file missing: {meta_path}")
            meta = read_metadata(meta_path)
            names = meta["names"]
            if names is None:
                names = r["objects"]
                if len(names) != len(meta["boxes"]):
                    raise FormatError(meta_path, None,
                                      f"no 'names' and {len(meta['boxes'])} boxes for "
                                      f"{len(names)} objects of {jsonl} {rec}")
            rows.append({"image_id": image_id, "path": image_path, "width": meta["width"],
                         "height": meta["height"], "gt_boxes": meta["boxes"],
                         "gt_box_labels": list(names)})
    return rows


def _dumps(tokens):
    return json.dumps(tokens, ensure_ascii=False)


def task_rows(jsonl):
    return [{"annot_id": r["annot_id"], "image_id": image_id_of(r["img_fn"]),
             "question": _dumps(r["question"]), "answer_choices": _dumps(r["answer_choices"]),
             "rationale_choices": _dumps(r["rationale_choices"]),
             "answer_label": r["answer_label"], "rationale_label": r["rationale_label"],
             "objects": r["objects"]}
            for r in read_split(jsonl)]


def task_tables(spec, splits, where="datasets.vcr"):
    """{split: task_rows} of the vcr task's tables, from config `datasets.vcr` (`spec`): one
    file per split (cavl.tasks.REGISTRY's reader)."""
    return tables_per_split_file(spec, splits, where, task_rows)
