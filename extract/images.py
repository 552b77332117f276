"""Image decoding for the detector, run in DataLoader worker processes.

`load_image` turns any file PIL can read into the uint8 array the model expects: EXIF orientation
applied, every colour mode mapped to RGB (grayscale replicated, CMYK converted, alpha composited
onto white, 16-bit scaled to 8-bit), channels in the model's order (BGR for the model zoo), resized
like Detectron2's `ResizeShortestEdge` (PIL bilinear, shorter side → min_size, longer ≤ max_size).
JPEGs much larger than the target are decoded at reduced scale (libjpeg DCT scaling, `draft`),
so a 12000×9000 photo costs a fraction of a full decode. Files that cannot be read raise
`ImageError` with a short reason; the dataset turns that into a failure record, never a crash.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_IMAGE_PIXELS = 250_000_000  # default cap on width×height read from the header (~16k×16k)
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageError(Exception):
    """An image that cannot be used; the message is the reason recorded in the failures table."""


@dataclass(frozen=True)
class Resize:
    min_size: int  # shorter side after resizing (INPUT.MIN_SIZE_TEST)
    max_size: int  # cap on the longer side (INPUT.MAX_SIZE_TEST)

    def output_shape(self, h, w):
        """(new_h, new_w), as Detectron2's ResizeShortestEdge.get_output_shape (at least 1 px)."""
        scale = self.min_size / min(h, w)
        new_h, new_w = (self.min_size, scale * w) if h < w else (scale * h, self.min_size)
        if max(new_h, new_w) > self.max_size:
            scale = self.max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def load_image(path, resize, channel_order="BGR", max_pixels=MAX_IMAGE_PIXELS):
    """Decode, orient, convert and resize one image → (array (h, w, 3) uint8 in `channel_order`,
    (H, W) of the oriented original image); ImageError with the reason when it cannot be used."""
    if not os.path.exists(path):
        raise ImageError("missing file")
    if os.path.getsize(path) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w0, h0 = im.size
            if w0 * h0 > max_pixels:
                raise ImageError(f"too large: {w0}x{h0} pixels exceeds max_image_pixels={max_pixels}")
            transposed = im.getexif().get(0x0112, 1) in _TRANSPOSED
            H, W = (w0, h0) if transposed else (h0, w0)
            new_h, new_w = resize.output_shape(H, W)
            if im.format == "JPEG":
                # Decode at the smallest DCT scale (1/2, 1/4, 1/8) still at least the target size.
                im.draft(None, (new_h, new_w) if transposed else (new_w, new_h))
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
        rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports unreadable files this way: UnidentifiedImageError (OSError) for non-images,
        # OSError for truncated data, SyntaxError/ValueError for corrupt headers.
        raise ImageError(_reason(e)) from e
    array = np.asarray(rgb)
    if channel_order == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array), (H, W)


def _reason(error):
    text = str(error)
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image: cannot identify image file"
    if "truncated" in text.lower():
        return f"truncated: {text}"
    return f"unreadable: {type(error).__name__}: {text}"


def _to_rgb(im):
    """Any PIL mode → 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit (and 32-bit int) grayscale
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 / 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        return Image.fromarray(np.clip(a * scale + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("PA", "LA", "RGBA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, LAB, HSV


@dataclass(frozen=True)
class Item:
    """One manifest row as the worker hands it over."""

    row: int  # position in the shard
    image_id: str
    path: str
    image: torch.Tensor | None  # (3, h, w) uint8, channels in the model's order
    orig_size: tuple  # (H, W) of the oriented original
    given: np.ndarray | None  # (n, 4) float32 given boxes in input pixels
    error: str | None


class ImageDataset(torch.utils.data.Dataset):
    """The images of one shard, decoded and resized in DataLoader workers.
    rows: sequence of (image_id, path, gt_boxes) — gt_boxes (n, 4) in original pixels or None."""

    def __init__(self, rows, resize, channel_order="BGR", max_pixels=MAX_IMAGE_PIXELS):
        self.rows, self.resize = rows, resize
        self.channel_order, self.max_pixels = channel_order, max_pixels

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        image_id, path, gt_boxes = self.rows[i]
        try:
            array, (H, W) = load_image(path, self.resize, self.channel_order, self.max_pixels)
        except ImageError as e:
            return Item(i, image_id, path, None, (0, 0), None, str(e))
        h, w = array.shape[:2]
        given = None
        if gt_boxes is not None:
            given = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4) * np.float32(
                [w / W, h / H, w / W, h / H])
        return Item(i, image_id, path, torch.from_numpy(array).permute(2, 0, 1), (H, W), given, None)


@dataclass
class Batch:
    """Images of a batch padded into one tensor, plus the rows that failed to load."""

    images: torch.Tensor  # (B, 3, Hp, Wp) uint8, each image top-left, zero padding
    input_sizes: torch.Tensor  # (B, 2) int64 (h, w) after resizing
    orig_sizes: torch.Tensor  # (B, 2) int64 (H, W) of the originals
    rows: list  # shard positions of the B images
    image_ids: list
    given: list | None  # B float32 tensors (n_i, 4) in input pixels, or None
    failures: list  # (row, image_id, path, reason)

    def pin_memory(self):
        self.images = self.images.pin_memory()
        return self


def collate(items, size_divisibility=32):
    """Pad a list of Items into a Batch (runs in the worker process)."""
    ok = [it for it in items if it.error is None]
    failures = [(it.row, it.image_id, it.path, it.error) for it in items if it.error is not None]
    d = size_divisibility
    hp = -(-max((it.image.shape[1] for it in ok), default=0) // d) * d
    wp = -(-max((it.image.shape[2] for it in ok), default=0) // d) * d
    images = torch.zeros((len(ok), 3, hp, wp), dtype=torch.uint8)
    for k, it in enumerate(ok):
        images[k, :, : it.image.shape[1], : it.image.shape[2]] = it.image
    has_given = any(it.given is not None for it in ok)
    return Batch(
        images=images,
        input_sizes=torch.tensor([it.image.shape[1:] for it in ok], dtype=torch.long).view(-1, 2),
        orig_sizes=torch.tensor([it.orig_size for it in ok], dtype=torch.long).view(-1, 2),
        rows=[it.row for it in ok],
        image_ids=[it.image_id for it in ok],
        given=[torch.from_numpy(it.given if it.given is not None else np.zeros((0, 4), np.float32))
               for it in ok] if has_given else None,
        failures=failures,
    )


def configure_pil():
    """PIL's decompression-bomb guard off: `load_image` enforces its own, configurable cap."""
    Image.MAX_IMAGE_PIXELS = None


def worker_init(_worker_id):
    """DataLoader workers decode; one thread each keeps them off the model's cores."""
    torch.set_num_threads(1)
    configure_pil()
