"""Own images: the manifest of a folder of the user's images (config ``datasets.images.NAME``).

An entry names a ``root`` folder and which files in it to take, one of:

- ``glob``: a pattern relative to ``root`` (``**`` crosses folders); left out, every file under
  ``root`` with an extension of :data:`IMAGE_EXTENSIONS` (any letter case). Hidden files and
  folders are passed over, as Python's glob does.
- ``list``: a text file, one image path relative to ``root`` per line (blank lines and ``#``
  lines ignored). A listed file not on disk is a missing image (``missing_images``).

Rows: ``image_id`` = the POSIX path relative to ``root`` with its extension, ``path``,
``width`` / ``height`` from the header with the EXIF orientation applied (as extract/images.py),
no gt boxes; sorted by image_id. A file whose header cannot be read is NOT an error here: it
stays with width = height = 0 (and a warning), so that extraction records it with the reason
in the shard's failures table, where every unusable image ends up. Zero matched files is an
error naming the key.
"""

import glob as globlib
import hashlib
import os
import posixpath
import re

from ._common import missing_image, read_text_lines, spec_get
from .errors import FormatError, SpecError

# What the default listing takes, compared in lower case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Names of the official datasets, not available to own images (their files would collide).
RESERVED_NAMES = ("coco", "vg", "vqa", "vcr", "nlvr2", "flickr30k")

# A name is one path component and one Snakemake wildcard value: letters, digits, _ and -, not
# starting with - or _ (no dot: `NAME.missing.parquet` must not be another name's file).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
_NAME = re.compile(NAME_PATTERN)

# EXIF orientations that swap width and height (as extract/images.py).
_TRANSPOSED = {5, 6, 7, 8}


def name_problem(name, others=()):
    """Why `name` cannot name an own-images dataset (None when it can); `others`: the names
    already accepted (two names differing only in letter case would share files on a
    case-insensitive file system)."""
    if not isinstance(name, str) or not _NAME.match(name):
        return (f"{name!r} is not a usable name: use letters, digits, '_' and '-' only, starting with "
                "a letter or digit (it becomes a file and folder name)")
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is the name of an official dataset ({', '.join(RESERVED_NAMES)}); choose another"
    clash = [o for o in others if o.lower() == name.lower()]
    if clash:
        return f"{name!r} differs from {clash[0]!r} only in letter case; choose another"
    return None


def _relative(path):
    """`path` (relative to root) in POSIX form, or None when it is absolute or leaves root."""
    if os.path.isabs(path) or path.startswith(("/", "\\")):
        return None
    rel = posixpath.normpath(path.replace(os.sep, "/"))
    if rel in (".", "..") or rel.startswith("../"):
        return None
    return rel


def spec_options(name, spec):
    """(root, glob or None, list file or None) of a spec; SpecError naming the key."""
    where = f"datasets.images.{name}"
    root = spec_get(spec, "root", where, str)
    pattern, list_file = spec.get("glob"), spec.get("list")
    if pattern is not None and list_file is not None:
        raise SpecError(f"{where}: give glob or list, not both")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"{where}.glob: must be a non-empty string")
        if os.path.isabs(pattern) or ".." in pattern.replace("\\", "/").split("/"):
            raise SpecError(f"{where}.glob: must be relative to root and stay inside it, got {pattern!r}")
    if list_file is not None and (not isinstance(list_file, str) or not list_file):
        raise SpecError(f"{where}.list: must be a file path")
    return root, pattern, list_file


def list_files(name, spec, on_missing=None):
    """The images a spec names: sorted [(image_id, path)], before any file is opened. A listed
    file not on disk → MissingImageError, or `on_missing(error)` and left out."""
    where = f"datasets.images.{name}"
    root, pattern, list_file = spec_options(name, spec)
    if not os.path.isdir(root):
        raise SpecError(f"{where}.root: image folder not found: {root}")
    if list_file is not None:
        return _listed(name, root, list_file, on_missing)
    if pattern is None:
        matched = [p for p in globlib.glob("**/*", root_dir=root, recursive=True)
                   if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
        what = f"no file with an image extension ({' '.join(IMAGE_EXTENSIONS)}) under {root}"
    else:
        matched = globlib.glob(pattern, root_dir=root, recursive=True)
        what = f"no file under {root} matches {pattern!r}"
    files = {}
    for match in matched:
        rel = _relative(match)
        if rel is not None and not os.path.isdir(os.path.join(root, rel)):
            files[rel] = os.path.join(root, rel)
    if not files:
        hint = "" if pattern is not None else " (not set: the default listing)"
        raise SpecError(f"{where}.glob: {what}{hint}")
    return sorted(files.items())


def _listed(name, root, list_file, on_missing):
    files, first_line, listed = {}, {}, 0
    for lineno, line in enumerate(read_text_lines(list_file), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        listed += 1
        record = f"line {lineno}"
        rel = _relative(entry)
        if rel is None:
            raise FormatError(list_file, record, f"{entry!r} must be a path relative to root ({root}) "
                                                 "inside it")
        if rel in first_line:
            raise FormatError(list_file, record, f"{entry!r} is listed twice (first on line {first_line[rel]})")
        first_line[rel] = lineno
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            files[rel] = path
        else:
            missing_image(on_missing, list_file, record, path, rel)
    if not listed:
        raise SpecError(f"datasets.images.{name}.list: {list_file} lists no files")
    return sorted(files.items())


def oriented_size(path):
    """(width, height) from the header, EXIF orientation applied; (None, reason) when the file
    cannot be identified as an image. Pixels are not decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 - any unreadable file is recorded, never fatal (module doc)
        return None, f"{type(e).__name__}: {e}"
    if orientation in _TRANSPOSED:
        width, height = height, width
    return (int(width), int(height)), None


def manifest_rows(name, spec, on_missing=None, on_unreadable=None):
    """Rows (dicts, manifest schema) of the own-images dataset `name`; `on_unreadable(path,
    reason)` is called for each file whose header cannot be read (listed with size 0 × 0)."""
    rows = []
    for image_id, path in list_files(name, spec, on_missing):
        size, reason = oriented_size(path)
        if size is None:
            if on_unreadable is not None:
                on_unreadable(path, reason)
            size = (0, 0)
        rows.append({"image_id": image_id, "path": path, "width": size[0], "height": size[1],
                     "gt_boxes": [], "gt_box_labels": []})
    return rows


def listing_digest(name, spec):
    """A short digest of the files a spec names now (path, size, mtime; missing listed files
    too): the Snakemake param that reruns the manifest when they change. Never raises: an
    unusable spec gets a digest of its error (the manifest job reports the error itself)."""
    digest = hashlib.sha256()

    def missing(error):
        digest.update(f"missing\0{error.image_path}\n".encode())

    try:
        files = list_files(name, spec, on_missing=missing)
    except (SpecError, FormatError, OSError) as e:
        return f"error:{hashlib.sha256(str(e).encode()).hexdigest()[:16]}"
    for image_id, path in files:
        try:
            stat = os.stat(path)
            digest.update(f"{image_id}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{image_id}\0gone\n".encode())
    return f"{len(files)}:{digest.hexdigest()[:16]}"
