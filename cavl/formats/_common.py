"""Shared helpers for the format readers: checked JSON access and image headers."""

import json
import os

from .errors import FormatError, MissingImageError, SpecError

_TYPE_NAMES = {str: "string", int: "integer", float: "number", list: "list", dict: "object",
               bool: "boolean", type(None): "null"}


def _type_name(types):
    if not isinstance(types, tuple):
        types = (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _matches(value, types):
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false is not a number here
    return isinstance(value, types) or (float in types and isinstance(value, int))


def check_type(value, types, path, record, what):
    """Return `value` if it is of `types` (JSON sense: bool is not an int), else FormatError."""
    if not _matches(value, types):
        raise FormatError(path, record, f"{what} must be {_type_name(types)}, "
                                        f"got {_type_name(type(value))}")
    return value


def get(obj, key, types, path, record, default=KeyError):
    """obj[key], checked to be of `types`; missing → FormatError unless `default` is given."""
    if not isinstance(obj, dict):
        raise FormatError(path, record, f"must be an object, got {_type_name(type(obj))}")
    if key not in obj:
        if default is KeyError:
            raise FormatError(path, record, f"missing key {key!r}")
        return default
    return check_type(obj[key], types, path, record, f"key {key!r}")


def _open_text(path, binary=False):
    try:
        return open(path, "rb") if binary else open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, None, "file not found") from None
    except IsADirectoryError:
        raise FormatError(path, None, "is a directory, expected a file") from None
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from None


def load_json(path):
    """Parse a whole JSON file; broken JSON → FormatError naming the line and column."""
    with _open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise FormatError(path, f"line {e.lineno} column {e.colno}",
                              f"invalid JSON: {e.msg}") from None
        except UnicodeDecodeError as e:
            raise FormatError(path, f"byte {e.start}", "not UTF-8 text") from None


def iter_json_lines(path):
    """Yield (line_number, object) for each non-blank line of a JSON-lines file."""
    # Bytes, decoded line by line: a text-mode file decodes ahead in chunks, so a byte that is
    # not UTF-8 would be reported on an earlier line than its own.
    with _open_text(path, binary=True) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(path, f"line {lineno}", "not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(path, f"line {lineno}",
                                  f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise FormatError(path, f"line {lineno}",
                                  f"must be a JSON object, got {_type_name(type(obj))}")
            yield lineno, obj


def read_text_lines(path):
    """All lines of a UTF-8 text file (line ends stripped)."""
    with _open_text(path) as f:
        try:
            return f.read().split("\n")
        except UnicodeDecodeError as e:
            raise FormatError(path, f"byte {e.start}", "not UTF-8 text") from None


def missing_image(on_missing, path, record, image_path, image_id=None, message=None):
    """Report an image file that is not on disk: `on_missing` None → raise MissingImageError;
    else call ``on_missing(error)`` and return None, and the caller leaves the image out
    (``datasets.<dataset>.missing_images: skip``)."""
    error = MissingImageError(path, record, message or f"image file missing: {image_path}",
                              image_id=image_id, image_path=image_path)
    if on_missing is None:
        raise error
    on_missing(error)
    return None


def require_image(image_path, path, record, image_id=None, on_missing=None):
    """`image_path` if the image file exists; else :func:`missing_image`."""
    if not os.path.isfile(image_path):
        return missing_image(on_missing, path, record, image_path, image_id)
    return image_path


def image_size(image_path, path=None, record=None, image_id=None, on_missing=None):
    """(width, height) from the image header (pixels are not decoded). A file that is gone →
    :func:`missing_image`; an unreadable header is a FormatError either way."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except FileNotFoundError:
        return missing_image(on_missing, path or image_path, record, image_path, image_id)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise FormatError(path or image_path, record,
                          f"cannot read image header of {image_path}: {e}") from None
    return int(width), int(height)


def size_keys(obj, path, record):
    """{"width", "height"} of `obj`, each a positive integer."""
    out = {}
    for key in ("width", "height"):
        value = get(obj, key, int, path, record)
        if value <= 0:
            raise FormatError(path, record, f"{key} must be positive, got {value}")
        out[key] = value
    return out


def spec_get(spec, key, where, types=None):
    """spec[key] of a CLI spec (config.yaml `datasets` entry); missing → SpecError."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: must be a mapping, got {type(spec).__name__}")
    if key not in spec or spec[key] is None:
        raise SpecError(f"{where}: missing key {key!r}")
    value = spec[key]
    if types is not None and not isinstance(value, types):
        raise SpecError(f"{where}.{key}: must be {_type_name(types)}, "
                        f"got {type(value).__name__}")
    return value


def stem(filename):
    """File name without folder and extension."""
    return os.path.splitext(os.path.basename(filename))[0]


def tables_per_split_file(spec, splits, where, task_rows):
    """{split: task_rows(spec["splits"][split])} for a dataset with one file per split."""
    out = {}
    for split in splits:
        path = spec["splits"][split]
        if not isinstance(path, str):
            raise SpecError(f"{where}.splits.{split}: must be a file path")
        out[split] = task_rows(path)
    return out
