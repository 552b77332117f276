"""Synthetic images and manifests for the extraction tests and the benchmark (no downloads).

`write_scenes` draws seeded scenes (gradient background, coloured rectangles and ellipses) as
JPEG/PNG; `write_bad_images` writes one file for every awkward case the extractor must survive,
with what is expected of each; `write_manifest` writes a manifest in the schema of
docs/contracts.md.
"""

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("gt_boxes", pa.list_(pa.list_(pa.float32()))), ("gt_box_labels", pa.list_(pa.string())),
])


def scene(rng, height, width):
    """(height, width, 3) uint8 RGB: a gradient with a few filled shapes, and the shapes' boxes."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    img = (base + 40 * np.stack([yy / max(height, 1), xx / max(width, 1), (xx + yy) / max(height + width, 1)], -1))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw, boxes = ImageDraw.Draw(im), []
    for _ in range(int(rng.integers(2, 5))):
        x1, y1 = rng.uniform(0, 0.7) * width, rng.uniform(0, 0.7) * height
        x2, y2 = x1 + rng.uniform(0.15, 0.3) * width, y1 + rng.uniform(0.15, 0.3) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x1, y1, x2, y2], fill=colour)
        boxes.append([float(x1), float(y1), float(min(x2, width)), float(min(y2, height))])
    return np.asarray(im), boxes


def write_scenes(directory, sizes, seed=0, ext="jpg", prefix="img"):
    """One scene per (height, width) in `sizes`; returns manifest rows (dicts)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (h, w) in enumerate(sizes):
        array, boxes = scene(rng, h, w)
        path = os.path.join(directory, f"{prefix}{i:05d}.{ext}")
        Image.fromarray(array).save(path, **({"quality": 90} if ext == "jpg" else {}))
        rows.append({"image_id": f"{prefix}{i:05d}", "path": path, "width": w, "height": h,
                     "gt_boxes": boxes, "gt_box_labels": [str(k) for k in range(len(boxes))]})
    return rows


def write_manifest(path, rows):
    rows = [{"gt_boxes": [], "gt_box_labels": [], "width": 0, "height": 0, **r} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    return path


def write_bad_images(directory, huge=(9000, 12000)):
    """Every awkward input once. Returns {image_id: (path, expected)} where expected is
    ("ok", (H, W) of the oriented image) or ("fail", substring of the recorded reason)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1)
    cases = {}

    def path(name):
        return os.path.join(directory, name)

    array, _ = scene(rng, 48, 64)
    open(path("zero_byte.jpg"), "wb").close()
    cases["zero_byte"] = (path("zero_byte.jpg"), ("fail", "empty file"))

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    with open(path("truncated.jpg"), "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["truncated"] = (path("truncated.jpg"), ("fail", "truncated"))

    with open(path("text.jpg"), "w") as f:
        f.write("this is not an image\n" * 20)
    cases["text_named_jpg"] = (path("text.jpg"), ("fail", "not an image"))

    cases["missing"] = (path("does_not_exist.jpg"), ("fail", "missing file"))

    Image.fromarray(array).convert("L").save(path("gray.jpg"))
    cases["grayscale"] = (path("gray.jpg"), ("ok", (48, 64)))

    Image.fromarray(array).convert("CMYK").save(path("cmyk.jpg"))
    cases["cmyk"] = (path("cmyk.jpg"), ("ok", (48, 64)))

    rgba = Image.fromarray(array).convert("RGBA")
    rgba.putalpha(Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8)))
    rgba.save(path("rgba.png"))
    cases["rgba_png"] = (path("rgba.png"), ("ok", (48, 64)))

    pal = Image.fromarray(array).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(path("palette.png"), transparency=0)
    cases["palette_png"] = (path("palette.png"), ("ok", (48, 64)))

    sixteen = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(sixteen).save(path("sixteen.png"))
    cases["png_16bit"] = (path("sixteen.png"), ("ok", (48, 64)))

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": stored 64 wide × 48 tall, shown 48 × 64
    Image.fromarray(array).save(path("exif_rotated.jpg"), exif=exif.tobytes())
    cases["exif_rotated"] = (path("exif_rotated.jpg"), ("ok", (64, 48)))

    Image.fromarray(array[:1, :1]).save(path("one_pixel.png"))
    cases["one_by_one"] = (path("one_pixel.png"), ("ok", (1, 1)))

    if huge:
        big = Image.new("RGB", (huge[1], huge[0]), (90, 120, 150))
        ImageDraw.Draw(big).rectangle([huge[1] // 4, huge[0] // 4, huge[1] // 2, huge[0] // 2], fill=(220, 40, 40))
        big.save(path("huge.jpg"), quality=80)
        cases["huge"] = (path("huge.jpg"), ("ok", huge))
    return cases
