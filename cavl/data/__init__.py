"""The data layer every stage reads regions and batches through: `cavl.data.regions` (the shard
reader, what a model sees of an image, padding, feature statistics) and `cavl.data.batches` (the
one sampler across ranks, `EpochBatches`, and `make_loader`).
"""
