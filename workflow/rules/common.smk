# Config validation, the datasets and tasks configured, the runs of the ablation grid, and the
# paths and helpers several stages share. Each stage's own helpers are in functions/<stage>.smk,
# which the stage's file includes first.
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from cavl import ablations
from cavl.config import ConfigError, resolve_config
from cavl.manifest import DATASETS as MANIFEST_DATASETS
from cavl.task_data import TASK_SOURCES, task_splits
from cavl.tasks import REGISTRY as TASK_REGISTRY

try:
    config.update(resolve_config(config))
except ConfigError as error:
    raise WorkflowError(str(error))

# Datasets that have images (and so a manifest and features); VQA uses coco's.
IMAGE_DATASETS = list(MANIFEST_DATASETS)
# datasets.images: folders of the user's own images, name → {root, glob or list}
# (cavl/formats/images.py). Each has a manifest (checkpoint images_manifest) and features like an
# official dataset; DATASETS holds the official entries only.
OWN_IMAGES = config["datasets"].get("images", {})
DATASETS = {name: spec for name, spec in config["datasets"].items() if name != "images"}


wildcard_constraints:
    dataset="|".join([*IMAGE_DATASETS, *OWN_IMAGES]),
    task="|".join(TASK_SOURCES),
    run="[0-9a-f]{12}",  # a run of the ablation grid (cavl.ablations)


def json_arg(value):
    """A config value as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def missing_datasets(task):
    """The `datasets` entries a task (or pretrain) needs that the config leaves out."""
    if task == "pretrain":
        return [] if config["pretrain"]["data"]["sources"] else ["coco or datasets.vg"]
    entry = TASK_REGISTRY[task]
    needs = dict.fromkeys([*TASK_SOURCES[entry.tables or task], *entry.image_datasets])
    return [d for d in needs if d not in DATASETS]


def require_datasets(task):
    """Stop with an error naming the missing config keys when a task's datasets are not configured."""
    missing = missing_datasets(task)
    if missing:
        keys = " and ".join(f"datasets.{d}" for d in missing)
        raise WorkflowError(f"{task} needs {keys}, which the configuration does not set")


def manifest_path(dataset):
    return f"resources/manifests/{dataset}.parquet"


def task_data_paths(task):
    return [f"resources/tasks/{task}/{split}.parquet" for split in task_splits(task, DATASETS)]


def feature_index(dataset):
    """The image_id → (shard, row) index of a dataset's features: what downstream rules depend on."""
    return f"resources/features/{dataset}/index.parquet"


def launcher(gpus):
    """`torchrun` with one process per GPU, or plain python when training on CPU."""
    return f"torchrun --standalone --nproc_per_node {gpus} -m" if gpus > 0 else "python -m"


def runnable_tasks():
    """The finetune tasks whose datasets are configured; one log line names those left out."""
    missing = {task: missing_datasets(task) for task in FINETUNE_TASKS}
    left_out = {task: keys for task, keys in missing.items() if keys}
    if left_out:
        named = ", ".join(
            f"{task} ({' and '.join(f'datasets.{k}' for k in keys)})" for task, keys in left_out.items()
        )
        print(f"not in the default target (dataset not configured): {named}", file=sys.stderr)
    return [task for task in FINETUNE_TASKS if task not in left_out]


FINETUNE_TASKS = [task for task in config["finetune"]["tasks"] if task in TASK_REGISTRY]
TRAINED_TASKS = [task for task in FINETUNE_TASKS if not TASK_REGISTRY[task].zero_shot]
ZERO_SHOT_TASKS = [task for task in FINETUNE_TASKS if TASK_REGISTRY[task].zero_shot]
# Those whose datasets are configured: the default target and the summary.
RUNNABLE_TASKS = runnable_tasks()


def ablation_grid():
    """(cells, run name → configuration) of the ablation grid (cavl.ablations.plan) over
    ablations.tasks, or the default target's tasks; one log line names those left out."""
    tasks = config["ablations"]["tasks"] or RUNNABLE_TASKS
    left_out = [task for task in tasks if task not in RUNNABLE_TASKS]
    if left_out:
        print(f"not in the ablation grid (dataset not configured): {', '.join(left_out)}", file=sys.stderr)
    tasks = [task for task in tasks if task in RUNNABLE_TASKS]
    if not tasks:
        return [], {}
    try:
        return ablations.plan(config, tasks)
    except ConfigError as error:
        raise WorkflowError(str(error))


ABLATION_CELLS, ABLATION_RUNS = ablation_grid()
ABLATION_PRETRAIN_RUNS = ablations.pretrain_runs(ABLATION_CELLS)


def grid_run(wildcards):
    """The run of the ablation grid a job belongs to (its `run` wildcard: rules ablation_*), None
    for the main run."""
    return wildcards.run if "run" in wildcards.keys() else None


def run_config(wildcards):
    """The configuration a job computes with: its grid run's, else this configuration."""
    run = grid_run(wildcards)
    return ABLATION_RUNS[run] if run else config


def run_root(wildcards):
    """The folder of a run's stages: results/ or results/ablation_runs/{run}/."""
    run = grid_run(wildcards)
    return f"{ablations.RUNS_DIR}/{run}" if run else "results"
