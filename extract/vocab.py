"""The detector's object and attribute vocabularies (BUTD's Visual Genome 1600 / 400 classes).

    python -m extract.vocab --vg-attributes data/vg/attributes.json [--vg-objects data/vg/objects.json] \\
        [--objects-vocab extract/vocabularies/butd_vg/objects_vocab.txt \\
         --attributes-vocab extract/vocabularies/butd_vg/attributes_vocab.txt] \\
        [--num-objects 1600 --num-attributes 400] --out-dir resources/detector

writes ``objects_vocab.txt``, ``attributes_vocab.txt`` (the published files' format: one class
per line, aliases separated by commas) and ``vocab_report.json`` (how many VG strings each
vocabulary covers, the most frequent ones outside it, the sha256 of each file written), each
atomically. A vocabulary file given is validated and used (and written out in canonical form);
one not given is built from the VG files as the top N strings by frequency (ties: by string).
With both vocabulary files given, the VG files may be left out: nothing is counted then.

Class ids are **0-based line indices** (BUTD's Caffe numbering minus one: Caffe's 0 is the
background / "no attribute"). The detector puts the background class last for objects, and its
attribute head's output 0 means "no attribute", so the head index of attribute id i is i + 1.

Strings are cleaned as BUTD's ``data/genome/setup_vg.py`` did (../../notes/butd.md):
lower-cased, stripped, a trailing period dropped; an attribute is split on " and " except
"black and white"; an object name whose leading words are all in :data:`COMMON_ADJECTIVES` is
split into the object (its last word) and those words as attributes ("white shirt" → "shirt"
plus "white"). Strings outside a vocabulary are counted and reported, never silently dropped.
"""

import argparse
import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cavl.formats.errors import FormatError
from cavl.io import atomic_path, file_sha256, write_json_atomic

VOCAB_DIR = Path(__file__).resolve().parent / "vocabularies" / "butd_vg"
OBJECTS_FILE = "objects_vocab.txt"
ATTRIBUTES_FILE = "attributes_vocab.txt"
REPORT_FILE = "vocab_report.json"
NUM_OBJECTS = 1600
NUM_ATTRIBUTES = 400
TOP_UNKNOWN = 50

COMMON_ADJECTIVES = frozenset({
    "white", "black", "blue", "green", "red", "brown", "yellow", "small", "large", "silver",
    "wooden", "orange", "gray", "grey", "metal", "pink", "tall", "long", "dark"})
UNSPLIT_ATTRIBUTES = frozenset({"black and white"})


def published_vocab_paths():
    """(objects_vocab.txt, attributes_vocab.txt) of the published BUTD vocabularies shipped
    with the package (extract/vocabularies/butd_vg/, MIT licence beside them)."""
    return VOCAB_DIR / OBJECTS_FILE, VOCAB_DIR / ATTRIBUTES_FILE


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


def _unique(items):
    return list(dict.fromkeys(items))


def object_strings(names, attributes):
    """The cleaned strings of one VG object → ([(object name, [split-off attributes]) per
    name, empty names left out], [its cleaned attributes, in order, without repeats])."""
    cleaned = [clean_object_name(n) for n in names]
    attrs = _unique(a for raw in attributes for a in clean_attributes(raw))
    return [(o, a) for o, a in cleaned if o], attrs


# ---------------------------------------------------------------- vocabulary
class Vocabulary:
    """Classes, each a tuple of aliases (the first is its name). Class ids are 0-based line
    indices of the vocabulary file; ``id(alias)`` of any alias gives its class's id.

    `sha256` is the hash of the canonical file text (:meth:`text`), so it equals the sha256 of
    a file written by :func:`write_vocab` and does not depend on how a read file ended.
    """

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
        """Aliases of class `class_id` (a tuple)."""
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
    def classes(self):
        """All classes: a tuple of alias tuples."""
        return self._classes

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
    """Read a vocabulary file (one class per line, aliases separated by commas; a final line
    end optional) → :class:`Vocabulary`. A blank line, an empty alias or an alias of two
    classes is a FormatError naming the file and line."""
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


