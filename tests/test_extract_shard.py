"""Shard extraction end to end with a random-weight R50-FPN on tiny images: box invariants, the
on-disk schema read back with plain pyarrow/pandas, atomicity and resume after SIGKILL, the
gather index, the feature reader, checkpoint loading."""

import json
import math
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cavl.shards import ShardWriter
from cavl.testing import write_manifest, write_scenes
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig, RegionExtractor, load_weights, read_checkpoint
from extract.shard import run_shard, shard_range
from test_extract_boxes import iou  # the independent numpy IoU reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(min_size=96, max_size=160, proposals=200)  # small inputs keep CPU tests fast
MAX_BOXES, NMS = 20, 0.5
SIZES = [(64, 96), (120, 80), (160, 160), (100, 150), (90, 90), (72, 128)]




@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    rows = write_scenes(str(folder / "images"), SIZES, seed=3)
    return write_manifest(str(folder / "manifest.parquet"), rows), rows


@pytest.fixture(scope="module")
def extracted(scenes, tmp_path_factory):
    manifest, _ = scenes
    out = str(tmp_path_factory.mktemp("features") / "shard-00000.parquet")
    summary = run_shard(manifest, 0, out, DetectorConfig(**TINY), BoxConfig(max_boxes=MAX_BOXES, nms_threshold=NMS),
                        shard_size=len(SIZES), batch_size=3, num_workers=1, row_group_size=2)
    return out, summary


def test_every_image_gets_exactly_max_boxes_sorted_inside_and_nms_clean(extracted, scenes):
    path, summary = extracted
    assert summary["extracted"] == len(SIZES) and summary["failed"] == 0
    df = pq.read_table(path).to_pandas()
    rows = {r["image_id"]: r for r in scenes[1]}
    for _, r in df.iterrows():
        W, H = rows[r.image_id]["width"], rows[r.image_id]["height"]
        assert (r.width, r.height) == (W, H)
        boxes, scores, classes = np.stack(r.boxes), np.asarray(r.scores), np.asarray(r.classes)
        assert r.num_boxes == MAX_BOXES == len(boxes) == len(scores) == len(classes)
        assert np.all(np.diff(scores) <= 0), "scores not sorted"
        assert np.all(scores > 0), "fill-up boxes: the NMS check below would not cover them"
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= W + 1e-3) and np.all(boxes[:, 3] <= H + 1e-3)
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        for c in np.unique(classes):
            same = boxes[classes == c]
            overlap = iou(same, same)
            np.fill_diagonal(overlap, 0)
            assert overlap.max(initial=0) <= NMS + 1e-4, f"class {c}: kept boxes overlap {overlap.max()}"
        feats = np.frombuffer(r.features, np.float16).reshape(r.num_boxes, -1)
        assert feats.shape == (MAX_BOXES, 1024) and np.isfinite(feats).all()
        assert len({f.tobytes() for f in feats}) == MAX_BOXES  # distinct boxes, distinct features


def test_shard_has_documented_schema_with_plain_pyarrow_and_pandas(extracted):
    path, _ = extracted
    schema = pq.read_schema(path)
    expected = {
        "image_id": pa.string(), "width": pa.int32(), "height": pa.int32(), "num_boxes": pa.int32(),
        "num_given": pa.int32(), "boxes": pa.list_(pa.list_(pa.float32(), 4)),
        "scores": pa.list_(pa.float32()), "classes": pa.list_(pa.int32()),
        "attributes": pa.list_(pa.int32()), "attribute_scores": pa.list_(pa.float32()),
        "features": pa.large_binary(),
    }
    assert schema.names == list(expected)
    for name, type_ in expected.items():
        assert schema.field(name).type.equals(type_), (name, schema.field(name).type)
    meta = {k.decode(): json.loads(v) for k, v in schema.metadata.items() if not k.startswith(b"ARROW")}
    assert meta["feature_dim"] == 1024 and meta["feature_dtype"] == "float16"
    assert meta["nms_threshold"] == NMS and meta["boxes"]["max_boxes"] == MAX_BOXES
    assert meta["boxes"]["mode"] == "fixed"
    assert meta["weights_checksum"].startswith("random-init:seed=0:sha256:")
    assert meta["detector"]["random_init"] is True and meta["detector"]["config"].endswith("R_50_FPN_3x.yaml")
    assert meta["detector"]["min_size_test"] == 96 and "MIN_SIZE_TEST: 96" in meta["detector"]["config_yaml"]
    assert meta["code_version"].startswith("cavl-")
    assert schema.field("features").metadata[b"dtype"] == b"float16"
    df = pd.read_parquet(path)
    row = df.iloc[0]
    feats = np.frombuffer(row.features, np.dtype(meta["feature_dtype"])).reshape(row.num_boxes, meta["feature_dim"])
    assert feats.dtype == np.float16 and np.stack(row.boxes).shape == (row.num_boxes, 4)
    # Streamed: one row group per row_group_size images, not one big table.
    assert pq.ParquetFile(path).num_row_groups == math.ceil(len(SIZES) / 2)
    failures = pq.read_table(path.replace(".parquet", ".failures.parquet"))
    assert failures.schema.names == ["image_id", "path", "reason"] and failures.num_rows == 0


