"""Per-box attributes in feature shards: the writer's columns, gather's vocabulary checks, and
RegionReader.regions (with get unchanged and old shards still readable)."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cavl.data.regions
from cavl.data.regions import OldShardError, RegionReader, Regions
from cavl.shards import SCHEMA_VERSION, ShardWriter, build_index, read_shard_metadata
from extract.gather import main as gather_main

D = 8
VOCABS = {
    "objects": {"file": "objects_vocab.txt", "sha256": "a" * 64, "classes": 1600},
    "attributes": {"file": "attributes_vocab.txt", "sha256": "b" * 64, "classes": 400},
}
META = {"feature_dim": D, "feature_dtype": "float16", "weights_checksum": "sha256:test",
        "detector": {"config_yaml": "x", "weights_checksum": "sha256:test"}, "boxes": {"mode": "fixed"},
        "code_version": "cavl-test", "vocabularies": VOCABS}
# Boxes per image: zero-box images among them, more images than one row group.
COUNTS = [3, 0, 5, 1, 4, 0, 2]


def make_images(prefix, counts=COUNTS, seed=0):
    """{image_id: dict of its per-box arrays}, distinct values everywhere."""
    rng = np.random.default_rng(seed)
    images = {}
    for k, n in enumerate(counts):
        images[f"{prefix}{k}"] = dict(
            n=n, size=(40 + k, 60 + k), num_given=min(n, 1),
            boxes=rng.random((n, 4)).astype(np.float32) * 30,
            scores=rng.random(n).astype(np.float32), classes=rng.integers(0, 1600, n).astype(np.int32),
            attributes=rng.integers(0, 400, n).astype(np.int32),
            attribute_scores=rng.random(n).astype(np.float32),
            features=rng.standard_normal((n, D)).astype(np.float16))
    return images


def write_shard(path, images, with_attributes=True, batch=3, row_group_size=2, **meta):
    """Write images in batches of `batch` images, the way extract.shard calls the writer."""
    ids = list(images)
    with ShardWriter(path, D, "float16", {**META, **meta}, row_group_size=row_group_size) as w:
        for s in range(0, len(ids), batch):
            part = [images[i] for i in ids[s:s + batch]]

            def cat(key, width=None, dtype=np.float32, part=part):
                arrays = [p[key] for p in part]
                return np.concatenate(arrays) if arrays else np.zeros((0,) if width is None else (0, width), dtype)

            extra = {}
            if with_attributes:
                extra = dict(attributes=cat("attributes", dtype=np.int32), attribute_scores=cat("attribute_scores"))
            w.add(ids[s:s + batch], [p["size"] for p in part], [p["n"] for p in part],
                  [p["num_given"] for p in part], cat("boxes", 4), cat("scores"), cat("classes", dtype=np.int32),
                  cat("features", D, np.float16), **extra)
    return path


def write_old_layout_shard(path, images):
    """A shard as written before the attribute columns: the same table without them, schema
    version 1, several row groups."""
    tmp = os.path.join(os.path.dirname(path), "new-layout.parquet")
    write_shard(tmp, images)
    table = pq.read_table(tmp).drop_columns(["attributes", "attribute_scores"])
    meta = {k: json.dumps(v) for k, v in {**META, "schema_version": 1}.items()}
    meta.pop("vocabularies")  # old shards recorded none
    pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=2)
    os.remove(tmp)
    os.remove(tmp.replace(".parquet", ".failures.parquet"))
    return path


def gather(folder, *shards):
    index = os.path.join(folder, "index.parquet")
    assert gather_main(["--shards", *shards, "--out", index]) == 0
    return index


def test_attribute_columns_round_trip_image_by_image_across_row_groups(tmp_path):
    images = make_images("img")
    path = write_shard(str(tmp_path / "shard-00000.parquet"), images)
    assert pq.ParquetFile(path).num_row_groups == 4  # 7 images, 2 per row group

    schema = pq.read_schema(path)
    names = schema.names
    assert names.index("attributes") == names.index("classes") + 1
    assert names.index("attribute_scores") == names.index("attributes") + 1
    assert schema.field("attributes").type.equals(pa.list_(pa.int32()))
    assert schema.field("attribute_scores").type.equals(pa.list_(pa.float32()))
    assert read_shard_metadata(path)["schema_version"] == SCHEMA_VERSION == 2

    # Plain pyarrow sees one list per image, aligned with its boxes.
    table = pq.read_table(path).to_pydict()
    assert table["image_id"] == list(images)
    for k, (image_id, want) in enumerate(images.items()):
        assert table["attributes"][k] == want["attributes"].tolist()
        np.testing.assert_array_equal(np.asarray(table["attribute_scores"][k], np.float32), want["attribute_scores"])
    assert table["attributes"][1] == []  # no boxes: an empty list, not null

    reader = RegionReader(gather(str(tmp_path), path))
    assert reader.vocabularies == VOCABS
    for image_id in reversed(list(images)):  # out of order, across row groups
        want = images[image_id]
        r = reader.regions(image_id)
        assert isinstance(r, Regions)
        assert r.num_boxes == want["n"]
        assert r.attributes.dtype == np.int32 and r.attribute_scores.dtype == np.float32
        np.testing.assert_array_equal(r.attributes, want["attributes"])
        np.testing.assert_array_equal(r.attribute_scores, want["attribute_scores"])
        np.testing.assert_array_equal(r.classes, want["classes"])
        np.testing.assert_array_equal(r.scores, want["scores"])
        np.testing.assert_array_equal(r.boxes, want["boxes"])
        np.testing.assert_array_equal(r.features, want["features"])
        for array in (r.attributes, r.attribute_scores, r.classes, r.scores, r.features):
            assert not array.flags.writeable
    with pytest.raises(KeyError, match="nope"):
        reader.regions("nope")


def test_without_an_attribute_head_the_values_are_null_not_empty(tmp_path):
    images = make_images("img")
    path = write_shard(str(tmp_path / "shard-00000.parquet"), images, with_attributes=False,
                       vocabularies={"objects": VOCABS["objects"], "attributes": None})
    table = pq.read_table(path)
    for name in ("attributes", "attribute_scores"):
        assert table.column(name).null_count == len(images)  # zero-box images too
    reader = RegionReader(gather(str(tmp_path), path))
    assert reader.vocabularies == {"objects": VOCABS["objects"], "attributes": None}
    for image_id, want in images.items():
        r = reader.regions(image_id)
        assert r.attributes is None and r.attribute_scores is None
        assert r.num_boxes == want["n"]
        np.testing.assert_array_equal(r.classes, want["classes"])
        np.testing.assert_array_equal(r.scores, want["scores"])


def test_writer_refuses_inconsistent_attributes(tmp_path):
    args = (["a"], [[10, 10]], [2], [0], np.zeros((2, 4)), [0.5, 0.4], [1, 2], np.ones((2, D)))
    cases = [
        (dict(attributes=[1, 2]), "both"),
        (dict(attributes=[1], attribute_scores=[0.5]), "do not match"),
        (dict(attributes=[1, 400], attribute_scores=[0.5, 0.5]), r"\[0, 400\)"),  # a 1-based id
        (dict(attributes=[-1, 3], attribute_scores=[0.5, 0.5]), "0-based"),
        (dict(attributes=[0.5, 1.5], attribute_scores=[0.5, 0.5]), "integer"),
    ]
    for k, (extra, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            with ShardWriter(str(tmp_path / f"shard-{k:05d}.parquet"), D, metadata=META) as w:
                w.add(*args, **extra)
    with pytest.raises(ValueError, match="some batches"):
        with ShardWriter(str(tmp_path / "shard-00010.parquet"), D, metadata=META) as w:
            w.add(*args, attributes=[1, 2], attribute_scores=[0.5, 0.5])
            w.add(*args)
    assert os.listdir(tmp_path) == []  # none of them committed a shard


def test_schema_version_is_added_when_the_caller_gives_none(tmp_path):
    images = make_images("img", [1])
    assert "schema_version" not in META
    path = write_shard(str(tmp_path / "shard-00000.parquet"), images)
    assert read_shard_metadata(path)["schema_version"] == 2
    other = write_shard(str(tmp_path / "shard-00001.parquet"), images, schema_version=7)
    assert read_shard_metadata(other)["schema_version"] == 7


def test_get_is_unchanged_and_reads_only_boxes_and_features(tmp_path, monkeypatch):
    images = make_images("img")
    path = write_shard(str(tmp_path / "shard-00000.parquet"), images)
    reader = RegionReader(gather(str(tmp_path), path))

    read_columns = []
    real_read_table = cavl.data.regions.pq.read_table

    def spy(source, *args, columns=None, **kwargs):
        read_columns.append(columns)
        return real_read_table(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(cavl.data.regions.pq, "read_table", spy)
    for image_id, want in images.items():
        got = reader[image_id]
        assert type(got) is tuple and len(got) == 3
        features, boxes, n = got
        assert n == want["n"] and type(n) is int
        np.testing.assert_array_equal(features, want["features"])
        np.testing.assert_array_equal(boxes, want["boxes"])
        assert features.dtype == np.float16 and boxes.dtype == np.float32 and boxes.shape == (n, 4)
        assert not features.flags.writeable
    assert read_columns == [["boxes", "features"]]  # one shard, loaded once, without the other columns
    reader.regions("img0")
    assert read_columns[1:] == [["classes", "scores", "attributes", "attribute_scores"]]  # lazily, once
    reader.regions("img4")
    assert len(read_columns) == 2


def test_old_layout_shard_gathers_reads_with_get_and_regions_names_the_rule(tmp_path):
    images = make_images("old")
    path = write_old_layout_shard(str(tmp_path / "shard-00000.parquet"), images)
    assert "attributes" not in pq.read_schema(path).names and pq.ParquetFile(path).num_row_groups == 4

    index = gather(str(tmp_path), path)
    reader = RegionReader(index)
    assert reader.vocabularies is None
    assert read_shard_metadata(index)["vocabularies"] is None  # the key is there, null
    for image_id, want in images.items():
        features, boxes, n = reader.get(image_id)
        assert n == want["n"]
        np.testing.assert_array_equal(features, want["features"])
        np.testing.assert_array_equal(boxes, want["boxes"])
    with pytest.raises(OldShardError, match=r"shard-00000\.parquet was written before shards had attribute "
                                            r"columns.*re-extract.*snakemake --forcerun extract_shard") as error:
        reader.regions("old2")
    assert isinstance(error.value, ValueError) and path in str(error.value)
    features, boxes, n = reader.get("old2")  # still readable after the error
    assert n == images["old2"]["n"]


def test_gather_refuses_shards_whose_vocabularies_differ_and_carries_them_into_the_index(tmp_path):
    first = write_shard(str(tmp_path / "shard-00000.parquet"), make_images("a"))
    same = write_shard(str(tmp_path / "shard-00001.parquet"), make_images("b"),
                       vocabularies=json.loads(json.dumps(VOCABS)))
    other_attributes = write_shard(str(tmp_path / "shard-00002.parquet"), make_images("c"), vocabularies={
        **VOCABS, "attributes": {**VOCABS["attributes"], "sha256": "c" * 64}})
    other_objects = write_shard(str(tmp_path / "shard-00003.parquet"), make_images("d"), vocabularies={
        **VOCABS, "objects": {**VOCABS["objects"], "sha256": "d" * 64}})
    no_head = write_shard(str(tmp_path / "shard-00004.parquet"), make_images("e"), with_attributes=False,
                          vocabularies={"objects": VOCABS["objects"]})
    none = write_shard(str(tmp_path / "shard-00005.parquet"), make_images("f"), vocabularies=None)

    for odd in (other_attributes, other_objects, no_head, none):
        with pytest.raises(ValueError, match="vocabularies differ") as error:
            build_index([first, odd])
        assert os.path.basename(odd) in str(error.value)
    with pytest.raises(ValueError, match="vocabularies differ"):
        build_index([other_attributes, first])  # whichever comes first

    table, metadata = build_index([same, first])
    assert metadata["vocabularies"] == VOCABS and len(table) == 2 * len(COUNTS)
    index = gather(str(tmp_path), first, same)
    meta = {k.decode(): json.loads(v) for k, v in pq.read_schema(index).metadata.items()}
    assert meta["vocabularies"] == VOCABS
    assert RegionReader(index).vocabularies == VOCABS


def test_gather_refuses_old_layout_shards_among_new_ones(tmp_path):
    new = write_shard(str(tmp_path / "shard-00000.parquet"), make_images("a"), schema_version=1,
                      vocabularies=None)
    old = write_old_layout_shard(str(tmp_path / "shard-00001.parquet"), make_images("b"))
    assert read_shard_metadata(new)["schema_version"] == read_shard_metadata(old)["schema_version"] == 1
    with pytest.raises(ValueError, match="columns"):
        build_index([new, old])
    newer = write_shard(str(tmp_path / "shard-00002.parquet"), make_images("c"), vocabularies=None)
    with pytest.raises(ValueError, match="schema_version"):
        build_index([old, newer])
