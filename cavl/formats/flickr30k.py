"""Flickr30k: Karpathy split json and Flickr30k Entities (Sentences/, Annotations/, lists).

Official structures:
- ``dataset_flickr30k.json`` (Karpathy): ``{"dataset": "flickr30k", "images": [{"filename",
  "imgid", "split" (train/val/test), "sentids", "sentences": [{"raw", "tokens", "imgid",
  "sentid"}]}]}``.
- ``Sentences/{id}.txt``: one caption per line, annotated phrases written
  ``[/EN#{entity}/{type}[/{type}…] words of the phrase]``; entity 0 / type ``notvisual``
  marks phrases without a box.
- ``Annotations/{id}.xml``: PASCAL-VOC style; ``<size><width/><height/><depth/></size>``
  and ``<object>`` elements with one or more ``<name>`` (entity ids) and either a
  ``<bndbox>`` (1-based xmin/ymin/xmax/ymax) or ``<nobndbox>``/``<scene>`` flags.
- ``{train,val,test}.txt``: one image id per line.
"""

import os
import re
import xml.etree.ElementTree as ET

from ._common import (check_type, get, image_size, load_json, missing_image, read_text_lines,
                      require_image, spec_get, stem)
from .errors import FormatError

KARPATHY_SPLITS = ("train", "val", "test")
# Karpathy's json for COCO also has "restval" (used for training).
_SPLIT_ALIASES = {"restval": "train"}

_HEADER = re.compile(r"^\[/EN#(\d+)((?:/[^/\s\[\]]+)+)$")


# ---------------------------------------------------------------- Karpathy split json
def read_karpathy(path):
    """→ list of {image_id (file stem), filename, split, sentences: [(sentid, raw)]}."""
    data = check_type(load_json(path), dict, path, None, "top level")
    out, seen = [], set()
    for i, im in enumerate(get(data, "images", list, path, None)):
        rec = f"images[{i}]"
        filename = get(im, "filename", str, path, rec)
        split = get(im, "split", str, path, rec)
        split = _SPLIT_ALIASES.get(split, split)
        if split not in KARPATHY_SPLITS:
            raise FormatError(path, rec, f"unknown split {split!r}")
        image_id = stem(filename)
        if image_id in seen:
            raise FormatError(path, rec, f"duplicate image {filename}")
        seen.add(image_id)
        sentences = []
        for j, s in enumerate(get(im, "sentences", list, path, rec)):
            srec = f"{rec}.sentences[{j}]"
            sentences.append((get(s, "sentid", int, path, srec),
                              get(s, "raw", str, path, srec).strip()))
        out.append({"image_id": image_id, "filename": filename, "split": split,
                    "sentences": sentences})
    return out


# ---------------------------------------------------------------- Entities sentences
def parse_sentence(line, path=None, record=None):
    """Parse one annotated caption as the official ``get_sentence_data`` does → (plain sentence,
    phrases [{phrase, entity_id, phrase_types, first_word_index (in the plain sentence's
    words)}]). Bracket syntax errors raise FormatError.
    """
    words, phrases = [], []
    current = None  # the phrase being read
    for token in line.split():
        if current is not None:
            if token.startswith("["):
                raise FormatError(path, record, f"'[' inside the phrase opened at word "
                                                f"{current['first_word_index']} "
                                                f"(missing ']')")
            word = token.removesuffix("]")
            if "]" in word:
                raise FormatError(path, record, f"unexpected ']' in {token!r}")
            phrase_words.append(word)
            words.append(word)
            if word != token:
                current["phrase"] = " ".join(phrase_words)
                phrases.append(current)
                current = None
        elif token.startswith("["):
            m = _HEADER.match(token)
            if not m:
                raise FormatError(path, record, f"malformed phrase header {token!r} "
                                                f"(expected '[/EN#<id>/<type>')")
            current = {"phrase": None, "entity_id": m.group(1),
                       "phrase_types": m.group(2).split("/")[1:], "first_word_index": len(words)}
            phrase_words = []
        elif "]" in token or "[" in token:
            raise FormatError(path, record, f"unexpected bracket in {token!r} outside a phrase")
        else:
            words.append(token)
    if current is not None:
        raise FormatError(path, record, f"phrase [/EN#{current['entity_id']}/… opened at word "
                                        f"{current['first_word_index']} is never closed")
    return " ".join(words), phrases


def read_sentences(path):
    """Parse ``Sentences/{id}.txt`` → [(plain sentence, phrases)], one per non-empty line."""
    return [parse_sentence(line, path, f"line {lineno}")
            for lineno, line in enumerate(read_text_lines(path), start=1) if line.strip()]


# ---------------------------------------------------------------- Entities annotations
def _int_text(elem, tag, path, rec):
    child = elem.find(tag)
    if child is None:
        raise FormatError(path, rec, f"missing <{tag}>")
    try:
        return int(float((child.text or "").strip()))
    except ValueError:
        raise FormatError(path, rec, f"<{tag}> must be a number, got {child.text!r}") from None