def test_shard_ranges():
    assert shard_range(10, 0, shard_size=4) == (0, 4)
    assert shard_range(10, 2, shard_size=4) == (8, 10)
    assert shard_range(10, 3, num_shards=4) == (9, 10)
    assert shard_range(0, 0, shard_size=4) == (0, 0)  # an empty manifest: one empty shard
    with pytest.raises(ValueError, match="past the end"):
        shard_range(10, 3, shard_size=4)
    with pytest.raises(ValueError, match="out of range"):
        shard_range(10, 4, num_shards=4)


def test_an_exception_inside_the_writer_leaves_no_files(tmp_path):
    out = tmp_path / "shard-00000.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(str(out), 8, row_group_size=1) as w:
            w.add(["a"], [[10, 10]], [1], [0], np.zeros((1, 4)), [0.5], [1], np.ones((1, 8)))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def _cli(manifest, out, **output):
    """The CLI with the settings of the `extracted` fixture (so its shard is the reference)."""
    settings = {"detector": {"min_size": 96, "max_size": 160, "proposals": 200},
                "boxes": {"max_boxes": MAX_BOXES, "nms_threshold": NMS}, "batch_size": 3, **output}
    return [sys.executable, "-m", "extract", "--manifest", manifest, "--shard", "0",
            "--shard-size", str(len(SIZES)), "--out", out, "--num-workers", "1",
            "--threads", str(torch.get_num_threads()), "--settings", json.dumps(settings)]


def test_sigkill_mid_shard_leaves_no_shard_and_a_rerun_matches_an_uninterrupted_run(scenes, extracted, tmp_path):
    manifest, _ = scenes
    out = str(tmp_path / "shard-00000.parquet")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(_cli(manifest, out, row_group_size=1), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, text=True, cwd=ROOT)
    seen = []
    for line in proc.stderr:  # the first progress line comes after the first batch is written
        seen.append(line)
        if "images (" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    left = os.listdir(tmp_path)
    assert "shard-00000.parquet" not in left and "shard-00000.failures.parquet" not in left
    assert any(name.startswith(".shard-00000.parquet.") for name in left), left  # it was mid-write

    rerun = subprocess.run(_cli(manifest, out, row_group_size=2), capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["shard-00000.failures.parquet", "shard-00000.parquet"]

    got, want = pq.read_table(out).to_pandas(), pq.read_table(extracted[0]).to_pandas()
    assert got.image_id.tolist() == want.image_id.tolist()
    for column in ("width", "height", "num_boxes", "num_given"):
        assert got[column].tolist() == want[column].tolist()
    for g, w in zip(got.itertuples(), want.itertuples()):
        assert np.array_equal(g.classes, w.classes)
        np.testing.assert_allclose(np.stack(g.boxes), np.stack(w.boxes), atol=1e-3)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-4)
        gf, wf = (np.frombuffer(x, np.float16).astype(np.float32) for x in (g.features, w.features))
        np.testing.assert_allclose(gf, wf, rtol=1e-2, atol=1e-2 * np.abs(wf).max())


def test_gather_index_and_feature_reader(extracted, tmp_path):
    from cavl.data.regions import RegionReader
    from extract.gather import main as gather_main

    path, _ = extracted
    folder = os.path.dirname(path)
    # A second shard of the same "dataset", written directly (same metadata, other images, the
    # next manifest rows, without the manifest's total: no coverage check).
    meta = {k.decode(): json.loads(v) for k, v in pq.read_schema(path).metadata.items()
            if not k.startswith(b"ARROW") and k != b"manifest_num_rows"}
    meta["manifest_rows"] = [len(SIZES), len(SIZES) + 5]
    second = os.path.join(folder, "shard-00001.parquet")
    rng = np.random.default_rng(0)
    with ShardWriter(second, 1024, metadata={**meta, "shard": 1}, row_group_size=2) as w:
        for k in range(5):
            n = k + 1
            w.add([f"extra{k}"], [[50, 60]], [n], [0], rng.random((n, 4)) * 50, rng.random(n), rng.integers(0, 80, n),
                  rng.standard_normal((n, 1024)))
    index = os.path.join(folder, "index.parquet")
    assert gather_main(["--shards", second, path, "--out", index]) == 0

    table = pq.read_table(index).to_pandas()
    assert len(table) == len(SIZES) + 5
    assert table.shard.tolist() == [0] * len(SIZES) + [1] * 5 and table.row.tolist()[-5:] == [0, 1, 2, 3, 4]
    reader = RegionReader(index, max_cached_shards=1)
    for shard_path in (path, second):
        df = pd.read_parquet(shard_path)
        for r in df.itertuples():
            features, boxes, n = reader.get(r.image_id)
            assert n == r.num_boxes
            assert np.array_equal(features, np.frombuffer(r.features, np.float16).reshape(n, 1024))
            assert np.array_equal(boxes, np.stack(r.boxes))
            assert not features.flags.writeable
    with pytest.raises(KeyError, match="nope"):
        reader.get("nope")


