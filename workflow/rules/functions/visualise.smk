# The helpers of visualise.smk's rule (included first by visualise.smk).

# Captions of each pictured dataset's val images: COCO's pretraining table, Flickr30k's retrieval
# table; the Flickr30k Entities phrases from the grounding table.
VISUALISE_TABLES = {
    "coco_captions": ("pretrain", "val"),
    "flickr_captions": ("tir", "val"),
    "phrases": ("rpg", "val"),
}
VISUALISE_DATASETS = {"coco": ("coco_captions",), "flickr30k": ("flickr_captions", "phrases")}


def visualise_datasets():
    """The pictured datasets the configuration has, with a val table of their captions."""
    datasets = []
    for dataset, (captions, *_) in VISUALISE_DATASETS.items():
        task, split = VISUALISE_TABLES[captions]
        if dataset in DATASETS and not missing_datasets(task) and split in task_splits(task, DATASETS):
            datasets.append(dataset)
    return datasets


def visualise_inputs(wildcards):
    """The pretrained model; per pictured dataset its manifest, features and tables; the detector's
    vocabularies (box labels) when it has them."""
    inputs = {"backbone": "results/pretrain/model"}
    if USES_VOCAB:
        inputs.update(objects_vocab=DETECTOR_VOCAB["objects"], attributes_vocab=DETECTOR_VOCAB["attributes"])
    for dataset in visualise_datasets():
        prefix = "coco" if dataset == "coco" else "flickr"
        inputs.update(
            {f"{prefix}_manifest": manifest_path(dataset), f"{prefix}_features": feature_index(dataset)}
        )
        for table in VISUALISE_DATASETS[dataset]:
            task, split = VISUALISE_TABLES[table]
            if split in task_splits(task, DATASETS):
                inputs[table] = f"resources/tasks/{task}/{split}.parquet"
    return inputs


def visualise_args(wildcards, input):
    """`--name path` for every input but the backbone."""
    return " ".join(
        f"--{name.replace('_', '-')} {path}" for name, path in input.items() if name != "backbone"
    )
