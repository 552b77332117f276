"""Detectron2 region features: image manifest in, Parquet feature shards out (knows nothing of BERT).

Modules: `detector` (model + batched forward), `boxes` (NMS and box selection), `images`
(decoding in DataLoader workers), `writer` (shard schema, streaming, atomic rename), `shard`
(the `python -m extract` CLI), `gather` (the image_id → shard, row index), `bench`.
"""
