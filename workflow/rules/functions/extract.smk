# The helpers and settings of extract.smk's rules (included first by extract.smk).
import math
import os

import pyarrow.parquet as pq

from cavl.settings import DetectorTrain, operational_keys, without

EXTRACT = config["extract"]
# The detector's vocabularies (rule detector_vocab), used with the attribute head or a trained detector.
DETECTOR_VOCAB = {kind: f"resources/detector/{kind}_vocab.txt" for kind in ("objects", "attributes")}
# extract.detector.weights: trained → rule train_detector's model, whose config is what extraction builds.
TRAINED = EXTRACT["detector"]["weights"] == "trained"
TRAINED_DETECTOR = {"model": "resources/detector/model.pth", "config": "resources/detector/config.yaml"}
USES_VOCAB = EXTRACT["detector"]["attributes"] or TRAINED


def feature_shards(dataset):
    """All shard files of a dataset (reads the row count of its manifest checkpoint)."""
    manifest_checkpoint = checkpoints.images_manifest if dataset in OWN_IMAGES else checkpoints.manifest
    manifest = manifest_checkpoint.get(dataset=dataset).output[0]
    count = max(1, math.ceil(pq.read_metadata(manifest).num_rows / EXTRACT["shard_size"]))
    return [f"resources/features/{dataset}/shard-{k:05d}.parquet" for k in range(count)]


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
    the keys that only schedule the job, mem_mb and runtime, are left out)."""
    d, t = EXTRACT["detector"], EXTRACT["train"]
    detector = {k: d[k] for k in ("config", "opts", "device", "attributes", "min_size", "max_size")}
    train = without(t, operational_keys(DetectorTrain, job=True))
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


def extract_settings(dataset):
    """What shapes a dataset's features, as the one JSON document `python -m extract --settings`
    takes (a param: changing a value re-extracts the dataset)."""
    d = dict(EXTRACT["detector"])
    detector = {k: d[k] for k in ("config", "weights", "seed", "device", "amp", "attributes", "opts")}
    detector.update({k: d[k] for k in ("min_size", "max_size", "proposals") if d[k] is not None})
    if TRAINED:  # the trained config holds the architecture and its overrides
        detector.update(config=TRAINED_DETECTOR["config"], weights=TRAINED_DETECTOR["model"], opts=[])
    if USES_VOCAB:
        detector.update(
            objects_vocab=DETECTOR_VOCAB["objects"], attributes_vocab=DETECTOR_VOCAB["attributes"]
        )
    boxes = {
        **EXTRACT["boxes"],
        "given": "none" if dataset in OWN_IMAGES else EXTRACT["given_boxes"][dataset],
    }
    output = {k: EXTRACT[k] for k in ("feature_dtype", "batch_size", "row_group_size", "max_image_pixels")}
    return json_arg({"detector": detector, "boxes": boxes, **output})
