# Config validation and target lists shared by every stage.
import json
import math
import os
import shlex
import sys

import pyarrow.parquet as pq
from snakemake.exceptions import WorkflowError

from cavl.config import ConfigError, resolve_config
from cavl.demo.layout import demo_vocabularies
from cavl.formats.images import listing_digest
from cavl.task_data import TASK_SOURCES, task_splits
from cavl.tasks import REGISTRY as TASK_REGISTRY

try:
    config.update(resolve_config(config))
except ConfigError as error:
    raise WorkflowError(str(error))

# Datasets that have images (and so a manifest and features); VQA uses coco's.
IMAGE_DATASETS = ["coco", "vg", "flickr30k", "nlvr2", "vcr"]
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


def annotation_files(dataset):
    """The official annotation files of one dataset, as listed in the config."""
    if dataset not in DATASETS:
        raise WorkflowError(f"datasets.{dataset} is not configured")
    spec = DATASETS[dataset]
    if dataset == "coco":
        splits = spec["captions"].values()
        return [s["annotations"] for s in splits] + [s["instances"] for s in splits if s.get("instances")]
    if dataset == "vg":
        return [spec["image_data"], spec["region_descriptions"]] + [
            spec[key] for key in ("objects", "attributes") if spec.get(key)
        ]
    if dataset == "vqa":
        return [f for split in spec["splits"].values() for f in (split["questions"], split["annotations"])]
    if dataset in ("vcr", "nlvr2"):
        return list(spec["splits"].values())
    if dataset == "flickr30k":
        entities = spec["entities_root"]
        return [spec["karpathy_split"]] + [f"{entities}/{s}.txt" for s in ("train", "val", "test")]
    raise ValueError(f"unknown dataset {dataset!r}")


def manifest_spec(dataset):
    """What the manifest of a dataset is built from: its `datasets` entry less the keys that only
    choose pretraining captions (so changing them re-extracts nothing)."""
    return {k: v for k, v in DATASETS[dataset].items() if k != "exclude_eval_images"}


def own_images_list(dataset):
    """The list file of an own-images dataset (its manifest's input); [] when it uses a glob."""
    spec = OWN_IMAGES[dataset]
    return [spec["list"]] if spec.get("list") else []


def own_images_listing(dataset):
    """Digest of the files an own-images dataset names now (path, size, mtime): a param of its
    manifest, so a file added to the folder, removed or replaced rebuilds the manifest (and so
    re-extracts) on the next run, with no --forcerun."""
    return listing_digest(dataset, OWN_IMAGES[dataset])


def task_data_sources(task):
    """Datasets whose files build a task's tables: the task's sources, plus for pretrain those whose
    evaluation images are kept out of VG's captions (datasets.vg.exclude_eval_images)."""
    require_datasets(task)
    if task == "pretrain":
        sources = list(config["pretrain"]["data"]["sources"])
        excluded = DATASETS["vg"]["exclude_eval_images"] if "vg" in sources else []
        return sources + [d for d in excluded if d not in sources]
    return list(TASK_SOURCES[task])


def manifest_path(dataset):
    return f"resources/manifests/{dataset}.parquet"


def task_data_paths(task):
    return [f"resources/tasks/{task}/{split}.parquet" for split in task_splits(task, DATASETS)]


def pretrain_inputs(wildcards):
    """Task tables (val when the sources have one: COCO's captions val split) and feature indexes."""
    splits = task_splits("pretrain", {s: DATASETS[s] for s in task_data_sources("pretrain")})
    inputs = {
        split: f"resources/tasks/pretrain/{split}.parquet" for split in ("train", "val") if split in splits
    }
    return {**inputs, "features": [feature_index(d) for d in config["pretrain"]["data"]["sources"]]}


def runnable_tasks():
    """The finetune tasks whose datasets are configured; one log line names those left out."""
    tasks = [task for task in config["finetune"]["tasks"] if task in TASK_REGISTRY]
    missing = {task: missing_datasets(task) for task in tasks}
    left_out = {task: keys for task, keys in missing.items() if keys}
    if left_out:
        named = ", ".join(
            f"{task} ({' and '.join(f'datasets.{k}' for k in keys)})" for task, keys in left_out.items()
        )
        print(f"not in the default target (dataset not configured): {named}", file=sys.stderr)
    return [task for task in tasks if task not in left_out]


# Rule summary's outputs, all requested (the report embeds them; a new one is then made at once).
SUMMARY_FILES = ["summary.md", "summary.csv", "summary.html", "summary.png", "methods.csv"]


