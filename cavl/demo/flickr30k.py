"""Flickr30k: images ``flickr30k/flickr30k-images/{id}.jpg``, the Karpathy split
``flickr30k/dataset_flickr30k.json`` and Flickr30k Entities
(``flickr30k/flickr30k_entities/Sentences/{id}.txt``, ``Annotations/{id}.xml``,
``{train,val,test}.txt``)."""

import os
from xml.sax.saxutils import escape

from .files import rel, split_counts, write_json_atomic, write_text_atomic
from .language import captions, entities_line, phrases, plain, tokens
from .scenes import public, save_image

SPLITS = ("train", "val", "test")


def annotation_xml(image_id, scene, ids):
    """PASCAL-VOC style xml: one <object> per box with the <name> of every entity that
    includes it (1-based corners, as in the release); the background entity as a
    <nobndbox>/<scene> object; notvisual entities are not listed."""
    names = {}  # object index → entity ids
    for key, eid in ids.items():
        if key[0] in ("obj", "group"):
            for i in (key[1],) if key[0] == "obj" else key[1]:
                names.setdefault(i, []).append(eid)
    scene_ids = [eid for key, eid in ids.items() if key[0] == "background"]
    lines = ["<annotation>", f"<filename>{image_id}.jpg</filename>", "<size>",
             f"<width>{scene['width']}</width>", f"<height>{scene['height']}</height>",
             "<depth>3</depth>", "</size>"]
    for i in sorted(names):
        x1, y1, x2, y2 = scene["objects"][i]["bbox"]
        lines.append("<object>")
        lines += [f"<name>{escape(str(e))}</name>" for e in sorted(names[i])]
        lines += ["<bndbox>", f"<xmin>{x1 + 1}</xmin>", f"<ymin>{y1 + 1}</ymin>",
                  f"<xmax>{x2 + 1}</xmax>", f"<ymax>{y2 + 1}</ymax>", "</bndbox>", "</object>"]
    for eid in scene_ids:
        lines += ["<object>", f"<name>{eid}</name>", "<nobndbox>1</nobndbox>",
                  "<scene>1</scene>", "</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write(out_dir, rng, count, image_size, variant):
    """→ (scenes.json entries, summary line)."""
    n_train, n_val, n_test = split_counts(count, (0.625, 0.125, 0.25))
    ids = rng.sample(range(1000000000, 9999999999), count)
    split_of = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    fl = os.path.join(out_dir, "flickr30k")
    ent = os.path.join(fl, "flickr30k_entities")
    entries, images = {}, []
    for image_id in ids:
        scene = variant.scene(rng, image_size, duplicate_prob=0.3)
        path = os.path.join(fl, "flickr30k-images", f"{image_id}.jpg")
        save_image(scene, path, variant.colors)
        images.append((image_id, scene))
        entries[str(image_id)] = dict(file=rel(path, out_dir), **public(scene))
    next_id = rng.randint(1, 500)  # entity ids are unique over the dataset
    karpathy, sentid, n_phrases = [], 0, 0
    for imgid, ((image_id, scene), split) in enumerate(zip(images, split_of)):
        sents = captions(scene, rng, 5)
        ids_here = {}  # phrase key → entity id

        def eid(key):
            return ids_here.setdefault(key, next_id + len(ids_here))

        lines = [entities_line(s, eid) for s in sents]
        next_id += len(ids_here)
        n_phrases += sum(len(phrases(s)) for s in sents)
        write_text_atomic("\n".join(lines) + "\n",
                          os.path.join(ent, "Sentences", f"{image_id}.txt"))
        write_text_atomic(annotation_xml(image_id, scene, ids_here),
                          os.path.join(ent, "Annotations", f"{image_id}.xml"))
        sentences = [{"tokens": tokens(s), "raw": plain(s), "imgid": imgid, "sentid": sentid + k}
                     for k, s in enumerate(sents)]
        sentid += len(sents)
        karpathy.append({"sentids": [x["sentid"] for x in sentences], "imgid": imgid,
                         "sentences": sentences, "split": split,
                         "filename": f"{image_id}.jpg"})
    for split in SPLITS:
        write_text_atomic("".join(f"{image_id}\n" for (image_id, _), s in zip(images, split_of)
                                  if s == split), os.path.join(ent, f"{split}.txt"))
    write_json_atomic({"images": karpathy, "dataset": "flickr30k"},
                      os.path.join(fl, "dataset_flickr30k.json"))
    return entries, (f"flickr30k: {n_train} train + {n_val} val + {n_test} test images, "
                     f"{sentid} sentences, {n_phrases} entity phrases → {fl}")