def build_vocab(counts, n):
    """The `n` most frequent strings of `counts` (string → count) as one-alias classes, most
    frequent first; ties by string. Strings that cannot be a class (empty, holding a comma or a
    line break) are passed over (they stay outside the vocabulary and are counted there)."""
    if n < 1:
        raise ValueError(f"a vocabulary needs at least one class, asked for {n}")
    usable = [(s, c) for s, c in counts.items()
              if c > 0 and s and s == s.strip() and not any(ch in s for ch in ",\n\r")]
    usable.sort(key=lambda sc: (-sc[1], sc[0]))
    if not usable:
        raise ValueError("no strings to build a vocabulary from")
    return Vocabulary([(s,) for s, _ in usable[:n]])


def load_published():
    """(objects, attributes) :class:`Vocabulary` of the shipped BUTD files."""
    objects_path, attributes_path = published_vocab_paths()
    return read_vocab(objects_path), read_vocab(attributes_path)


# ---------------------------------------------------------------- mapping and counting
@dataclass
class VocabCounts:
    """What :func:`map_object` saw: objects (records) and strings, in and outside the
    vocabularies. `*_seen` / `*_unknown`: cleaned string → occurrences."""
    objects: int = 0                   # object records
    objects_mapped: int = 0            # records that got an object class
    objects_without_name: int = 0      # records with no non-empty name
    objects_with_attributes: int = 0   # records with at least one attribute string
    objects_with_attribute_ids: int = 0  # records with at least one attribute in the vocabulary
    object_seen: Counter = field(default_factory=Counter)
    object_unknown: Counter = field(default_factory=Counter)
    attribute_seen: Counter = field(default_factory=Counter)
    attribute_unknown: Counter = field(default_factory=Counter)

    def report(self, top=TOP_UNKNOWN):
        """The counts as the JSON-able dict of vocab_report.json."""
        def strings(seen, unknown):
            total, outside = sum(seen.values()), sum(unknown.values())
            return {"strings": total, "mapped": total - outside, "outside": outside,
                    "distinct": len(seen), "distinct_outside": len(unknown),
                    "top_outside": [[s, c] for s, c in _most_common(unknown, top)]}
        return {
            "objects": {"records": self.objects, "records_mapped": self.objects_mapped,
                        "records_unmapped": self.objects - self.objects_mapped,
                        "records_without_name": self.objects_without_name,
                        **strings(self.object_seen, self.object_unknown)},
            "attributes": {"records_with_attributes": self.objects_with_attributes,
                           "records_with_mapped_attributes": self.objects_with_attribute_ids,
                           **strings(self.attribute_seen, self.attribute_unknown)},
        }


def _most_common(counter, top):
    """Most frequent first, ties by string (Counter.most_common keeps insertion order)."""
    return sorted(counter.items(), key=lambda sc: (-sc[1], sc[0]))[:top]


def map_object(names, attributes, objects_vocab, attributes_vocab, counts=None):
    """One VG object (its annotated names and attributes) → (object class id or None,
    [attribute ids], without repeats, in annotation order).

    The object's class is that of its first name in `objects_vocab`; the attributes split off
    that name (or, when no name maps, off the first name) come before the annotated ones.
    With `counts` (:class:`VocabCounts`), every cleaned string is counted, and those outside
    the vocabularies are counted as such (a name that is not the chosen one too)."""
    cleaned, annotated = object_strings(names, attributes)
    ids = [objects_vocab.id(o) for o, _ in cleaned]
    chosen = next((k for k, i in enumerate(ids) if i is not None), 0 if cleaned else None)
    object_id = None if chosen is None else ids[chosen]
    attr_strings = _unique((cleaned[chosen][1] if chosen is not None else []) + annotated)
    attr_ids = _unique(i for i in (attributes_vocab.id(a) for a in attr_strings) if i is not None)
    if counts is not None:
        counts.objects += 1
        counts.objects_mapped += object_id is not None
        counts.objects_without_name += not cleaned
        counts.objects_with_attributes += bool(attr_strings)
        counts.objects_with_attribute_ids += bool(attr_ids)
        for (o, _), i in zip(cleaned, ids):
            counts.object_seen[o] += 1
            if i is None:
                counts.object_unknown[o] += 1
        for a in attr_strings:
            counts.attribute_seen[a] += 1
            if attributes_vocab.id(a) is None:
                counts.attribute_unknown[a] += 1
    return object_id, attr_ids


