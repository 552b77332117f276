# Region features: one Detectron2 extraction job per manifest shard, then an index per dataset.
# Shard k of a dataset holds manifest rows [k·S, (k+1)·S), S = extract.shard_size; the number of
# shards is known once the manifest (a checkpoint) exists. Downstream rules depend on
# feature_index(dataset) and read features with cavl.data.regions.RegionReader. Code: extract/
# (extract.vocab, extract.train, extract.shard, extract.gather).


include: "functions/extract.smk"


localrules:
    detector_vocab,
    gather_features,


rule detector_vocab:
    """The detector's object and attribute vocabularies: the published files (aliases kept), or
    VG's most frequent strings; the report counts the VG strings each one misses."""
    input:
        **detector_vocab_inputs(),
    output:
        objects=DETECTOR_VOCAB["objects"],
        attributes=DETECTOR_VOCAB["attributes"],
        report="resources/detector/vocab_report.json",
    log:
        "logs/detector/vocab.log",
    conda:
        "../../envs/cavl.yaml"
    params:
        args=detector_vocab_args(),
        out=lambda w, output: os.path.dirname(output.report),
    shell:
        "python -m extract.vocab {params.args} --out-dir {params.out} > {log} 2>&1"


rule train_detector:
    """The detector trained on VG objects + attributes (and COCO instances) with Detectron2's
    DefaultTrainer → resources/detector/; resumes from resources/detector/checkpoints/."""
    input:
        unpack(train_detector_inputs),
    output:
        model=TRAINED_DETECTOR["model"],
        config=TRAINED_DETECTOR["config"],
        metrics="resources/detector/metrics.json",
        log="resources/detector/log.jsonl",
        curve="resources/detector/loss.png",
    log:
        "logs/detector/train.log",
    conda:
        "../../envs/cavl.yaml"
    threads: EXTRACT["train"]["threads"]
    resources:
        gpu=EXTRACT["train"]["gpus"],
        mem_mb=EXTRACT["train"]["mem_mb"],
        runtime=EXTRACT["train"]["runtime"],
    params:
        settings=train_detector_settings(),
        inputs=train_detector_inputs_args,
        out=lambda w, output: os.path.dirname(output.model),
        checkpoints="resources/detector/checkpoints",
    shell:
        "python -m extract.train --config {params.settings} {params.inputs} --out {params.out} "
        "--checkpoints {params.checkpoints} > {log} 2>&1"


rule extract_shard:
    """Region features of one manifest shard (+ its failures table); written atomically."""
    input:
        manifest="resources/manifests/{dataset}.parquet",
        weights=detector_weights_inputs(),
        vocab=list(DETECTOR_VOCAB.values()) if USES_VOCAB else [],
    output:
        shard="resources/features/{dataset}/shard-{shard}.parquet",
        failures="resources/features/{dataset}/shard-{shard}.failures.parquet",
    log:
        "logs/extract/{dataset}/shard-{shard}.log",
    wildcard_constraints:
        shard=r"\d{5}",
    # Every task waits on extraction; without priority a multi-thread shard that becomes ready
    # beside single-thread jobs waits until they have all finished (the cores never free together).
    priority: 10
    conda:
        "../../envs/cavl.yaml"
    threads: EXTRACT["threads"]
    # decode_workers (image-decoding processes) is a resource, not a param: it changes speed,
    # not features, so changing it re-extracts nothing.
    resources:
        gpu=EXTRACT["gpu"],
        mem_mb=EXTRACT["mem_mb"],
        decode_workers=EXTRACT["num_workers"],
    params:
        settings=lambda w: extract_settings(w.dataset),
        shard_size=EXTRACT["shard_size"],
    shell:
        "python -m extract --manifest {input.manifest} --shard {wildcards.shard} "
        "--shard-size {params.shard_size} --out {output.shard} --failures-out {output.failures} "
        "--settings {params.settings} --num-workers {resources.decode_workers} --threads {threads} > {log} 2>&1"


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
