"""Errors raised by the readers of the official dataset formats."""

import os


class FormatError(ValueError):
    """A dataset file does not have the official structure: ``{path}: {record}: {message}``
    (`record`: where in the file, e.g. ``line 7``, or None for the whole file)."""

    def __init__(self, path, record, message):
        self.path = os.fspath(path) if path is not None else None
        self.record = record
        self.message = message
        super().__init__(str(self))

    def __str__(self):
        parts = [p for p in (self.path, self.record) if p not in (None, "")]
        parts.append(self.message)
        return ": ".join(str(p) for p in parts)

    def __reduce__(self):
        return (type(self), (self.path, self.record, self.message))


class MissingImageError(FormatError):
    """An image file that a dataset's annotations list is not on disk; `image_id` and
    `image_path` (the expected file) let ``missing_images: skip`` list it (cavl.manifest)."""

    def __init__(self, path, record, message, image_id=None, image_path=None):
        self.image_id = None if image_id is None else str(image_id)
        self.image_path = os.fspath(image_path) if image_path is not None else None
        super().__init__(path, record, message)

    def __reduce__(self):
        return (type(self), (self.path, self.record, self.message, self.image_id,
                             self.image_path))


class SpecError(ValueError):
    """The dataset spec handed to a CLI (a `datasets` entry of config.yaml) is unusable."""
