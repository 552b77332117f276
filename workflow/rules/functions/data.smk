# The helpers and settings of data.smk's rules (included first by data.smk).
import os

from cavl.demo.layout import demo_vocabularies
from cavl.formats.images import listing_digest


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
