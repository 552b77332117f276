"""The data layer every stage reads regions and batches through.

- `cavl.data.regions`: the one reader of feature shards (`RegionReader`), what a model sees of an
  image (`RegionSource` → `ImageRegions`: float32 features, boxes normalised by the image size),
  the one padding path (`pad_regions`) and the feature statistics the model standardises with.
- `cavl.data.batches`: the one sampler — which items batch k of an epoch holds on each rank
  (`EpochBatches`, the base of pretraining's and finetuning's datasets) — and `make_loader`.
"""
