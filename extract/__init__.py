"""Detectron2 region features: image manifest in, Parquet feature shards out (knows nothing of BERT).

CLIs: `python -m extract` (shard.py), `extract.gather` (the index), `extract.vocab`, `extract.weights`,
`extract.train`. `extract` imports `cavl`, never the other way round: the formats both share live
in `cavl` (`cavl.shards`: the shards' schema, writer and index; `cavl.formats.vocab`: the
vocabulary files). Its benchmark is `python -m benchmarks.extraction`.
"""
