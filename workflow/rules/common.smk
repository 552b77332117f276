# Config validation and target lists shared by every stage.
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from cavl.config import ConfigError, validate_config
from cavl.task_data import TASK_SOURCES, task_splits

try:
    config.update(validate_config(config))
except ConfigError as error:
    raise WorkflowError(str(error))

# Rules call `python -m ...`: make that the interpreter running Snakemake (e.g. .venv/bin/snakemake
# used without activating .venv). With --software-deployment-method conda, each job's activated
# environment comes first on PATH and wins.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# Datasets that have images (and so a manifest and features); VQA uses coco's.
IMAGE_DATASETS = ["coco", "vg", "flickr30k", "nlvr2", "vcr"]
DATASETS = config["datasets"]

wildcard_constraints:
    dataset="|".join(IMAGE_DATASETS),
    task="|".join(TASK_SOURCES),


def json_arg(value):
    """A config value as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def annotation_files(dataset):
    """The official annotation files of one dataset, as listed in the config."""
    spec = DATASETS[dataset]
    if dataset == "coco":
        return [split["annotations"] for split in spec["captions"].values()]
    if dataset == "vg":
        return [spec["image_data"], spec["region_descriptions"]]
    if dataset == "vqa":
        return [f for split in spec["splits"].values() for f in (split["questions"], split["annotations"])]
    if dataset in ("vcr", "nlvr2"):
        return list(spec["splits"].values())
    if dataset == "flickr30k":
        entities = spec["entities_root"]
        return [spec["karpathy_split"]] + [f"{entities}/{s}.txt" for s in ("train", "val", "test")]
    raise ValueError(f"unknown dataset {dataset!r}")


def manifest_path(dataset):
    return f"resources/manifests/{dataset}.parquet"


def task_data_paths(task):
    return [f"resources/tasks/{task}/{split}.parquet" for split in task_splits(task, DATASETS)]


def all_targets():
    """Everything `snakemake --cores all` builds, growing as stages are added."""
    targets = [manifest_path(d) for d in IMAGE_DATASETS]
    targets += [path for task in TASK_SOURCES for path in task_data_paths(task)]
    targets += [feature_index(d) for d in IMAGE_DATASETS]
    targets += ["results/pretrain/model"]
    targets += [f"results/{task}/metrics.json" for task in config["finetune"]["tasks"]]
    if config["finetune"]["tasks"]:
        targets += ["results/summary.md", "results/summary.csv"]
    return targets
