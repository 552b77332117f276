"""Image decoding (extract/images.py) and the bad-image set through a whole shard."""

import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cavl.testing import write_bad_images, write_manifest
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig
from extract.images import ImageError, Resize, configure_pil, load_image
from extract.shard import run_shard

RESIZE = Resize(96, 160)


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    configure_pil()
    return write_bad_images(str(tmp_path_factory.mktemp("bad")))


def test_each_awkward_image_is_read_or_refused_with_its_reason(bad_images):
    for image_id, (path, (outcome, detail)) in bad_images.items():
        if outcome == "fail":
            with pytest.raises(ImageError, match=detail):
                load_image(path, RESIZE)
            continue
        array, size = load_image(path, RESIZE)
        assert size == detail, image_id
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3, image_id
        assert array.shape[:2] == RESIZE.output_shape(*size), image_id


def test_resize_matches_detectron2_resize_shortest_edge():
    from detectron2.data.transforms import ResizeShortestEdge

    for h, w in [(480, 640), (640, 480), (1, 1), (9000, 12000), (100, 101), (333, 1000), (3, 5000)]:
        want = ResizeShortestEdge.get_output_shape(h, w, 224, 373)
        assert RESIZE.__class__(224, 373).output_shape(h, w) == (max(want[0], 1), max(want[1], 1))


def test_channels_come_in_the_models_order(tmp_path):
    path = str(tmp_path / "red.png")
    Image.new("RGB", (20, 10), (255, 0, 0)).save(path)
    bgr, _ = load_image(path, RESIZE, "BGR")
    rgb, _ = load_image(path, RESIZE, "RGB")
    assert tuple(bgr[5, 5]) == (0, 0, 255) and tuple(rgb[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide × 48 tall, left half red; orientation 6 = shown rotated 90° clockwise,
    # so the red half ends up on top of a 48 wide × 64 tall image.
    array = np.zeros((48, 64, 3), np.uint8)
    array[:, :32] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)
    out, size = load_image(path, Resize(64, 200), "RGB")
    assert size == (64, 48) and out.shape[:2] == (85, 64)
    assert out[:35, :, 0].mean() > 200 and out[50:, :, 0].mean() < 50


def test_colour_modes_convert_sensibly(tmp_path):
    sixteen = np.array([[0, 65535]], np.uint16).repeat(8, 0).repeat(8, 1)
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    out, _ = load_image(str(tmp_path / "16.png"), Resize(16, 16), "RGB")
    assert out[:, :4].max() == 0 and out[:, -4:].min() == 255  # scaled to 8 bits, not clipped

    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=100)
    out, _ = load_image(str(tmp_path / "cyan.jpg"), Resize(16, 16), "RGB")
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r < 30 and g > 225 and b > 225

    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    out, _ = load_image(str(tmp_path / "clear.png"), Resize(16, 16), "RGB")
    assert out.min() == 255  # transparent → white background

    Image.new("L", (16, 16), 77).save(tmp_path / "gray.png")
    out, _ = load_image(str(tmp_path / "gray.png"), Resize(16, 16), "RGB")
    assert (out == 77).all()


def test_huge_jpeg_decodes_at_reduced_scale_quickly(bad_images):
    path = bad_images["huge"][0]
    t = time.perf_counter()
    out, size = load_image(path, Resize(224, 373))
    assert time.perf_counter() - t < 5.0
    assert size == (9000, 12000) and out.shape == (224, 299, 3)
    # The red rectangle drawn at [W/4, W/2] × [H/4, H/2] is where it should be (BGR).
    assert out[75, 110, 2] > 180 and out[75, 110, 0] < 80 and out[200, 250, 2] < 120


def test_pixel_cap_is_a_failure_not_a_crash(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="too large"):
        load_image(str(tmp_path / "big.png"), RESIZE, max_pixels=5000)


def test_shard_over_the_bad_image_set_completes_and_records_failures(bad_images, tmp_path):
    rows = [{"image_id": k, "path": p} for k, (p, _) in bad_images.items()]
    manifest = write_manifest(str(tmp_path / "manifest.parquet"), rows)
    out = str(tmp_path / "shard-00000.parquet")
    summary = run_shard(manifest, 0, out, DetectorConfig(min_size=96, max_size=160, proposals=100),
                        BoxConfig(max_boxes=10), shard_size=len(rows), batch_size=4, num_workers=1)
    assert os.path.exists(out)
    failures = pq.read_table(out.replace(".parquet", ".failures.parquet")).to_pandas()
    expected_fail = {k: d for k, (_, (outcome, d)) in bad_images.items() if outcome == "fail"}
    assert set(failures.image_id) == set(expected_fail)
    for r in failures.itertuples():
        assert expected_fail[r.image_id] in r.reason and r.path == bad_images[r.image_id][0]

    df = pq.read_table(out).to_pandas()
    expected_ok = {k: d for k, (_, (outcome, d)) in bad_images.items() if outcome == "ok"}
    assert sorted(df.image_id) == sorted(expected_ok)
    assert summary["extracted"] == len(expected_ok) and summary["failed"] == len(expected_fail)
    for r in df.itertuples():
        assert (r.height, r.width) == expected_ok[r.image_id]
        assert r.num_boxes == 10
        boxes = np.stack(r.boxes)
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= r.width).all() and (boxes[:, [1, 3]] <= r.height).all()
        assert np.isfinite(np.frombuffer(r.features, np.float16)).all()