def all_targets():
    """Everything `snakemake --cores all` builds, growing as stages are added."""
    images = [*(d for d in IMAGE_DATASETS if d in DATASETS), *OWN_IMAGES]
    targets = [manifest_path(d) for d in images] + [feature_index(d) for d in images]
    targets += [path for task in TASK_SOURCES if not missing_datasets(task) for path in task_data_paths(task)]
    if not missing_datasets("pretrain"):
        targets += ["results/pretrain/model"]
    targets += [f"results/{task}/metrics.json" for task in RUNNABLE_TASKS]
    if RUNNABLE_TASKS:
        targets += [f"results/{name}" for name in SUMMARY_FILES]
    return targets


# Region features (extract.smk) -----------------------------------------------------------------
EXTRACT = config["extract"]


def feature_index(dataset):
    """The image_id → (shard, row) index of a dataset's features: what downstream rules depend on."""
    return f"resources/features/{dataset}/index.parquet"


def feature_shards(dataset):
    """All shard files of a dataset (reads the row count of its manifest checkpoint)."""
    manifest_checkpoint = checkpoints.images_manifest if dataset in OWN_IMAGES else checkpoints.manifest
    manifest = manifest_checkpoint.get(dataset=dataset).output[0]
    count = max(1, math.ceil(pq.read_metadata(manifest).num_rows / EXTRACT["shard_size"]))
    return [f"resources/features/{dataset}/shard-{k:05d}.parquet" for k in range(count)]


# The detector's vocabularies (rule detector_vocab), used with the attribute head or a trained detector.
DETECTOR_VOCAB = {kind: f"resources/detector/{kind}_vocab.txt" for kind in ("objects", "attributes")}
# extract.detector.weights: trained → rule train_detector's model, whose config is what extraction builds.
TRAINED = EXTRACT["detector"]["weights"] == "trained"
TRAINED_DETECTOR = {"model": "resources/detector/model.pth", "config": "resources/detector/config.yaml"}
USES_VOCAB = EXTRACT["detector"]["attributes"] or TRAINED


def detector_weights_inputs():
    """The files an extraction job's detector comes from (none for random weights)."""
    if TRAINED:
        return list(TRAINED_DETECTOR.values())
    return [EXTRACT["detector"]["weights"]] if EXTRACT["detector"]["weights"] else []


def detector_train_sources():
    """extract.train.sources, or the configured ones of coco / vg."""
    sources = EXTRACT["train"]["sources"] or [d for d in ("coco", "vg") if d in DATASETS]
    missing = [d for d in sources if d not in DATASETS]
    if missing or not sources:
        raise WorkflowError(
            f"train_detector needs {' or '.join(f'datasets.{d}' for d in missing or ['coco', 'vg'])}, "
            "which the configuration does not set"
        )
    return sources


def train_detector_inputs(wildcards):
    """Manifests of the training sources, VG's attributes.json (objects and attributes), vocabularies."""
    sources = detector_train_sources()
    inputs = {"manifests": [manifest_path(d) for d in sources], **DETECTOR_VOCAB}
    if "vg" in sources and DATASETS["vg"].get("attributes"):
        inputs["vg_attributes"] = DATASETS["vg"]["attributes"]
    return inputs


def train_detector_settings():
    """The detector and training settings as one JSON argument (a param: changing one retrains;
    mem_mb and runtime only schedule the job, so they are left out)."""
    d, t = EXTRACT["detector"], EXTRACT["train"]
    detector = {k: d[k] for k in ("config", "opts", "device", "attributes", "min_size", "max_size")}
    train = {k: v for k, v in t.items() if k not in ("mem_mb", "runtime")}
    train["eval_top_n"] = t["eval_top_n"] or EXTRACT["boxes"]["max_boxes"]
    return json_arg({"detector": detector, "train": train})


def train_detector_inputs_args(wildcards, input):
    """The input files as options of `python -m extract.train`."""
    sources = detector_train_sources()
    options = [o for source, path in zip(sources, input.manifests) for o in ("--source", f"{source}={path}")]
    if input.get("vg_attributes"):
        options += ["--vg-attributes", input.vg_attributes]
    options += ["--objects-vocab", input.objects, "--attributes-vocab", input.attributes]
    return " ".join(shlex.quote(str(o)) for o in options)


def detector_vocab_inputs():
    """Inputs of the vocabulary step: the published vocabulary files configured and, when one of
    the two is built, VG's attributes.json / objects.json (features with the published files need
    no VG data)."""
    vocab, vg = EXTRACT["detector"]["vocab"], DATASETS.get("vg") or {}
    files = {f"{kind}_vocab": vocab[kind] for kind in ("objects", "attributes") if vocab[kind]}
    if len(files) < 2:
        files.update({f"vg_{key}": vg[key] for key in ("attributes", "objects") if vg.get(key)})
    return files


