"""Visual Genome v1.4-style ``vg/image_data.json``, ``vg/region_descriptions.json``,
``vg/objects.json`` and images ``vg/VG_100K/{image_id}.jpg``."""

import os

from .files import rel, write_json_atomic
from .language import region_phrases
from .scenes import public, save_image
from .variants import DEFAULT

URL = "https://example.invalid/rak248/VG_100K/{}.jpg"


def objects(scenes):
    """objects.json: every scene object's box, named by its shape (object ids derive from the
    image id: no draw from the rng, so the other files stay as they were)."""
    out = []
    for image_id, scene in scenes:
        objs = []
        for k, obj in enumerate(scene["objects"]):
            x1, y1, x2, y2 = obj["bbox"]
            objs.append({"synsets": [f"{obj['shape']}.n.01"], "h": y2 - y1, "object_id": image_id * 100 + k,
                         "names": [obj["shape"]], "w": x2 - x1, "y": y1, "x": x1})
        out.append({"image_url": URL.format(image_id), "image_id": image_id, "objects": objs})
    return out


def write(out_dir, rng, count, image_size, variant=DEFAULT):
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
    n_reg = sum(len(r["regions"]) for r in regions)
    return entries, (f"vg: {len(ids)} images, {n_reg} region descriptions "
                     f"→ {os.path.join(out_dir, 'vg')}")