def read_annotation(path):
    """Parse ``Annotations/{id}.xml`` → {width, height, boxes: [(entity_id, [x1,y1,x2,y2])]
    in document order, nobox: [entity ids], scene: [entity ids]}. Corners are made 0-based
    (minus 1) as the official ``get_annotations``; an object with several <name>s gives its box
    to each."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FormatError(path, None, "file not found") from None
    except ET.ParseError as e:
        line, col = e.position
        raise FormatError(path, f"line {line} column {col + 1}", f"invalid XML: {e}") from None
    size = root.find("size")
    if size is None:
        raise FormatError(path, None, "missing <size>")
    out = {"width": _int_text(size, "width", path, "<size>"),
           "height": _int_text(size, "height", path, "<size>"),
           "boxes": [], "nobox": [], "scene": []}
    for k, obj in enumerate(root.findall("object")):
        rec = f"object {k}"
        names = [(n.text or "").strip() for n in obj.findall("name")]
        if not names or not all(names):
            raise FormatError(path, rec, "missing <name> (entity id)")
        bndbox = obj.find("bndbox")
        if bndbox is not None:
            box = [float(_int_text(bndbox, t, path, rec) - 1)
                   for t in ("xmin", "ymin", "xmax", "ymax")]
            out["boxes"].extend((name, box) for name in names)
        else:
            nobox = obj.find("nobndbox")
            scene = obj.find("scene")
            if nobox is None and scene is None:
                raise FormatError(path, rec, "object has neither <bndbox> nor <nobndbox>/<scene>")
            if nobox is not None and _int_text(obj, "nobndbox", path, rec) > 0:
                out["nobox"].extend(names)
            if scene is not None and _int_text(obj, "scene", path, rec) > 0:
                out["scene"].extend(names)
    return out


def read_split_list(path):
    """``{train,val,test}.txt`` → image ids, one per non-empty line."""
    return [line.strip() for line in read_text_lines(path) if line.strip()]


def _find_image(image_root, image_id):
    paths = (os.path.join(image_root, image_id + ext) for ext in (".jpg", ".jpeg", ".png", ".JPG"))
    return next((p for p in paths if os.path.isfile(p)), None)


# ---------------------------------------------------------------- outputs
def manifest_rows(karpathy_path, image_root, entities_root, on_missing=None):
    """One row per Karpathy image, then per image of the Entities split lists not in it; gt
    boxes (labelled with their entity id) and size from the Entities xml where one exists, else
    no boxes and the header's size. `on_missing`: as :func:`_common.missing_image`."""
    entries = [(im["image_id"], im["filename"], karpathy_path, f"images[{i}]")
               for i, im in enumerate(read_karpathy(karpathy_path))]
    seen = {e[0] for e in entries}
    for split in KARPATHY_SPLITS:
        list_path = os.path.join(entities_root, f"{split}.txt")
        if not os.path.isfile(list_path):
            continue
        for k, image_id in enumerate(read_split_list(list_path)):
            if image_id not in seen:
                seen.add(image_id)
                entries.append((image_id, None, list_path, f"line {k + 1}"))

    rows = []
    for image_id, filename, src, rec in entries:
        if filename is not None:
            image_path = require_image(os.path.join(image_root, filename), src, rec, image_id, on_missing)
            if image_path is None:
                continue
        else:
            image_path = _find_image(image_root, image_id)
            if image_path is None:
                missing_image(on_missing, src, rec, os.path.join(image_root, f"{image_id}.jpg"),
                              image_id, f"image file missing: {image_id}.jpg under {image_root}")
                continue
        xml_path = os.path.join(entities_root, "Annotations", f"{image_id}.xml")
        if os.path.isfile(xml_path):
            ann = read_annotation(xml_path)
            width, height = ann["width"], ann["height"]
            boxes = [b for _, b in ann["boxes"]]
            labels = [name for name, _ in ann["boxes"]]
        else:
            size = image_size(image_path, src, rec, image_id, on_missing)
            if size is None:
                continue
            width, height = size
            boxes, labels = [], []
        rows.append({"image_id": image_id, "path": image_path, "width": width,
                     "height": height, "gt_boxes": boxes, "gt_box_labels": labels})
    return rows


def rpg_rows(entities_root, split):
    """Phrase-grounding rows of one Entities split, one per annotated phrase; gt_boxes: every box
    of the phrase's entity in that image (empty for entity 0 and entities with no box)."""
    list_path = os.path.join(entities_root, f"{split}.txt")
    rows = []
    for image_id in read_split_list(list_path):
        sentences = read_sentences(os.path.join(entities_root, "Sentences", f"{image_id}.txt"))
        ann = read_annotation(os.path.join(entities_root, "Annotations", f"{image_id}.xml"))
        boxes = {}
        for name, box in ann["boxes"]:
            boxes.setdefault(name, []).append(box)
        for s_index, (sentence, phrases) in enumerate(sentences):
            for p in phrases:
                rows.append({"image_id": image_id, "sentence_index": s_index,
                             "sentence": sentence, "phrase": p["phrase"],
                             "phrase_types": p["phrase_types"], "entity_id": p["entity_id"],
                             "first_word_index": p["first_word_index"],
                             "gt_boxes": [] if p["entity_id"] == "0"
                             else boxes.get(p["entity_id"], [])})
    return rows


def tir_rows(karpathy_path):
    """→ {split: rows (image_id, sentence_id, caption)} for train/val/test."""
    out = {s: [] for s in KARPATHY_SPLITS}
    for im in read_karpathy(karpathy_path):
        for sentid, raw in im["sentences"]:
            out[im["split"]].append({"image_id": im["image_id"], "sentence_id": sentid,
                                     "caption": raw})
    return out


def rpg_tables(spec, splits, where="datasets.flickr30k"):
    """{split: rpg_rows} of the rpg task's tables, from config `datasets.flickr30k` (`spec`):
    its `entities_root` (cavl.tasks.REGISTRY's reader)."""
    root = spec_get(spec, "entities_root", where, str)
    return {split: rpg_rows(root, split) for split in splits}


def tir_tables(spec, splits, where="datasets.flickr30k"):
    """{split: tir_rows} of the tir task's tables, from config `datasets.flickr30k` (`spec`):
    its `karpathy_split` (cavl.tasks.REGISTRY's reader)."""
    rows = tir_rows(spec_get(spec, "karpathy_split", where, str))
    return {split: rows[split] for split in splits}
