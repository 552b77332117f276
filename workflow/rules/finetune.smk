# Adaptive finetuning and evaluation of every registered task (cavl.tasks.REGISTRY) that has a
# `finetune.tasks.<task>` entry: the pretrained backbone + the task's adapters and head, then
# the task's official metric on its eval split. Evaluate-only tasks (zs_tir) skip finetuning:
# rule evaluate_zero_shot scores the pretrained model as it is. One process on CPU, or torchrun with one process
# per GPU (finetune.gpus). The finetune job resumes from results/{task}/checkpoints/ and keeps its
# backbone cache in results/{task}/cache/ (neither is a declared output, so both survive a failed
# job); declared outputs are written last, atomically.


include: "functions/finetune.smk"


rule finetune:
    """Adapters + head of one task on the frozen pretrained backbone → results/{task}/model/."""
    input:
        train=lambda w: finetune_split(w, "train_split"),
        select=finetune_select,
        eval=finetune_eval,
        backbone=pretrained_backbone,
        features=finetune_features,
    output:
        model=directory("results/{task}/model"),
        log="results/{task}/log.jsonl",
        curves=report(
            "results/{task}/curves.png",
            caption="../report/finetune_curves.rst",
            category="3. Finetuning",
            subcategory="{task}",
        ),
    log:
        "logs/finetune/{task}.log",
    wildcard_constraints:
        task="|".join(TRAINED_TASKS),
    conda:
        "../../envs/cavl.yaml"
    threads: FINETUNE["threads"]
    resources:
        gpu=FINETUNE["gpus"],
        mem_mb=FINETUNE["mem_mb"],
    params:
        config=finetune_config_arg,
        checkpoints=lambda w: f"{run_root(w)}/{w.task}/checkpoints",
        cache=lambda w: f"{run_root(w)}/{w.task}/cache",
        launcher=launcher(FINETUNE["gpus"]),
        select=lambda w, input: f"--select {input.select}" if input.select else "",
        eval=lambda w, input: f" --eval {input.eval}" if input.eval else "",
    shell:
        "{params.launcher} cavl.finetune --task {wildcards.task} --config {params.config} --threads {threads} "
        "--backbone {input.backbone} --train {input.train} {params.select}{params.eval} "
        "--features {input.features} --out {output.model} --train-log {output.log} --curves {output.curves} "
        "--checkpoints {params.checkpoints} --cache {params.cache} > {log} 2>&1"


rule evaluate:
    """The task's official metric (+ chance) on its eval split → metrics.json, predictions.parquet."""
    input:
        model=lambda w: f"{run_root(w)}/{w.task}/model",
        backbone=pretrained_backbone,
        eval=lambda w: finetune_split(w, "eval_split"),
        train=lambda w: finetune_split(w, "train_split"),
        features=finetune_features,
    output:
        metrics="results/{task}/metrics.json",
        predictions="results/{task}/predictions.parquet",
    log:
        "logs/evaluate/{task}.log",
    wildcard_constraints:
        task="|".join(TRAINED_TASKS),
    conda:
        "../../envs/cavl.yaml"
    threads: FINETUNE["threads"]
    resources:
        gpu=min(1, FINETUNE["gpus"]),
        mem_mb=FINETUNE["mem_mb"],
    params:
        split=lambda w: FINETUNE["tasks"][w.task]["eval_split"],
    shell:
        "python -m cavl.evaluate --task {wildcards.task} --model {input.model} --backbone {input.backbone} "
        "--eval {input.eval} --split {params.split} --train {input.train} --features {input.features} "
        "--metrics {output.metrics} --predictions {output.predictions} --threads {threads} > {log} 2>&1"


rule evaluate_zero_shot:
    """Evaluate-only tasks (zs_tir): the pretrained model as it is → metrics.json, predictions.parquet."""
    input:
        backbone=pretrained_backbone,
        eval=lambda w: finetune_split(w, "eval_split"),
        features=finetune_features,
    output:
        metrics="results/{task}/metrics.json",
        predictions="results/{task}/predictions.parquet",
    log:
        "logs/evaluate/{task}.log",
    wildcard_constraints:
        task="|".join(ZERO_SHOT_TASKS),
    conda:
        "../../envs/cavl.yaml"
    threads: FINETUNE["threads"]
    resources:
        gpu=min(1, FINETUNE["gpus"]),
        mem_mb=FINETUNE["mem_mb"],
    params:
        config=finetune_config_arg,
        split=lambda w: FINETUNE["tasks"][w.task]["eval_split"],
    shell:
        "python -m cavl.evaluate --task {wildcards.task} --config {params.config} --backbone {input.backbone} "
        "--eval {input.eval} --split {params.split} --features {input.features} "
        "--metrics {output.metrics} --predictions {output.predictions} --threads {threads} > {log} 2>&1"