def detector_vocab_args():
    """Command-line options of `python -m extract.vocab` for the configured inputs."""
    names = {
        "objects_vocab": "--objects-vocab",
        "attributes_vocab": "--attributes-vocab",
        "vg_attributes": "--vg-attributes",
        "vg_objects": "--vg-objects",
    }
    vocab = EXTRACT["detector"]["vocab"]
    options = [o for key, path in detector_vocab_inputs().items() for o in (names[key], path)]
    options += [
        o
        for kind in ("objects", "attributes")
        if not vocab[kind]
        for o in (f"--num-{kind}", vocab[f"num_{kind}"])
    ]
    return " ".join(shlex.quote(str(o)) for o in options)


def extract_options(dataset):
    """Every option that shapes the features (params: changing one re-extracts the dataset)."""
    d, b = EXTRACT["detector"], EXTRACT["boxes"]
    pairs = [
        ("--detector-config", d["config"]),
        ("--weights", d["weights"] or "none"),
        ("--seed", d["seed"]),
        ("--device", d["device"]),
        ("--mode", b["mode"]),
        ("--max-boxes", b["max_boxes"]),
        ("--min-boxes", b["min_boxes"]),
        ("--score-threshold", b["score_threshold"]),
        ("--nms", b["nms_threshold"]),
        ("--given-boxes", "none" if dataset in OWN_IMAGES else EXTRACT["given_boxes"][dataset]),
        ("--feature-dtype", EXTRACT["feature_dtype"]),
        ("--batch-size", EXTRACT["batch_size"]),
        ("--row-group-size", EXTRACT["row_group_size"]),
        ("--max-image-pixels", EXTRACT["max_image_pixels"]),
        ("--min-size", d["min_size"]),
        ("--max-size", d["max_size"]),
        ("--proposals", d["proposals"]),
    ]
    if TRAINED:  # the trained config holds the architecture and its overrides
        pairs[0:2] = [
            ("--detector-config", TRAINED_DETECTOR["config"]),
            ("--weights", TRAINED_DETECTOR["model"]),
        ]
    if USES_VOCAB:
        pairs += [
            ("--objects-vocab", DETECTOR_VOCAB["objects"]),
            ("--attributes-vocab", DETECTOR_VOCAB["attributes"]),
        ]
    options = [str(o) for pair in pairs if pair[1] is not None for o in pair]
    if not d["amp"]:
        options.append("--no-amp")
    if d["attributes"]:
        options.append("--attributes")
    if d["opts"] and not TRAINED:
        options += ["--opts", *map(str, d["opts"])]
    return " ".join(shlex.quote(o) for o in options)


# Pretraining (pretrain.smk) --------------------------------------------------------------------


def pretrain_config_arg():
    """The model and pretraining settings as one JSON argument; mem_mb only schedules the job, so
    changing it reruns nothing."""
    return json_arg(
        {"model": config["model"], "pretrain": {k: v for k, v in PRETRAIN.items() if k != "mem_mb"}}
    )


def pretrain_launcher():
    """`torchrun` with one process per GPU, or plain python when training on CPU."""
    gpus = PRETRAIN["gpus"]
    return f"torchrun --standalone --nproc_per_node {gpus} -m" if gpus > 0 else "python -m"


# Finetuning and evaluation (finetune.smk) ------------------------------------------------------


def finetune_split(task, key):
    """The task table of the split named by `finetune.tasks.<task>.<key>` (train_split, eval_split);
    zs_tir reads tir's tables."""
    require_datasets(task)
    tables = TASK_REGISTRY[task].tables or task
    return f"resources/tasks/{tables}/{FINETUNE['tasks'][task][key]}.parquet"


def finetune_select(task):
    """The table of `finetune.tasks.<task>.select_split` (the best epoch is chosen on it); [] when
    the task holds out part of its train split instead (select_split: null)."""
    split = FINETUNE["tasks"][task].get("select_split")
    return finetune_split(task, "select_split") if split else []


def finetune_features(task):
    """Feature index of the task's image dataset (VQA reads coco's)."""
    require_datasets(task)
    return feature_index(TASK_REGISTRY[task].image_datasets[0])


def finetune_config_arg(task):
    """The shared finetune settings and this task's own, as one JSON argument."""
    shared = {k: v for k, v in FINETUNE.items() if k not in ("tasks", "mem_mb")}
    return json_arg({"finetune": {**shared, "tasks": {task: FINETUNE["tasks"][task]}}})


def finetune_launcher():
    """`torchrun` with one process per GPU, or plain python when training on CPU."""
    gpus = FINETUNE["gpus"]
    return f"torchrun --standalone --nproc_per_node {gpus} -m" if gpus > 0 else "python -m"
