"""The detector's object and attribute vocabularies (BUTD's Visual Genome 1600 / 400 classes).

    python -m extract.vocab --vg-attributes data/vg/attributes.json [--vg-objects data/vg/objects.json] \\
        [--objects-vocab extract/vocabularies/butd_vg/objects_vocab.txt \\
         --attributes-vocab extract/vocabularies/butd_vg/attributes_vocab.txt] \\
        [--num-objects 1600 --num-attributes 400] --out-dir resources/detector

writes ``objects_vocab.txt``, ``attributes_vocab.txt`` (one class per line, aliases separated by
commas; format and VG string cleaning: :mod:`cavl.formats.vocab`) and ``vocab_report.json`` (how
many VG strings each vocabulary covers, the most frequent ones outside it, each file's sha256).
A vocabulary file given is validated and rewritten in canonical form; one not given is built from
the VG files as the top N strings by frequency (ties: by string). With both files given, the VG
files may be left out: nothing is counted then.

Class ids are **0-based line indices** (BUTD's Caffe numbering minus one: Caffe's 0 is the
background / "no attribute"); the attribute head's index of attribute id i is i + 1.
"""

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cavl.formats import vg
from cavl.formats.errors import FormatError
from cavl.formats.vocab import Vocabulary, object_strings, read_vocab, unique, write_vocab
from cavl.io import file_sha256, write_json_atomic

OBJECTS_FILE = "objects_vocab.txt"
ATTRIBUTES_FILE = "attributes_vocab.txt"
REPORT_FILE = "vocab_report.json"
NUM_OBJECTS = 1600
NUM_ATTRIBUTES = 400
TOP_UNKNOWN = 50


def published_vocab_paths():
    """(objects_vocab.txt, attributes_vocab.txt) of the published BUTD vocabularies shipped
    with the package (extract/vocabularies/butd_vg/, MIT licence beside them)."""
    folder = Path(__file__).resolve().parent / "vocabularies" / "butd_vg"
    return folder / OBJECTS_FILE, folder / ATTRIBUTES_FILE


def build_vocab(counts, n):
    """The `n` most frequent strings of `counts` (string → count) as one-alias classes, most
    frequent first; ties by string. Strings that cannot be a class (empty, holding a comma or a
    line break) are passed over (they stay outside the vocabulary and are counted there)."""
    if n < 1:
        raise ValueError(f"a vocabulary needs at least one class, asked for {n}")
    usable = [(s, c) for s, c in counts.items()
              if c > 0 and s and s == s.strip() and not any(ch in s for ch in ",\n\r")]
    usable.sort(key=_by_count)
    if not usable:
        raise ValueError("no strings to build a vocabulary from")
    return Vocabulary([(s,) for s, _ in usable[:n]])


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
                    "top_outside": [[s, c] for s, c in sorted(unknown.items(), key=_by_count)[:top]]}
        return {
            "objects": {"records": self.objects, "records_mapped": self.objects_mapped,
                        "records_unmapped": self.objects - self.objects_mapped,
                        "records_without_name": self.objects_without_name,
                        **strings(self.object_seen, self.object_unknown)},
            "attributes": {"records_with_attributes": self.objects_with_attributes,
                           "records_with_mapped_attributes": self.objects_with_attribute_ids,
                           **strings(self.attribute_seen, self.attribute_unknown)},
        }


def _by_count(item):
    """Sort key: most frequent first, ties by string (Counter.most_common keeps insertion order)."""
    return -item[1], item[0]


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
    attr_strings = unique((cleaned[chosen][1] if chosen is not None else []) + annotated)
    attr_ids = unique(i for i in (attributes_vocab.id(a) for a in attr_strings) if i is not None)
    if counts is not None:
        counts.objects += 1
        counts.objects_mapped += object_id is not None
        counts.objects_without_name += not cleaned
        counts.objects_with_attributes += bool(attr_strings)
        counts.objects_with_attribute_ids += bool(attr_ids)
        counts.object_seen.update(o for o, _ in cleaned)
        counts.object_unknown.update(o for (o, _), i in zip(cleaned, ids) if i is None)
        counts.attribute_seen.update(attr_strings)
        counts.attribute_unknown.update(a for a in attr_strings if attributes_vocab.id(a) is None)
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
        attributes.update(unique((cleaned[0][1] if cleaned else []) + annotated))
    return objects, attributes


def vg_records(attributes_path=None, objects_path=None):
    """The object records (``cavl.formats.vg.read_attributes`` form) of attributes.json and/or
    objects.json → (records, {"images", "objects_json_only"}). Objects of objects.json are added
    only when attributes.json does not hold them (same image and object id; without an id, same
    box and names), with no attributes."""
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


def make_vocabularies(out_dir, vg_attributes=None, vg_objects=None, objects_vocab=None,
                      attributes_vocab=None, num_objects=None, num_attributes=None,
                      top_unknown=TOP_UNKNOWN):
    """Write objects_vocab.txt, attributes_vocab.txt and vocab_report.json under `out_dir` → the
    report (a dict); see the module docstring. Raises FormatError (a file) or ValueError (the arguments)."""
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

    counts = None
    inputs = {"vg_attributes": vg_attributes and os.fspath(vg_attributes),
              "vg_objects": vg_objects and os.fspath(vg_objects)}
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
