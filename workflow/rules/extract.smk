# Region features: one Detectron2 extraction job per manifest shard, then an index per dataset.
# Shard k of a dataset holds manifest rows [k·S, (k+1)·S), S = extract.shard_size; the number of
# shards is known once the manifest (a checkpoint) exists. Downstream rules depend on
# feature_index(dataset) and read features with cavl.features.FeatureReader.
import math
import shlex

import pyarrow.parquet as pq

EXTRACT = config["extract"]

localrules:
    gather_features,


def feature_index(dataset):
    """The image_id → (shard, row) index of a dataset's features: what downstream rules depend on."""
    return f"resources/features/{dataset}/index.parquet"


def feature_shards(dataset):
    """All shard files of a dataset (reads the row count of its manifest checkpoint)."""
    manifest = checkpoints.manifest.get(dataset=dataset).output[0]
    count = max(1, math.ceil(pq.read_metadata(manifest).num_rows / EXTRACT["shard_size"]))
    return [f"resources/features/{dataset}/shard-{k:05d}.parquet" for k in range(count)]


def extract_options(dataset):
    """Every option that shapes the features (params: changing one re-extracts the dataset)."""
    d, b = EXTRACT["detector"], EXTRACT["boxes"]
    options = [
        "--detector-config", d["config"], "--weights", d["weights"] or "none", "--seed", d["seed"],
        "--device", d["device"],
        "--mode", b["mode"], "--max-boxes", b["max_boxes"], "--min-boxes", b["min_boxes"],
        "--score-threshold", b["score_threshold"], "--nms", b["nms_threshold"],
        "--given-boxes", EXTRACT["given_boxes"][dataset],
        "--feature-dtype", EXTRACT["feature_dtype"], "--batch-size", EXTRACT["batch_size"],
        "--row-group-size", EXTRACT["row_group_size"], "--max-image-pixels", EXTRACT["max_image_pixels"],
    ]
    for key, flag in (("min_size", "--min-size"), ("max_size", "--max-size"), ("proposals", "--proposals")):
        if d[key] is not None:
            options += [flag, d[key]]
    if not d["amp"]:
        options.append("--no-amp")
    if d["opts"]:
        options += ["--opts", *d["opts"]]
    return " ".join(shlex.quote(str(o)) for o in options)


rule extract_shard:
    """Region features of one manifest shard (+ its failures table); written atomically."""
    input:
        manifest="resources/manifests/{dataset}.parquet",
        weights=lambda w: [EXTRACT["detector"]["weights"]] if EXTRACT["detector"]["weights"] else [],
    output:
        shard="resources/features/{dataset}/shard-{shard}.parquet",
        failures="resources/features/{dataset}/shard-{shard}.failures.parquet",
    wildcard_constraints:
        shard=r"\d{5}",
    params:
        options=lambda w: extract_options(w.dataset),
        shard_size=EXTRACT["shard_size"],
        workers=EXTRACT["num_workers"],
    log:
        "logs/extract/{dataset}/shard-{shard}.log",
    threads: EXTRACT["threads"]
    resources:
        gpu=EXTRACT["gpu"],
        mem_mb=EXTRACT["mem_mb"],
    conda:
        "../../envs/cavl.yaml"
    shell:
        "python -m extract --manifest {input.manifest} --shard {wildcards.shard} "
        "--shard-size {params.shard_size} --out {output.shard} --failures-out {output.failures} "
        "{params.options} --num-workers {params.workers} --threads {threads} > {log} 2>&1"


rule gather_features:
    """image_id → (shard, row) index over all shards of a dataset; checks they match."""
    input:
        shards=lambda w: feature_shards(w.dataset),
    output:
        "resources/features/{dataset}/index.parquet",
    log:
        "logs/extract/{dataset}/gather.log",
    conda:
        "../../envs/cavl.yaml"
    shell:
        "python -m extract.gather --shards {input.shards} --out {output} > {log} 2>&1"
