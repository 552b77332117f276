"""The batched pipeline agrees with a per-image DefaultPredictor-style path; given-box mode
returns features for exactly the given boxes, in order, computed independently here."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cavl.testing import write_manifest, write_scenes
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig, RegionExtractor
from extract.shard import PerImagePredictor, run_shard

TINY = dict(min_size=96, max_size=160, proposals=200)


def shard_rows(path):
    df = pq.read_table(path).to_pandas()
    for r in df.itertuples():
        yield r, np.stack(r.boxes), np.frombuffer(r.features, np.float32).reshape(r.num_boxes, -1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("same_size")
    # Same size: batched padding equals per-image padding, so the two paths must agree.
    rows = write_scenes(str(folder / "img"), [(96, 128)] * 4, seed=7)
    return str(folder), rows


def test_batched_pipeline_matches_per_image_predictor(images, tmp_path):
    folder, rows = images
    manifest = write_manifest(str(tmp_path / "m.parquet"), rows)
    extractor = RegionExtractor(DetectorConfig(**TINY), BoxConfig(max_boxes=16))
    out = str(tmp_path / "shard-00000.parquet")
    run_shard(manifest, 0, out, None, None, shard_size=4, batch_size=4, num_workers=1,
              feature_dtype="float32", extractor=extractor)
    predictor = PerImagePredictor(extractor)
    paths = {r["image_id"]: r["path"] for r in rows}
    checked = 0
    for r, boxes, feats in shard_rows(out):
        single = predictor(paths[r.image_id])
        assert int(single["counts"][0]) == r.num_boxes == 16
        assert single["classes"].tolist() == list(r.classes)
        np.testing.assert_allclose(single["boxes"].numpy(), boxes, atol=1e-3)
        np.testing.assert_allclose(single["scores"].numpy(), r.scores, rtol=1e-4, atol=1e-6)
        scale = np.abs(feats).max()
        np.testing.assert_allclose(single["features"].numpy(), feats, rtol=1e-4, atol=1e-4 * scale)
        checked += 1
    assert checked == 4


def independent_box_features(extractor, path, boxes_orig):
    """Pooled features of `boxes_orig` straight from detectron2's own pieces (not our forward)."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import Boxes

    model = extractor.model
    image = read_image(path, format="BGR")
    transform = T.ResizeShortestEdge([extractor.min_size] * 2, extractor.max_size).get_transform(image)
    resized = transform.apply_image(image)
    boxes = torch.as_tensor(transform.apply_box(np.asarray(boxes_orig, np.float32)))
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad():
        batched = model.preprocess_image([{"image": tensor}])
        features = model.backbone(batched.tensor)
        heads = model.roi_heads
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes)])
        return heads.box_head(pooled).numpy()


@pytest.mark.parametrize("mode", ["given", "given+detected"])
def test_given_boxes_get_their_own_features_in_order(images, tmp_path, mode):
    folder, rows = images
    manifest = write_manifest(str(tmp_path / "m.parquet"), rows)
    out = str(tmp_path / "shard-00000.parquet")
    max_boxes = 12
    extractor = RegionExtractor(DetectorConfig(**TINY), BoxConfig(max_boxes=max_boxes, given=mode))
    run_shard(manifest, 0, out, None, None, shard_size=4, batch_size=2, num_workers=0,
              feature_dtype="float32", extractor=extractor)
    given = {r["image_id"]: np.asarray(r["gt_boxes"], np.float32) for r in rows}
    paths = {r["image_id"]: r["path"] for r in rows}
    for r, boxes, feats in shard_rows(out):
        gt = given[r.image_id]
        n = len(gt)
        assert n >= 2 and r.num_given == n
        assert r.num_boxes == (n if mode == "given" else max(n, max_boxes))
        np.testing.assert_allclose(boxes[:n], gt, atol=1e-3)  # exactly the given boxes, in order
        want = independent_box_features(extractor, paths[r.image_id], gt)
        np.testing.assert_allclose(feats[:n], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        if mode == "given+detected":
            assert np.all(np.diff(np.asarray(r.scores)[n:]) <= 0)  # detected part sorted by score
