# Data stages: embedded demo data (cavl.demo), image manifests (cavl.manifest), normalised task
# examples (cavl.task_data).


include: "functions/data.smk"


if config["demo"]["enabled"]:

    rule demo_data:
        """Synthetic scenes in the official formats of all seven datasets, under demo.out_dir only
        (the demo's `datasets` are its layout; resolve_config rejects paths outside it)."""
        output:
            sorted({f for d in DATASETS for f in annotation_files(d)}),
            scenes=f"{config['demo']['out_dir']}/scenes.json",
            vocab=demo_vocabularies(config["demo"]["out_dir"]).values(),
        log:
            "logs/demo_data.log",
        conda:
            "../../envs/cavl.yaml"
        params:
            out=lambda w, output: os.path.dirname(output.scenes),
            seed=config["demo"]["seed"],
            variant=config["demo"]["variant"],
            size=config["demo"]["image_size"],
            counts=" ".join(f"--count {k}={v}" for k, v in sorted(config["demo"]["images"].items())),
        shell:
            "python -m cavl.demo --out {params.out} --seed {params.seed} --variant {params.variant} "
            "--image-size {params.size} {params.counts} > {log} 2>&1"


checkpoint manifest:
    """One row per image: id, path, size, ground-truth boxes (a checkpoint: shards depend on its length)."""
    input:
        lambda w: annotation_files(w.dataset),
    output:
        manifest="resources/manifests/{dataset}.parquet",
        missing="resources/manifests/{dataset}.missing.parquet",  # images left out (missing_images: skip)
    log:
        "logs/manifest/{dataset}.log",
    wildcard_constraints:
        dataset="|".join(IMAGE_DATASETS),  # own images: rule images_manifest
    conda:
        "../../envs/cavl.yaml"
    params:
        spec=lambda w: json_arg(manifest_spec(w.dataset)),
    shell:
        "python -m cavl.manifest --dataset {wildcards.dataset} --spec {params.spec} "
        "--out {output.manifest} --missing-out {output.missing} > {log} 2>&1"


checkpoint images_manifest:
    """One row per file of an own-images folder (datasets.images.NAME; image_id = path relative to
    root). Its params hold a digest of the matched files (path, size, mtime), so adding, removing or
    replacing a file rebuilds the manifest, and so re-extracts, on the next run. A file whose header
    cannot be read is listed with size 0 and lands in the extraction's failures table."""
    input:
        lambda w: own_images_list(w.dataset),
    output:
        manifest="resources/manifests/{dataset}.parquet",
        missing="resources/manifests/{dataset}.missing.parquet",  # list entries not on disk (missing_images: skip)
    log:
        "logs/manifest/{dataset}.log",
    wildcard_constraints:
        dataset="|".join(OWN_IMAGES) or "(?!)",  # (?!) matches nothing: no own images configured
    conda:
        "../../envs/cavl.yaml"
    params:
        spec=lambda w: json_arg(OWN_IMAGES[w.dataset]),
        files=lambda w: own_images_listing(w.dataset),
    shell:
        "python -m cavl.manifest --kind images --dataset {wildcards.dataset} --spec {params.spec} "
        "--out {output.manifest} --missing-out {output.missing} > {log} 2>&1"


rule task_data:
    """Normalised examples of one task, one Parquet per split."""
    input:
        lambda w: [f for source in task_data_sources(w.task) for f in annotation_files(source)],
    output:
        "resources/tasks/{task}/{split}.parquet",
    log:
        "logs/task_data/{task}/{split}.log",
    conda:
        "../../envs/cavl.yaml"
    params:
        spec=lambda w: json_arg({s: DATASETS[s] for s in task_data_sources(w.task)}),
    shell:
        "python -m cavl.task_data --task {wildcards.task} --split {wildcards.split} "
        "--spec {params.spec} --out {output} > {log} 2>&1"
