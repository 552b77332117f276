# Contrastive pretraining: MLM + ITM + pair-wise contrastive loss over COCO captions and VG region
# descriptions joined with their region features. One process on CPU, or torchrun with one
# process per GPU (pretrain.gpus). The job resumes from results/pretrain/checkpoints/ (not a
# declared output, so it survives a failed job) and writes its declared outputs last, atomically.

import os

PRETRAIN = config["pretrain"]


def pretrain_launcher():
    """`torchrun` with one process per GPU, or plain python when training on CPU."""
    gpus = PRETRAIN["gpus"]
    return f"torchrun --standalone --nproc_per_node {gpus} -m" if gpus > 0 else "python -m"


rule pretrain:
    """MLM + ITM + PwCL pretraining → results/pretrain/model/ (CavlModel.from_pretrained loads it)."""
    input:
        train="resources/tasks/pretrain/train.parquet",
        val="resources/tasks/pretrain/val.parquet",
        features=[feature_index(d) for d in PRETRAIN["data"]["sources"]],
    output:
        model=directory("results/pretrain/model"),
        log="results/pretrain/log.jsonl",
        curves=report(
            "results/pretrain/curves.png",
            caption="../report/pretrain_curves.rst",
            category="2. Pretraining",
        ),
    params:
        config=json_arg({"model": config["model"], "pretrain": PRETRAIN}),
        features=os.path.dirname(os.path.dirname(feature_index("coco"))),
        checkpoints="results/pretrain/checkpoints",
        launcher=pretrain_launcher(),
    log:
        "logs/pretrain.log",
    threads: PRETRAIN["threads"]
    resources:
        gpu=PRETRAIN["gpus"],
        mem_mb=PRETRAIN["mem_mb"],
    conda:
        "../../envs/cavl.yaml"
    shell:
        "{params.launcher} cavl.pretrain --config {params.config} --threads {threads} "
        "--train {input.train} --val {input.val} --features {params.features} "
        "--out {output.model} --train-log {output.log} --curves {output.curves} "
        "--checkpoints {params.checkpoints} > {log} 2>&1"