def test_gather_refuses_mixed_detectors_and_duplicate_ids(extracted, tmp_path):
    from cavl.shards import build_index

    path, _ = extracted
    meta = {k.decode(): json.loads(v) for k, v in pq.read_schema(path).metadata.items()
            if not k.startswith(b"ARROW")}

    def shard(name, ids, **changes):
        out = str(tmp_path / name)
        with ShardWriter(out, 1024, metadata={**meta, **changes}) as w:
            for i in ids:
                w.add([i], [[10, 10]], [1], [0], np.zeros((1, 4)), [0.5], [1], np.zeros((1, 1024)))
        return out

    other = shard("shard-00001.parquet", ["z"], weights_checksum="sha256:0123")
    with pytest.raises(ValueError, match="weights_checksum"):
        build_index([path, other])
    duplicate = shard("shard-00002.parquet", ["img00000"])
    with pytest.raises(ValueError, match="img00000"):
        build_index([path, duplicate])


def test_gather_refuses_shards_that_do_not_cover_the_manifest(extracted, tmp_path):
    """Shards planned from an older, shorter manifest: the index would silently miss images."""
    from cavl.shards import build_index

    path, _ = extracted
    meta = {k.decode(): json.loads(v) for k, v in pq.read_schema(path).metadata.items()
            if not k.startswith(b"ARROW")}
    n = len(SIZES)
    assert meta["manifest_rows"] == [0, n] and meta["manifest_num_rows"] == n
    build_index([path])  # one shard, the whole manifest

    def shard(name, ids, rows, total):
        out = str(tmp_path / name)
        with ShardWriter(out, 1024, metadata={**meta, "manifest_rows": rows, "manifest_num_rows": total}) as w:
            for i in ids:
                w.add([i], [[10, 10]], [1], [0], np.zeros((1, 4)), [0.5], [1], np.zeros((1, 1024)))
        return out

    first = shard("shard-00000.parquet", ["a", "b"], [0, 2], 6)
    second = shard("shard-00001.parquet", ["c", "d"], [2, 4], 6)
    with pytest.raises(ValueError, match=r"manifest changed after this run planned its shards.*again"):
        build_index([first, second])
    third = shard("shard-00002.parquet", ["e", "f"], [4, 6], 6)
    table, _ = build_index([first, second, third])
    assert table.column("image_id").to_pylist() == ["a", "b", "c", "d", "e", "f"]


def test_checkpoints_load_without_pickled_code(tmp_path):
    from detectron2.modeling import build_model

    from extract.detector import build_cfg

    dcfg = DetectorConfig(**TINY)
    torch.manual_seed(123)
    source = build_model(build_cfg(dcfg))
    state = {k: v.clone() for k, v in source.state_dict().items()}

    pth = tmp_path / "model.pth"
    torch.save({"model": state, "iteration": 7}, pth)
    pkl = tmp_path / "model.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)

    for path in (pth, pkl):
        torch.manual_seed(0)
        target = build_model(build_cfg(dcfg))
        load_weights(target, str(path))
        loaded = target.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state), path

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": Exploit()}, "__author__": "x"}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_checkpoint(str(evil))
    assert not (tmp_path / "pwned").exists()
    evil_pth = tmp_path / "evil.pth"
    with open(evil_pth, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        read_checkpoint(str(evil_pth))
    assert not (tmp_path / "pwned").exists()


def test_shard_metadata_records_the_weights_checksum_of_a_checkpoint(scenes, tmp_path):
    manifest, _ = scenes
    extractor = RegionExtractor(DetectorConfig(**TINY), BoxConfig(max_boxes=5))
    weights = tmp_path / "model.pth"
    torch.save(extractor.model.state_dict(), weights)
    loaded = RegionExtractor(DetectorConfig(**TINY, weights=str(weights)), BoxConfig(max_boxes=5))
    assert loaded.weights_checksum.startswith("sha256:") and not loaded.describe()["random_init"]
    # Loading the random model's own weights reproduces it, RPN deltas included.
    assert torch.equal(loaded.model.proposal_generator.rpn_head.anchor_deltas.weight,
                       extractor.model.proposal_generator.rpn_head.anchor_deltas.weight)
