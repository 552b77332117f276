"""Seeded synthetic scenes: coloured shapes on a plain background, and their rendering.

A scene is a plain dict (the form written to ``scenes.json``)::

    {"width": int, "height": int, "background": colour name,
     "objects": [{"shape", "color", "size": "small"|"large", "bbox": [x1, y1, x2, y2]}]}

Boxes are integer pixel corners of the drawn shape (tight for every shape). Objects never
overlap (a gap of at least ``GAP`` pixels separates every two boxes), so relations such as
"left of" (the whole box strictly left of the other's) are well defined.
"""

import math

from PIL import Image, ImageDraw

from cavl.io import atomic_path

COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 65),
    "blue": (40, 85, 215),
    "yellow": (240, 205, 35),
    "purple": (135, 55, 170),
    "orange": (245, 135, 25),
}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (150, 150, 150), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": (0.15, 0.20), "large": (0.28, 0.35)}  # side as a fraction of min(w, h)
RELATIONS = ("left of", "right of", "above", "below")
GAP = 6          # min pixels between two boxes
MARGIN = 3       # min pixels between a box and the image border
JPEG_QUALITY = 92


def sample_dims(rng, image_size):
    """Mostly square; about a third of the images lose ~11% of their width or height."""
    short = image_size * 25 // 28  # 224 → 200
    r = rng.random()
    if r < 0.18:
        return image_size, short
    if r < 0.33:
        return short, image_size
    return image_size, image_size


def _attributes(rng, objects, duplicate_prob, colors):
    """(shape, color) for a new object: a copy of an earlier object's with `duplicate_prob`,
    else a pair no earlier object has (so most objects are named by colour + shape); colours
    from the palette `colors`."""
    pairs = [(o["shape"], o["color"]) for o in objects]
    once = [p for p in pairs if pairs.count(p) == 1]
    if once and rng.random() < duplicate_prob:
        return rng.choice(once)  # at most two objects share a (shape, colour)
    while True:
        pair = (rng.choice(SHAPES), rng.choice(sorted(colors)))
        if pair not in pairs:
            return pair


def _overlaps(box, others):
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + GAP and b[0] < x2 + GAP and y1 < b[3] + GAP and b[1] < y2 + GAP
               for b in others)


def star_points(x1, y1, side):
    """The ten vertices of a five-pointed star inscribed in the square (x1, y1, side)."""
    cx, cy, outer = x1 + side / 2, y1 + side / 2, side / 2
    inner = outer * 0.45
    angles = [math.radians(-90 + 36 * k) for k in range(10)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, (outer, inner) * 5)]


def outline(obj, circle_points=16):
    """Polygon [(x, y)] of the drawn shape (a circle is approximated by `circle_points`);
    `obj` as sample_scene made it (a star's polygon comes from its private square)."""
    x1, y1, x2, y2 = obj["bbox"]
    shape = obj["shape"]
    if shape == "square":
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if shape == "triangle":
        return [((x1 + x2) / 2, y1), (x2, y2), (x1, y2)]
    if shape == "star":
        return star_points(*obj["_square"])
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return [(cx + rx * math.cos(2 * math.pi * k / circle_points),
             cy + ry * math.sin(2 * math.pi * k / circle_points)) for k in range(circle_points)]


def _tight_box(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [int(math.floor(min(xs))), int(math.floor(min(ys))),
            int(math.ceil(max(xs))), int(math.ceil(max(ys)))]


def sample_scene(rng, image_size, min_objects=1, max_objects=4, duplicate_prob=0.0, required=None,
                 colors=COLORS):
    """A random scene. `required`: optional (shape, color) the first object must have;
    `colors`: the palette (name → RGB) the colours are drawn from."""
    width, height = sample_dims(rng, image_size)
    n_objects = rng.randint(min_objects, max_objects)
    background = rng.choice(sorted(BACKGROUNDS))
    short = min(width, height)
    objects, boxes = [], []
    for k in range(n_objects):
        shape, color = required if k == 0 and required else _attributes(rng, objects, duplicate_prob, colors)
        size = rng.choice(sorted(SIZES))
        lo, hi = SIZES[size]
        for _ in range(200):
            side = int(round(rng.uniform(lo, hi) * short))
            x1 = rng.randint(MARGIN, width - MARGIN - side - 1)
            y1 = rng.randint(MARGIN, height - MARGIN - side - 1)
            square = [x1, y1, x1 + side, y1 + side]
            if not _overlaps(square, boxes):
                break
        else:
            continue  # no room left: the scene keeps fewer objects
        boxes.append(square)
        bbox = _tight_box(star_points(x1, y1, side)) if shape == "star" else square
        objects.append({"shape": shape, "color": color, "size": size, "bbox": bbox,
                        "_square": (x1, y1, side)})
    return {"width": width, "height": height, "background": background, "objects": objects}


def public(scene):
    """The scene as written to scenes.json (private drawing helpers dropped)."""
    return {"width": scene["width"], "height": scene["height"],
            "background": scene["background"],
            "objects": [{k: o[k] for k in ("shape", "color", "size", "bbox")}
                        for o in scene["objects"]]}


def render(scene, colors):
    """PIL RGB image of the scene (`colors`: the palette its colour names come from)."""
    img = Image.new("RGB", (scene["width"], scene["height"]), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        fill = colors[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse(o["bbox"], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle(o["bbox"], fill=fill)
        else:
            draw.polygon(outline(o), fill=fill)
    return img


def save_image(scene, path, colors):
    """Render and write atomically: JPEG (fixed quality) unless `path` ends in .png."""
    img = render(scene, colors)
    with atomic_path(path) as tmp:
        if str(path).lower().endswith(".png"):
            img.save(tmp, "PNG", compress_level=6)
        else:
            img.save(tmp, "JPEG", quality=JPEG_QUALITY, subsampling=0)


def relations(a, b):
    """Relations from RELATIONS that hold of object `a` with respect to `b` (strict: the
    whole box of `a` lies on that side of the whole box of `b`)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a["bbox"], b["bbox"]
    holds = (ax2 < bx1, ax1 > bx2, ay2 < by1, ay1 > by2)  # in the order of RELATIONS
    return [r for r, h in zip(RELATIONS, holds) if h]


CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
