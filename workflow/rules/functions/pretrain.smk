# The helpers and settings of pretrain.smk's rules (included first by pretrain.smk).
import os

from cavl.settings import PretrainSection, operational_keys, without

PRETRAIN = config["pretrain"]


def pretrain_inputs(wildcards):
    """Task tables (val when the sources have one: COCO's captions val split) and feature indexes."""
    splits = task_splits("pretrain", {s: DATASETS[s] for s in task_data_sources("pretrain")})
    inputs = {
        split: f"resources/tasks/pretrain/{split}.parquet" for split in ("train", "val") if split in splits
    }
    return {**inputs, "features": [feature_index(d) for d in PRETRAIN["data"]["sources"]]}


def pretrain_config_arg(wildcards):
    """The model and pretraining settings (of the run: run_config) as one JSON argument; the keys
    that only schedule the job (mem_mb) are left out, so changing one reruns nothing."""
    settings = run_config(wildcards)
    pretrain = without(settings["pretrain"], operational_keys(PretrainSection, job=True))
    return json_arg({"model": settings["model"], "pretrain": pretrain})
