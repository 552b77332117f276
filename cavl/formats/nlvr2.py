"""NLVR2 (``{train,dev,test1}.json``: JSON lines; images ``{split}/…/{stem}.png``).

Official structure of a line: ``identifier`` (``{split}-{set}-{pair}-{sentence}``),
``sentence``, ``label`` (the string ``"True"``/``"False"``), ``left_url``, ``right_url``,
``writer``, ``synset``, ``query``, ``validation``, ``extra_validations`` and, in train,
``directory`` (the numbered subfolder 0–99 holding the pair's images). The two images of
an example are ``{split}-{set}-{pair}-img0.png`` and ``…-img1.png`` (identifier without its
last part, plus ``-img0``/``-img1``).
"""

import os

from ._common import get, image_size, iter_json_lines
from .errors import FormatError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def _label(value, path, rec):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FormatError(path, rec, f"key 'label' must be \"True\" or \"False\", got {value!r}")


def image_stems(identifier):
    """``dev-850-0-0`` → (``dev-850-0-img0``, ``dev-850-0-img1``)."""
    pair = identifier.rsplit("-", 1)[0]
    return f"{pair}-img0", f"{pair}-img1"


def read_split(path):
    """Parse one json-lines file → list of {identifier, sentence, label (bool|None),
    directory (str|None), left, right, _line}."""
    out = []
    for lineno, obj in iter_json_lines(path):
        rec = f"line {lineno}"
        identifier = get(obj, "identifier", str, path, rec)
        rec = f"line {lineno} ({identifier})"
        if len(identifier.split("-")) != 4:
            raise FormatError(path, rec, "identifier must look like "
                                         "'{split}-{set}-{pair}-{sentence}'")
        label = get(obj, "label", (str, bool, type(None)), path, rec, default=None)
        directory = get(obj, "directory", (int, str, type(None)), path, rec, default=None)
        left, right = image_stems(identifier)
        out.append({"_line": lineno, "identifier": identifier,
                    "sentence": get(obj, "sentence", str, path, rec),
                    "label": None if label is None else _label(label, path, rec),
                    "directory": None if directory is None else str(directory),
                    "left": left, "right": right})
    return out


def index_images(folder):
    """{file stem: path} of every image under `folder`, searched recursively (the train
    images sit in numbered subfolders). Sorted walk, so the first path of a stem wins."""
    index = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            base, ext = os.path.splitext(name)
            if ext in IMAGE_EXTENSIONS and not name.startswith("."):
                index.setdefault(base, os.path.join(dirpath, name))
    return index


def _locate(split_folder, directory, stem, index):
    if directory is not None:
        for ext in IMAGE_EXTENSIONS[:3]:
            p = os.path.join(split_folder, directory, stem + ext)
            if os.path.isfile(p):
                return p
    return index.get(stem)


def manifest_rows(splits, image_root):
    """splits: {split name: json-lines path}; images under ``image_root/{split}/``.

    One row per distinct image (left before right, in file order); width and height come
    from the image header.
    """
    rows, seen = [], set()
    for split, path in splits.items():
        split_folder = os.path.join(image_root, split)
        index = index_images(split_folder)
        for r in read_split(path):
            for stem in (r["left"], r["right"]):
                if stem in seen:
                    continue
                image_path = _locate(split_folder, r["directory"], stem, index)
                rec = f"line {r['_line']} ({r['identifier']})"
                if image_path is None:
                    raise FormatError(path, rec, f"image file missing: {stem}.png under "
                                                 f"{split_folder}")
                seen.add(stem)
                width, height = image_size(image_path, path, rec)
                rows.append({"image_id": stem, "path": image_path, "width": width,
                             "height": height, "gt_boxes": [], "gt_box_labels": []})
    return rows


def task_rows(path):
    return [{"identifier": r["identifier"], "sentence": r["sentence"], "label": r["label"],
             "left_image_id": r["left"], "right_image_id": r["right"]}
            for r in read_split(path)]
