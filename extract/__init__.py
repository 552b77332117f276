"""Detectron2 region features: image manifest in, Parquet feature shards out (knows nothing of BERT).

Modules: `detector` (model + batched forward), `butd` (the BUTD architecture and attribute head,
registered with Detectron2), `boxes` (NMS and box selection), `images` (decoding in DataLoader
workers), `shard` (the `python -m extract` CLI; the per-image reference predictor), `gather` (the
image_id → shard, row index CLI), `vocab` (object / attribute vocabularies), `weights` (`python -m
extract.weights check`), `train` (detector training).

`extract` imports `cavl`, never the other way round: the formats both sides share live in `cavl`
— the feature shards' schema, writer and index in `cavl.shards`, the vocabulary files in
`cavl.formats.vocab`. Its benchmark is `python -m benchmarks.extraction`.
"""
