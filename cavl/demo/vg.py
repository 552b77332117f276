"""Visual Genome v1.4-style ``vg/image_data.json``, ``vg/region_descriptions.json``,
``vg/objects.json``, ``vg/attributes.json`` and images ``vg/VG_100K/{image_id}.jpg``; beside them
the detector's vocabularies ``vocab/{objects,attributes}_vocab.txt``, aliases merged as in
BUTD's hand-made files (the demo's stand-in for the published vocabularies)."""

import hashlib
import os

from cavl.formats.vocab import COMMON_ADJECTIVES, Vocabulary, write_vocab

from .files import rel, write_json_atomic
from .language import region_phrases
from .scenes import SHAPES, public, save_image

URL = "https://example.invalid/rak248/VG_100K/{}.jpg"


def _record(image_id, k, obj, name, **attributes):
    """Object k of an image as VG writes it (the id derives from the image id: no draw from the rng,
    so the other files stay as they were)."""
    x1, y1, x2, y2 = obj["bbox"]
    return {"synsets": [f"{obj['shape']}.n.01"], "h": y2 - y1, "object_id": image_id * 100 + k,
            "names": [name], "w": x2 - x1, **attributes, "y": y1, "x": x1}


def objects(scenes):
    """objects.json: every scene object's box, named by its shape."""
    return [{"image_url": URL.format(image_id), "image_id": image_id,
             "objects": [_record(image_id, k, obj, obj["shape"]) for k, obj in enumerate(scene["objects"])]}
            for image_id, scene in scenes]


# How annotators wrote a colour or size (Visual Genome's attributes are free text): aliases a
# shape's attribute may be written as instead of its palette / size name.
COLOR_ALIASES = {"blue": ("dark blue",), "navy": ("navy blue", "dark blue"), "lime": ("lime green",),
                 "purple": ("violet",)}
SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}


def _variation(image_id, k):
    """A number that picks object k's spellings: a hash of the ids, not a draw from the rng."""
    digest = hashlib.sha256(f"cavl.demo/vg-attributes/{image_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _as_written(word, h):
    """`word` mostly as is, else capitalised ("Red") and/or with a trailing period ("red.")."""
    style = h % 10
    if style >= 6 and style != 8:
        word = word[0].upper() + word[1:]
    return word + "." if style >= 8 else word


def attributes(scenes):
    """attributes.json: objects.json's objects (same ids, boxes, synsets) with their colour and
    size written as VG annotators write them: mixed case, a trailing period, aliases ("big",
    "little", "dark blue"), two in one string ("small and red"), or the attribute in the name
    ("red circle"). Counting the objects of all images in order, object g has: g % 8 == 1 no
    "attributes" key, 4 an empty list, 2 the colour in its name, 7 the size in its name (where the
    word is one BUTD's cleaning splits off a name), 5 both in one string. Spellings derive from a
    hash of the ids (no draw from the rng), so the other files stay as they were."""
    out, g = [], 0
    for image_id, scene in scenes:
        objs = []
        for k, obj in enumerate(scene["objects"]):
            h = _variation(image_id, k)
            shape, aliases = obj["shape"], COLOR_ALIASES.get(obj["color"], ())
            color = aliases[(h >> 2) % len(aliases)] if aliases and h % 4 == 0 else obj["color"]
            size = SIZE_WORDS[obj["size"]][(h >> 4) % 2]
            # An attribute goes into the name only where BUTD's cleaning splits it off again.
            if g % 8 == 2 and color in COMMON_ADJECTIVES:
                name, attrs = f"{color} {shape}", [size]
            elif g % 8 == 7 and size in COMMON_ADJECTIVES:
                name, attrs = f"{size} {shape}", [color]
            elif g % 8 == 5:
                name, attrs = shape, [f"{size} and {color}"]
            else:
                name, attrs = shape, [color, size] if (h >> 5) % 2 else [size, color]
            attrs = [_as_written(a, h >> (13 + 4 * j)) for j, a in enumerate(attrs)]
            written = {1: {}, 4: {"attributes": []}}.get(g % 8, {"attributes": attrs})
            objs.append(_record(image_id, k, obj, _as_written(name, h >> 9), **written))
            g += 1
        out.append({"image_id": image_id, "attributes": objs})
    return out


def vocabularies(variant):
    """(objects, attributes): the shapes; the variant's colours and the sizes, each with the
    aliases attributes.json writes it as."""
    colors = [(c, *COLOR_ALIASES.get(c, ())) for c in variant.colors]
    sizes = [(s, *(w for w in words if w != s)) for s, words in SIZE_WORDS.items()]
    return Vocabulary(SHAPES), Vocabulary(colors + sizes)


def write(out_dir, rng, count, image_size, variant):
    """→ (scenes.json entries, summary line)."""
    ids = sorted(rng.sample(range(1, 2417998), count))
    entries, scenes = {}, []
    for image_id in ids:
        scene = variant.scene(rng, image_size)
        path = os.path.join(out_dir, "vg", "VG_100K", f"{image_id}.jpg")
        save_image(scene, path, variant.colors)
        scenes.append((image_id, scene))
        entries[str(image_id)] = dict(file=rel(path, out_dir), **public(scene))
    image_data, regions = [], []
    region_id = rng.randint(1000, 5000)
    for image_id, scene in scenes:
        image_data.append({"width": scene["width"], "url": URL.format(image_id),
                           "height": scene["height"], "image_id": image_id,
                           "coco_id": None, "flickr_id": None})
        rs = []
        for phrase, (x1, y1, x2, y2) in region_phrases(scene, rng):
            rs.append({"region_id": region_id, "width": x2 - x1, "height": y2 - y1,
                       "image_id": image_id, "phrase": phrase, "y": y1, "x": x1})
            region_id += rng.randint(1, 3)
        regions.append({"regions": rs, "id": image_id})
    write_json_atomic(image_data, os.path.join(out_dir, "vg", "image_data.json"))
    write_json_atomic(regions, os.path.join(out_dir, "vg", "region_descriptions.json"))
    write_json_atomic(objects(scenes), os.path.join(out_dir, "vg", "objects.json"))
    write_json_atomic(attributes(scenes), os.path.join(out_dir, "vg", "attributes.json"))
    for kind, vocab in zip(("objects", "attributes"), vocabularies(variant)):
        write_vocab(vocab, os.path.join(out_dir, "vocab", f"{kind}_vocab.txt"))
    n_reg = sum(len(r["regions"]) for r in regions)
    return entries, (f"vg: {len(ids)} images, {n_reg} region descriptions "
                     f"→ {os.path.join(out_dir, 'vg')}")
