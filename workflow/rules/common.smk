# Config validation, the datasets configured, and the paths and helpers several stages share.
# Each stage's own helpers are in functions/<stage>.smk, which the stage's file includes first.
import json
import shlex

from snakemake.exceptions import WorkflowError

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