def count_strings(records):
    """Cleaned string frequencies over object records ({"names", "attributes"}), as a
    vocabulary is built from them → (object name Counter, attribute Counter). Every name
    counts; an object's attributes are those split off its first name plus the annotated ones,
    each once per object."""
    objects, attributes = Counter(), Counter()
    for rec in records:
        cleaned, annotated = object_strings(rec["names"], rec["attributes"])
        objects.update(o for o, _ in cleaned)
        attributes.update(_unique((cleaned[0][1] if cleaned else []) + annotated))
    return objects, attributes


def vg_records(attributes_path=None, objects_path=None):
    """The object records (``cavl.formats.vg.read_attributes`` form) of attributes.json and/or
    objects.json → (records, {"images", "objects_json_only"}). Objects of objects.json are added
    only when attributes.json does not hold them (same image and object id; without an id, same
    box and names), with no attributes."""
    from cavl.formats import vg

    by_image = vg.read_attributes(attributes_path) if attributes_path else {}
    records = [r for objs in by_image.values() for r in objs]
    only = 0
    if objects_path:
        def key(image_id, r):
            return (image_id, r["object_id"]) if r["object_id"] is not None else \
                (image_id, tuple(r["box"]), tuple(r["names"]))
        known = {key(image_id, r) for image_id, objs in by_image.items() for r in objs}
        for image_id, objs in vg.read_object_records(objects_path).items():
            for r in objs:
                if key(image_id, r) not in known:
                    records.append(r)
                    only += 1
            by_image.setdefault(image_id, [])
    return records, {"images": len(by_image), "objects_json_only": only}


# ---------------------------------------------------------------- the step
def make_vocabularies(out_dir, vg_attributes=None, vg_objects=None, objects_vocab=None,
                      attributes_vocab=None, num_objects=None, num_attributes=None,
                      top_unknown=TOP_UNKNOWN):
    """Write objects_vocab.txt, attributes_vocab.txt and vocab_report.json under `out_dir` →
    the report (a dict). A vocabulary file given (`objects_vocab`, `attributes_vocab`) is read
    and validated; one not given is built from the VG files, top `num_objects` /
    `num_attributes` (default 1600 / 400). Raises FormatError (a file) or ValueError (the
    arguments)."""
    have_vg = bool(vg_attributes or vg_objects)
    if objects_vocab is None and not have_vg:
        raise ValueError("building the objects vocabulary needs --vg-attributes or --vg-objects "
                         "(or give --objects-vocab)")
    if attributes_vocab is None and not vg_attributes:
        raise ValueError("building the attributes vocabulary needs --vg-attributes "
                         "(or give --attributes-vocab)")
    vocabs, sources = {}, {}
    for kind, path, n, default in (("objects", objects_vocab, num_objects, NUM_OBJECTS),
                                   ("attributes", attributes_vocab, num_attributes, NUM_ATTRIBUTES)):
        if n is not None and n < 1:
            raise ValueError(f"--num-{kind} must be positive, got {n}")
        if path is not None:
            vocabs[kind] = read_vocab(path)
            sources[kind] = {"source": "file", "path": os.fspath(path)}
            if n is not None and n != len(vocabs[kind]):
                raise ValueError(f"--num-{kind} {n}, but {os.fspath(path)} has {len(vocabs[kind])} classes")
        else:
            sources[kind] = {"source": "built", "requested": default if n is None else n}

    counts, inputs = None, {"vg_attributes": _str(vg_attributes), "vg_objects": _str(vg_objects)}
    if have_vg:
        records, seen = vg_records(vg_attributes, vg_objects)
        inputs.update(seen)
        if "objects" not in vocabs or "attributes" not in vocabs:
            object_counts, attribute_counts = count_strings(records)
            for kind, counter in (("objects", object_counts), ("attributes", attribute_counts)):
                if kind not in vocabs:
                    vocabs[kind] = build_vocab(counter, sources[kind]["requested"])
        counts = VocabCounts()
        for r in records:
            map_object(r["names"], r["attributes"], vocabs["objects"], vocabs["attributes"], counts)

    report = {"inputs": inputs, "counted": counts is not None, "vocabularies": {}}
    for kind, filename in (("objects", OBJECTS_FILE), ("attributes", ATTRIBUTES_FILE)):
        target = os.path.join(out_dir, filename)
        write_vocab(vocabs[kind], target)
        report["vocabularies"][kind] = {**sources[kind], "file": filename,
                                        "classes": len(vocabs[kind]), "sha256": file_sha256(target)}
    report["counts"] = counts.report(top_unknown) if counts is not None else None
    write_json_atomic(report, os.path.join(out_dir, REPORT_FILE))
    return report


