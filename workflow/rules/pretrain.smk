# Contrastive pretraining: MLM + ITM + pair-wise contrastive loss over COCO captions and/or VG
# region descriptions (pretrain.data.sources) joined with their region features. One process on
# CPU, or torchrun with one process per GPU (pretrain.gpus). The job resumes from results/pretrain/checkpoints/ (not a
# declared output, so it survives a failed job) and writes its declared outputs last, atomically.


include: "functions/pretrain.smk"


rule pretrain:
    """MLM + ITM + PwCL pretraining → results/pretrain/model/ (CavlModel.from_pretrained loads it)."""
    input:
        unpack(pretrain_inputs),
    output:
        model=directory("results/pretrain/model"),
        log="results/pretrain/log.jsonl",
        curves=report(
            "results/pretrain/curves.png",
            caption="../report/pretrain_curves.rst",
            category="2. Pretraining",
        ),
    log:
        "logs/pretrain.log",
    conda:
        "../../envs/cavl.yaml"
    threads: PRETRAIN["threads"]
    resources:
        gpu=PRETRAIN["gpus"],
        mem_mb=PRETRAIN["mem_mb"],
    params:
        config=pretrain_config_arg,
        features=lambda w, input: os.path.dirname(os.path.dirname(input.features[0])),
        val=lambda w, input: input.get("val", ""),  # '' = no held-out split (e.g. VG alone)
        checkpoints=lambda w: f"{run_root(w)}/pretrain/checkpoints",
        launcher=launcher(PRETRAIN["gpus"]),
    shell:
        "{params.launcher} cavl.pretrain --config {params.config} --threads {threads} "
        "--train {input.train} --val '{params.val}' --features {params.features} "
        "--out {output.model} --train-log {output.log} --curves {output.curves} "
        "--checkpoints {params.checkpoints} > {log} 2>&1"
