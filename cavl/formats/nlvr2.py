"""NLVR2 (``{train,dev,test1}.json``: JSON lines; images ``{stem}.png`` in one folder per split).

A line has ``identifier`` (``{split}-{set}-{pair}-{sentence}``), ``sentence``, ``label``
(``"True"``/``"False"``), bookkeeping keys and, in train, ``directory`` (the numbered subfolder
0–99 of the pair's images). An example's images are ``{split}-{set}-{pair}-img0.png`` and
``…-img1.png``. The release unpacks train under ``images/train/{0..99}/`` but dev and test1
beside ``images/``, so ``image_root`` is a mapping split → folder or one folder holding
``{split}/`` per split (:func:`split_image_folders`).
"""

import os

from ._common import get, image_size, iter_json_lines, missing_image, tables_per_split_file
from .errors import FormatError, SpecError

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
    out, seen = [], set()
    for lineno, obj in iter_json_lines(path):
        rec = f"line {lineno}"
        identifier = get(obj, "identifier", str, path, rec)
        rec = f"line {lineno} ({identifier})"
        if identifier in seen:
            raise FormatError(path, rec, f"duplicate identifier {identifier}")
        seen.add(identifier)
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
    """{stem: path} of every image under `folder`, recursively; sorted walk, first path wins."""
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


def split_image_folders(splits, image_root, where="datasets.nlvr2.image_root"):
    """{split: (folder of its images, its config key)} for every split of `splits`, from
    `image_root`: one folder holding ``{split}/`` per split, or a mapping split → folder."""
    if isinstance(image_root, (str, os.PathLike)):
        folders = {split: (os.path.join(image_root, split), where) for split in splits}
    elif isinstance(image_root, dict):
        folders = {}
        for split in splits:
            folder = image_root.get(split)
            if folder is None:
                raise SpecError(f"{where}.{split}: no image folder for split {split!r} "
                                f"(the mapping names {', '.join(map(str, image_root)) or 'none'})")
            if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder):
                raise SpecError(f"{where}.{split}: must be a folder path, "
                                f"got {type(folder).__name__}")
            folders[split] = (os.fspath(folder), f"{where}.{split}")
    else:
        raise SpecError(f"{where}: must be a folder path or a mapping split → folder, "
                        f"got {type(image_root).__name__}")
    return folders


def manifest_rows(splits, image_root, on_missing=None):
    """One row per distinct image (left before right, in file order) of `splits` ({split:
    json-lines path}); size from the image header. `on_missing`: as :func:`_common.missing_image`.
    """
    folders = split_image_folders(splits, image_root)
    rows, seen = [], set()
    for split, path in splits.items():
        split_folder, key = folders[split]
        records = read_split(path)
        if records and not os.path.isdir(split_folder):  # an empty split needs no folder
            raise SpecError(f"{key}: image folder of split {split!r} not found: {split_folder}")
        index = index_images(split_folder)
        for r in records:
            for stem in (r["left"], r["right"]):
                if stem in seen:
                    continue
                seen.add(stem)  # reported once when missing: four statements share a pair
                image_path = _locate(split_folder, r["directory"], stem, index)
                rec = f"line {r['_line']} ({r['identifier']})"
                if image_path is None:
                    expected = os.path.join(split_folder, *([r["directory"]] if r["directory"]
                                                            else []), stem + ".png")
                    missing_image(on_missing, path, rec, expected, stem,
                                  f"image file missing: {stem}.png under {split_folder}")
                    continue
                size = image_size(image_path, path, rec, stem, on_missing)
                if size is None:
                    continue
                rows.append({"image_id": stem, "path": image_path, "width": size[0],
                             "height": size[1], "gt_boxes": [], "gt_box_labels": []})
    return rows


def task_rows(path):
    return [{"identifier": r["identifier"], "sentence": r["sentence"], "label": r["label"],
             "left_image_id": r["left"], "right_image_id": r["right"]}
            for r in read_split(path)]


def task_tables(spec, splits, where="datasets.nlvr2"):
    """{split: task_rows} of the nlvr2 task's tables, from config `datasets.nlvr2` (`spec`): one
    file per split (cavl.tasks.REGISTRY's reader)."""
    return tables_per_split_file(spec, splits, where, task_rows)