def _str(path):
    return None if path is None else os.fspath(path)


def summary_line(report):
    """The one-line stderr summary of a report."""
    def source(entry):  # a built vocabulary may get fewer classes than asked (too few strings)
        short = entry["source"] == "built" and entry["classes"] < entry["requested"]
        return f"built, only {entry['classes']} of {entry['requested']} asked" if short else entry["source"]

    v = report["vocabularies"]
    head = (f"vocab: {v['objects']['classes']} object classes ({source(v['objects'])}), "
            f"{v['attributes']['classes']} attribute classes ({source(v['attributes'])})")
    if not report["counted"]:
        return head + "; no VG input, nothing counted"
    parts = []
    for kind in ("objects", "attributes"):
        c = report["counts"][kind]
        top = ", ".join(f"{s!r} ×{n}" for s, n in c["top_outside"][:3])
        parts.append(f"{kind}: {c['mapped']}/{c['strings']} strings mapped, {c['outside']} outside "
                     f"({c['distinct_outside']} distinct{'; most frequent ' + top if top else ''})")
    return head + "; " + "; ".join(parts)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m extract.vocab", description=__doc__.split("\n\n")[0])
    p.add_argument("--vg-attributes", help="Visual Genome attributes.json (objects with their attributes)")
    p.add_argument("--vg-objects",
                   help="Visual Genome objects.json (objects attributes.json lacks are added)")
    p.add_argument("--objects-vocab", help="object vocabulary to use (e.g. the published "
                   "extract/vocabularies/butd_vg/objects_vocab.txt); default: built from VG")
    p.add_argument("--attributes-vocab", help="attribute vocabulary to use; default: built from VG")
    p.add_argument("--num-objects", type=int, help=f"classes of a built objects vocabulary "
                   f"(default {NUM_OBJECTS}); with --objects-vocab, the number it must have")
    p.add_argument("--num-attributes", type=int, help=f"classes of a built attributes vocabulary "
                   f"(default {NUM_ATTRIBUTES}); with --attributes-vocab, the number it must have")
    p.add_argument("--top-unknown", type=int, default=TOP_UNKNOWN,
                   help="strings outside a vocabulary listed in the report (default: %(default)s)")
    p.add_argument("--out-dir", required=True, help="folder for objects_vocab.txt, attributes_vocab.txt, "
                   "vocab_report.json")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        report = make_vocabularies(args.out_dir, vg_attributes=args.vg_attributes, vg_objects=args.vg_objects,
                                   objects_vocab=args.objects_vocab, attributes_vocab=args.attributes_vocab,
                                   num_objects=args.num_objects, num_attributes=args.num_attributes,
                                   top_unknown=args.top_unknown)
    except (FormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{summary_line(report)} → {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
