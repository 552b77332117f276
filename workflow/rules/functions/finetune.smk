# The helpers and settings of finetune.smk's rules (included first by finetune.smk). Each takes
# the job's wildcards: a run of the ablation grid has its own configuration (run_config).
from cavl.settings import FinetuneSection, operational_keys, without

FINETUNE = config["finetune"]


def task_table(task, split):
    """A task's table of one split (zs_tir reads tir's tables)."""
    require_datasets(task)
    return f"resources/tasks/{TASK_REGISTRY[task].tables or task}/{split}.parquet"


def task_features(task):
    """Feature index of a task's image dataset (VQA reads coco's)."""
    require_datasets(task)
    return feature_index(TASK_REGISTRY[task].image_datasets[0])


def finetune_split(wildcards, key):
    """The task table of the split named by `finetune.tasks.<task>.<key>` (train_split, eval_split)."""
    return task_table(wildcards.task, run_config(wildcards)["finetune"]["tasks"][wildcards.task][key])


def finetune_select(wildcards):
    """The table of `finetune.tasks.<task>.select_split` (the best epoch is chosen on it); [] when
    the task holds out part of its train split instead (select_split: null)."""
    split = run_config(wildcards)["finetune"]["tasks"][wildcards.task].get("select_split")
    return finetune_split(wildcards, "select_split") if split else []


def finetune_eval(wildcards):
    """The eval split's table when finetuning evaluates it as it trains (finetune.train.eval_every
    > 0: val_* records in the log); [] otherwise."""
    return finetune_split(wildcards, "eval_split") if FINETUNE["train"]["eval_every"] > 0 else []


def finetune_features(wildcards):
    return task_features(wildcards.task)


def pretrained_backbone(wildcards):
    """The pretrained model a run finetunes: results/pretrain/model, or that of the grid run
    whose pretraining settings it shares."""
    pretrain_run = ABLATION_PRETRAIN_RUNS.get(grid_run(wildcards))
    return f"{ablations.RUNS_DIR}/{pretrain_run}/pretrain/model" if pretrain_run else "results/pretrain/model"


def finetune_config_arg(wildcards):
    """The shared finetune settings and this task's own, as one JSON argument; the keys that only
    schedule the jobs (mem_mb) are left out, so changing one reruns nothing."""
    finetune = run_config(wildcards)["finetune"]
    shared = without(finetune, {"tasks", *operational_keys(FinetuneSection, job=True)})
    return json_arg({"finetune": {**shared, "tasks": {wildcards.task: finetune["tasks"][wildcards.task]}}})
