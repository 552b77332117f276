"""Benchmarks: timing and memory figures of the pipeline (docs/benchmarks.md). Not part of the
`cavl` / `extract` packages (nothing there imports them); run from the repository root:

    python -m benchmarks.extraction   # extraction throughput, peak RSS, feature reading, detector training
    python -m benchmarks.pretrain     # a CAVL pretraining step vs VisualBERT's, the data loader
    python -m benchmarks.adapters     # the finetuning methods' cost (and accuracy with --accuracy)
    python -m benchmarks.retrieval    # two-stage vs exhaustive retrieval
    python -m benchmarks.dag          # Snakemake's DAG at paper scale

Synthetic inputs come from cavl.testing, the same fixtures the tests use.
"""
