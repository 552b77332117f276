"""Label vocabulary files (the detector's object / attribute classes) and the cleaning of Visual
Genome strings they are matched with (shared by cavl.demo.vg and extract.vocab).

A vocabulary file (BUTD's ``objects_vocab.txt`` / ``attributes_vocab.txt``) has one class per
line, aliases separated by commas. Class ids are **0-based line indices** (BUTD's Caffe numbering
minus one: Caffe's 0 is the background / "no attribute").

Strings are cleaned as BUTD's ``data/genome/setup_vg.py`` did: lower-cased, stripped, a trailing
period dropped; an attribute is split on " and " except "black and white"; an object name whose
leading words are all :data:`COMMON_ADJECTIVES` is split into the object (its last word) and
those words as attributes ("white shirt" → "shirt" plus "white").
"""

import hashlib
import os

from cavl.formats.errors import FormatError
from cavl.io import atomic_path

COMMON_ADJECTIVES = frozenset({
    "white", "black", "blue", "green", "red", "brown", "yellow", "small", "large", "silver",
    "wooden", "orange", "gray", "grey", "metal", "pink", "tall", "long", "dark"})
UNSPLIT_ATTRIBUTES = frozenset({"black and white"})


# ---------------------------------------------------------------- string cleaning
def clean_string(s):
    """Lower-case, strip, drop one trailing period (and the space before it)."""
    s = s.lower().strip()
    if s.endswith("."):
        s = s[:-1].strip()
    return s


def clean_object_name(s):
    """An annotated object name → (object name, [attributes split off its front]).

    "White Shirt." → ("shirt", ["white"]); "tennis racket" → ("tennis racket", []) (not every
    leading word is a common adjective). The name may come back "" (nothing left)."""
    s = clean_string(s)
    words = s.split()
    if len(words) > 1 and all(w in COMMON_ADJECTIVES for w in words[:-1]):
        return words[-1], words[:-1]
    return s, []


def clean_attributes(s):
    """An annotated attribute → the attributes it names: "Red and Blue" → ["red", "blue"],
    "black and white" → ["black and white"]; empty parts are left out."""
    s = clean_string(s)
    parts = [s] if s in UNSPLIT_ATTRIBUTES else s.split(" and ")
    return [p for p in (clean_string(p) for p in parts) if p]


def unique(items):
    """The items without repeats, in first-seen order."""
    return list(dict.fromkeys(items))


def object_strings(names, attributes):
    """The cleaned strings of one VG object → ([(object name, [split-off attributes]) per
    name, empty names left out], [its cleaned attributes, in order, without repeats])."""
    cleaned = [clean_object_name(n) for n in names]
    attrs = unique(a for raw in attributes for a in clean_attributes(raw))
    return [(o, a) for o, a in cleaned if o], attrs


# ---------------------------------------------------------------- vocabulary
class Vocabulary:
    """Classes, each a tuple of aliases (the first is its name); ``id(alias)`` gives the 0-based
    class id. `sha256` hashes the canonical file text (:meth:`text`), as :func:`write_vocab`
    writes it."""

    def __init__(self, classes):
        """`classes`: per class, its aliases (a sequence of strings, or one string)."""
        classes = [(aliases,) if isinstance(aliases, str) else tuple(aliases) for aliases in classes]
        index = {}
        for i, aliases in enumerate(classes):
            problem = _class_problem(aliases, index)
            if problem:
                raise ValueError(f"class {i}: {problem}")
            index.update((a, i) for a in aliases)
        if not classes:
            raise ValueError("a vocabulary needs at least one class")
        self._classes, self._index = tuple(classes), index

    def __len__(self):
        return len(self._classes)

    def __getitem__(self, class_id):
        return self._classes[class_id]

    def __iter__(self):
        return iter(self._classes)

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self._classes == other._classes

    def __hash__(self):
        return hash(self._classes)

    def __repr__(self):
        return f"Vocabulary({len(self)} classes, sha256 {self.sha256[:12]}…)"

    @property
    def names(self):
        """Each class's name (its first alias), by id."""
        return [aliases[0] for aliases in self._classes]

    def name(self, class_id):
        return self._classes[class_id][0]

    def id(self, string):
        """0-based class id of `string` (any alias; else its :func:`clean_string` form), or None."""
        found = self._index.get(string)
        return found if found is not None else self._index.get(clean_string(string))

    def __contains__(self, string):
        return self.id(string) is not None

    def text(self):
        """The file text: one class per line, aliases joined by commas, a final newline."""
        return "".join(",".join(aliases) + "\n" for aliases in self._classes)

    @property
    def sha256(self):
        return hashlib.sha256(self.text().encode("utf-8")).hexdigest()


def _class_problem(aliases, index):
    """Why `aliases` cannot be a class beside the ones in `index` (alias → id), or None."""
    if not aliases:
        return "no name"
    for a in aliases:
        if not isinstance(a, str) or not a or a != a.strip() or any(c in a for c in ",\n\r"):
            return f"bad name {a!r} (empty, surrounding spaces, a comma or a line break)"
        if a in index:
            return f"{a!r} is already class {index[a]}"
    if len(set(aliases)) != len(aliases):
        return f"a name repeats in {','.join(aliases)!r}"
    return None


def read_vocab(path):
    """Read a vocabulary file → :class:`Vocabulary` (final line end optional); FormatError naming
    the file and line for a bad class."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise FormatError(path, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise FormatError(path, f"byte {e.start}", "not UTF-8 text") from None
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise FormatError(path, None, "no classes (empty file)")
    classes, index = [], {}
    for n, line in enumerate(lines, start=1):
        aliases = tuple(a.strip() for a in line.split(","))
        if not line.strip():
            raise FormatError(path, f"line {n}", "blank line (every line is a class)")
        for a in aliases:
            if a in index:
                raise FormatError(path, f"line {n}", f"{a!r} is already on line {index[a] + 1}")
        problem = _class_problem(aliases, {})
        if problem:
            raise FormatError(path, f"line {n}", problem)
        index.update((a, len(classes)) for a in aliases)
        classes.append(aliases)
    return Vocabulary(classes)


def write_vocab(vocab, path):
    """Write `vocab` (its :meth:`Vocabulary.text`) to `path` atomically → the file's sha256."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(vocab.text())
    return vocab.sha256
