"""Detectron2 region features: image manifest in, Parquet feature shards out (knows nothing of BERT).

Modules: `detector` (model + batched forward), `butd` (the BUTD architecture and attribute head,
registered with Detectron2), `boxes` (NMS and box selection), `images` (decoding in DataLoader
workers), `writer` (shard schema, streaming, atomic rename), `shard` (the `python -m extract`
CLI), `gather` (the image_id → shard, row index), `vocab` (object / attribute vocabularies),
`weights` (`python -m extract.weights check`), `bench`.
"""
