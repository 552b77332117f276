"""Train the detector on Visual Genome objects + attributes (and COCO instances) with Detectron2's
own machinery: DefaultTrainer, its hooks and checkpointer, `launch` for several GPUs.

    python -m extract.train --config '<JSON: extract.detector and extract.train>' \\
        --source vg=resources/manifests/vg.parquet --vg-attributes data/vg/attributes.json \\
        --source coco=resources/manifests/coco.parquet \\
        --objects-vocab resources/detector/objects_vocab.txt \\
        --attributes-vocab resources/detector/attributes_vocab.txt \\
        --out resources/detector --checkpoints resources/detector/checkpoints

Training images: every manifest image with at least one box whose name the objects vocabulary
knows (VG objects mapped as extract/vocab.py does; COCO: the manifest's boxes and category names),
less a share held out for validation by a hash of source and image id.

Writes into --out: `model.pth`, `config.yaml` (the resolved Detectron2 config), `metrics.json`
(validation, see :func:`evaluate`), `log.jsonl` (Detectron2's JSONWriter) and `loss.png`.
Checkpoints go to --checkpoints every `checkpoint_every` iterations; a rerun resumes from the
newest readable one (those of another configuration are deleted first). With one process and
no decoding workers a resumed run repeats an uninterrupted one exactly (data order and RNG states).
"""

import argparse
import collections
import copy
import glob
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from detectron2.data import (DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader,
                             build_detection_train_loader)
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer, hooks, launch
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from cavl.formats import vg
from cavl.io import atomic_path, write_json_atomic
from cavl.settings import DetectorTrain, operational_keys, without
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig, RegionExtractor, build_cfg
from extract.vocab import VocabCounts, map_object, read_vocab

log = logging.getLogger("extract.train")

TRAIN_DATASET, VAL_DATASET = "cavl_detector_train", "cavl_detector_val"


def held_out(source, image_id, fraction):
    """Whether an image is in the validation share (a hash: stable across runs and machines)."""
    digest = hashlib.sha256(f"{source}/{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def training_records(sources, objects_vocab, attributes_vocab, counts=None):
    """Detectron2 dataset dicts of every source image with a known object.

    sources: {name: {"manifest": path, "attributes": VG attributes.json or None}}. Annotations
    carry `attributes`: the attribute head's indices (vocabulary id + 1) of the object.
    """
    records = []
    for source, spec in sorted(sources.items()):
        rows = pq.read_table(spec["manifest"], columns=["image_id", "path", "width", "height", "gt_boxes",
                                                        "gt_box_labels"]).to_pylist()
        objects = None
        if spec.get("attributes"):
            objects = {str(k): v for k, v in vg.read_attributes(spec["attributes"]).items()}
        for row in rows:
            if objects is not None:
                found = [(o["box"], *map_object(o["names"], o["attributes"], objects_vocab, attributes_vocab,
                                                counts)) for o in objects.get(row["image_id"], [])]
            else:
                found = [(box, objects_vocab.id(label), []) for box, label in
                         zip(row["gt_boxes"] or [], row["gt_box_labels"] or [])]
            annotations = [{"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls,
                            "attributes": [a + 1 for a in attrs]}
                           for box, cls, attrs in found if cls is not None and box[2] > box[0] and box[3] > box[1]]
            if annotations:
                records.append({"file_name": row["path"], "image_id": f"{source}/{row['image_id']}",
                                "source": source, "height": row["height"], "width": row["width"],
                                "annotations": annotations})
    return records


def split_records(records, fraction):
    """(training records, held-out records)."""
    val = [held_out(r["source"], r["image_id"], fraction) for r in records]
    return [r for r, v in zip(records, val) if not v], [r for r, v in zip(records, val) if v]


class AttributeMapper(DatasetMapper):
    """Detectron2's DatasetMapper, whose instances also carry `gt_attributes` (N, M): each
    object's attribute head indices, -1 padded."""

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annos = [utils.transform_instance_annotations(obj, transforms, image_shape)
                 for obj in dataset_dict.pop("annotations") if obj.get("iscrowd", 0) == 0]
        instances = utils.annotations_to_instances(annos, image_shape)
        width = max([len(a["attributes"]) for a in annos], default=0) or 1
        table = torch.full((len(annos), width), -1, dtype=torch.long)
        for k, anno in enumerate(annos):
            table[k, :len(anno["attributes"])] = torch.tensor(anno["attributes"], dtype=torch.long)
        instances.gt_attributes = table
        dataset_dict["instances"] = utils.filter_empty_instances(instances)  # keeps the rows aligned


class ResumableSampler(torch.utils.data.Sampler):
    """Detectron2's infinite shuffled TrainingSampler stream, starting `skip` indices in (the
    images a resumed run has already seen)."""

    def __init__(self, size, seed):
        self.base, self.skip = TrainingSampler(size, shuffle=True, seed=seed), 0

    def __iter__(self):
        return itertools.islice(iter(self.base), self.skip, None)


class RngState:
    """The torch / numpy / Python random states, saved in each checkpoint (a checkpointable)."""

    def state_dict(self):
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
                "python": json.dumps(random.getstate())}

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        kind, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = json.loads(state["python"])
        random.setstate((version, tuple(internal), gauss_next))


def build_train_cfg(detector, train, vocab, checkpoints):
    """The Detectron2 config: the extraction's architecture plus the solver settings."""
    dcfg = DetectorConfig(config=detector["config"], weights=None, opts=tuple(map(str, detector["opts"])),
                          device="cuda" if train["gpus"] else detector["device"], attributes=detector["attributes"],
                          min_size=detector["min_size"], max_size=detector["max_size"],
                          objects_vocab=vocab["objects"], attributes_vocab=vocab["attributes"])
    cfg = build_cfg(dcfg)
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TRAIN = (cfg.INPUT.MIN_SIZE_TEST,)  # trained at the size it extracts at
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST
    cfg.MODEL.WEIGHTS = train["init_weights"] or ""
    cfg.merge_from_list(list(map(str, train["opts"])))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (TRAIN_DATASET,), ()
    cfg.DATALOADER.NUM_WORKERS = int(train["num_workers"])
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False  # batches in sampler order (exact resume)
    cfg.SOLVER.IMS_PER_BATCH = int(train["batch_size"])
    cfg.SOLVER.BASE_LR = float(train["lr"])
    cfg.SOLVER.MAX_ITER = iterations = int(train["iterations"])
    cfg.SOLVER.STEPS = tuple(sorted({int(f * iterations) for f in train["lr_steps"]} - {0, iterations}))
    cfg.SOLVER.WARMUP_ITERS = int(train["warmup_iterations"])
    cfg.SOLVER.CHECKPOINT_PERIOD = int(train["checkpoint_every"])
    cfg.SEED = int(train["seed"])
    cfg.OUTPUT_DIR = checkpoints
    cfg.freeze()
    return cfg


class DetectorTrainer(DefaultTrainer):
    """DefaultTrainer with the attribute mapper, a resumable sampler, the RNG states in the
    checkpoints and the log written where the pipeline wants it."""

    log_every = 20
    train_records = ()

    @classmethod
    def build_train_loader(cls, cfg):
        cls.sampler = ResumableSampler(len(cls.train_records), cfg.SEED)
        return build_detection_train_loader(
            list(cls.train_records), mapper=AttributeMapper(cfg, is_train=True), sampler=cls.sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS)

    def build_hooks(self):
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                                  max_to_keep=3))
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=self.log_every))
        return ret

    def build_writers(self):
        return [CommonMetricPrinter(self.max_iter),
                JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "log.jsonl"))]


def newest_readable_checkpoint(folder):
    """The newest checkpoint in `folder` that loads (weights only), passing over corrupt ones
    with a log line; None when there is none."""
    paths = sorted(glob.glob(os.path.join(folder, "model_*.pth")), key=os.path.getmtime, reverse=True)
    for path in paths:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return path
        except Exception as e:  # a torn or corrupt file: try the one before
            log.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
    return None


def fingerprint(cfg, records, settings):
    """SHA-256 of what the trained weights depend on: the resolved Detectron2 config (not where the
    checkpoints lie), the training records and the settings, less the operational ones
    (cavl.settings.DetectorTrain), which change where or how fast a run goes, not its weights."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = ""
    kept = without(settings, operational_keys(DetectorTrain))
    text = json.dumps({"cfg": cfg.dump(), "records": records, "settings": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def discard_other_checkpoints(folder, digest):
    """Delete the checkpoints (and training log) in `folder` that another configuration wrote,
    with a warning, then record `digest` as the folder's configuration."""
    os.makedirs(folder, exist_ok=True)
    mark = os.path.join(folder, "fingerprint.txt")
    previous = Path(mark).read_text().strip() if os.path.exists(mark) else None
    if previous != digest:
        stale = glob.glob(os.path.join(folder, "model_*.pth")) + glob.glob(os.path.join(folder, "last_checkpoint"))
        if stale:
            log.warning("%d checkpoint(s) in %s are of another configuration; training starts afresh",
                        len(stale), folder)
        for path in stale + glob.glob(os.path.join(folder, "log.jsonl")):
            os.remove(path)
        with atomic_path(mark) as tmp:
            with open(tmp, "w") as f:
                f.write(digest + "\n")


def train(cfg, records, log_every):
    """Train (resuming from the newest readable checkpoint in cfg.OUTPUT_DIR) → the model."""
    DetectorTrainer.train_records, DetectorTrainer.log_every = records, log_every
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    torch.manual_seed(cfg.SEED), np.random.seed(cfg.SEED), random.seed(cfg.SEED)
    trainer = DetectorTrainer(cfg)
    rng = trainer.checkpointer.checkpointables["rng"] = RngState()
    newest = newest_readable_checkpoint(cfg.OUTPUT_DIR)
    if newest:
        trainer.checkpointer.tag_last_checkpoint(os.path.basename(newest))
        trainer.resume_or_load(resume=True)  # model, optimizer, scheduler, iteration, RNG states
        log.info("resuming from %s (iteration %d of %d)", newest, trainer.start_iter, cfg.SOLVER.MAX_ITER)
    else:
        trainer.resume_or_load(resume=False)
        log.info("training from %s for %d iterations", cfg.MODEL.WEIGHTS or "random weights", cfg.SOLVER.MAX_ITER)
    trainer.sampler.skip = trainer.start_iter * cfg.SOLVER.IMS_PER_BATCH
    # Creating the data iterator draws from torch's RNG: create it now and put the state back, so
    # that a resumed run and an uninterrupted one draw alike from here on.
    state = rng.state_dict()
    trainer._trainer._data_loader_iter
    rng.load_state_dict(state)
    if trainer.start_iter < cfg.SOLVER.MAX_ITER:
        trainer.train()
    return trainer.model


def evaluate(out, records, top_n, device, workdir, attribute_names):
    """Validation figures on held-out records, from the written model.pth and config.yaml through
    the extraction's RegionExtractor: object recall at IoU >= 0.5 in the top N detected boxes, AP50,
    and on the ground-truth boxes class accuracy and, given each box's predicted class, attribute
    accuracy (the top attribute is one of the object's), recall (of the (object, attribute) pairs,
    the share whose attribute is among the object's k best, k = its number of attributes) and that
    recall per attribute name (right / total)."""
    dcfg = DetectorConfig(config=os.path.join(out, "config.yaml"), weights=os.path.join(out, "model.pth"),
                          device=device)
    detect = RegionExtractor(dcfg, BoxConfig(mode="fixed", max_boxes=top_n))
    classify = copy.copy(detect)  # the same model, loaded once, on the ground-truth boxes
    classify.box_cfg = BoxConfig(given="given")
    cfg = detect.cfg
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    found = objects = right_class = attr_right = attr_total = 0
    by_attribute = collections.defaultdict(lambda: [0, 0])  # attribute id -> [in the top k, objects]
    for record in records:
        image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        transform = resize.get_transform(image)
        x = torch.as_tensor(np.ascontiguousarray(transform.apply_image(image).transpose(2, 0, 1)))[None]
        size = torch.tensor([list(x.shape[2:])])
        gt = torch.as_tensor(transform.apply_box(np.array([a["bbox"] for a in record["annotations"]])),
                             dtype=torch.float32)
        iou = pairwise_iou(Boxes(gt), Boxes(detect(x, size)["boxes"]))
        found += int((iou >= 0.5).any(dim=1).sum()) if iou.numel() else 0
        objects += len(gt)
        given = classify(x, size, [gt])
        labels = torch.tensor([a["category_id"] for a in record["annotations"]])
        right_class += int((given["classes"] == labels).sum())
        if detect.attribute_head is not None:
            head = detect.attribute_head
            with torch.no_grad():
                logits = head.attribute_logits(given["features"].to(head.attr_score.weight.device),
                                               given["classes"].to(head.attr_score.weight.device))
            ranked = logits[:, 1:].argsort(dim=1, descending=True).cpu()  # 0-based attribute ids
            for anno, order in zip(record["annotations"], ranked):
                truth = {a - 1 for a in anno["attributes"]}
                if truth:
                    attr_total += 1
                    attr_right += int(int(order[0]) in truth)
                    top = set(order[:len(truth)].tolist())
                    for a in truth:
                        by_attribute[a][0] += int(a in top)
                        by_attribute[a][1] += 1
    metrics = {"val_images": len(records), "val_objects": objects, "top_n": top_n, "objects_found": found,
               "recall@0.5": found / objects if objects else None,
               "class_accuracy_given_boxes": right_class / objects if objects else None,
               "objects_with_attributes": attr_total,
               "attribute_accuracy_given_boxes": attr_right / attr_total if attr_total else None}
    right, total = (sum(c[k] for c in by_attribute.values()) for k in (0, 1))
    metrics["attribute_recall_given_boxes"] = right / total if total else None
    metrics["attribute_recall_by_name"] = {attribute_names[a]: {"right": c[0], "total": c[1]}
                                           for a, c in sorted(by_attribute.items())}
    metrics["AP50"] = coco_ap50(cfg, detect.model, records, workdir) if records else None
    return metrics


def coco_ap50(cfg, model, records, workdir):
    """AP at IoU 0.5 from Detectron2's COCO evaluator (pycocotools)."""
    if VAL_DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(VAL_DATASET)
        MetadataCatalog.remove(VAL_DATASET)
    ids = {r["image_id"]: k for k, r in enumerate(records)}
    DatasetCatalog.register(VAL_DATASET, lambda: [{**r, "image_id": ids[r["image_id"]]} for r in records])
    MetadataCatalog.get(VAL_DATASET).set(thing_classes=[str(k) for k in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)])
    loader = build_detection_test_loader(cfg, VAL_DATASET)
    evaluator = COCOEvaluator(VAL_DATASET, tasks=("bbox",), distributed=False, output_dir=workdir)
    ap50 = float(inference_on_dataset(model, loader, evaluator)["bbox"]["AP50"])
    return None if math.isnan(ap50) else ap50 / 100.0  # NaN: no detection scored above threshold


def loss_curve(log_jsonl, out_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log_jsonl) if line.strip()]
    rows = [r for r in rows if "total_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("total_loss", "loss_cls", "loss_box_reg", "loss_attr", "loss_rpn_cls"):
        if any(key in r for r in rows):
            ax.plot([r["iteration"] for r in rows if key in r], [r[key] for r in rows if key in r], label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_model(cfg, model, out):
    """model.pth, config.yaml, log.jsonl and loss.png into `out` (metrics.json comes last)."""
    os.makedirs(out, exist_ok=True)
    # Saved through a buffer: torch.save names the archive's records after the file it writes,
    # and the temporary name would make equal weights hash differently (shards record the hash).
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buffer)
    with atomic_path(os.path.join(out, "model.pth")) as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
    with atomic_path(os.path.join(out, "config.yaml")) as tmp:
        with open(tmp, "w") as f:
            f.write(cfg.dump())
    log_src = os.path.join(cfg.OUTPUT_DIR, "log.jsonl")
    with atomic_path(os.path.join(out, "log.jsonl")) as tmp:
        shutil.copyfile(log_src, tmp)
    loss_curve(log_src, os.path.join(out, "loss.png"))


def run(args):
    """Train (in each process under `launch`), then write and evaluate the model (main process)."""
    config = json.loads(args.config)
    detector, settings = config["detector"], config["train"]
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    objects_vocab, attributes_vocab = read_vocab(args.objects_vocab), read_vocab(args.attributes_vocab)
    sources = {name: {"manifest": manifest, "attributes": args.vg_attributes if name == "vg" else None}
               for name, manifest in (item.split("=", 1) for item in args.source)}
    counts = VocabCounts()
    records = training_records(sources, objects_vocab, attributes_vocab, counts)
    train_records, val_records = split_records(records, settings["val_fraction"])
    log.info("%d training images, %d held out, %d objects; strings outside the vocabularies: %s",
             len(train_records), len(val_records), sum(len(r["annotations"]) for r in records),
             json.dumps({kind: report["outside"] for kind, report in counts.report(top=0).items()}))
    if not train_records:
        raise SystemExit("no training images with a known object: check the sources and the vocabularies")
    cfg = build_train_cfg(detector, settings, {"objects": args.objects_vocab, "attributes": args.attributes_vocab},
                          args.checkpoints)
    if comm.is_main_process():
        discard_other_checkpoints(cfg.OUTPUT_DIR, fingerprint(cfg, train_records, settings))
    comm.synchronize()
    t0 = time.time()
    model = train(cfg, train_records, settings["log_every"])
    if not comm.is_main_process():
        return
    write_model(cfg, model, args.out)
    metrics = {"train_images": len(train_records), "iterations": cfg.SOLVER.MAX_ITER,
               "train_seconds": round(time.time() - t0, 1), "vocabulary": counts.report(top=10)}
    metrics.update(evaluate(args.out, val_records, settings["eval_top_n"], cfg.MODEL.DEVICE, args.checkpoints,
                            attributes_vocab.names))
    log.info("validation %s", json.dumps(metrics))
    write_json_atomic(metrics, os.path.join(args.out, "metrics.json"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m extract.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="JSON: {detector: extract.detector, train: extract.train}")
    p.add_argument("--source", action="append", default=[], metavar="NAME=MANIFEST", help="a manifest to train on")
    p.add_argument("--vg-attributes", help="VG attributes.json (the vg source's objects and attributes)")
    p.add_argument("--objects-vocab", required=True)
    p.add_argument("--attributes-vocab", required=True)
    p.add_argument("--out", required=True, help="folder for model.pth, config.yaml, metrics.json, log.jsonl, loss.png")
    p.add_argument("--checkpoints", required=True, help="folder for the periodic checkpoints")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    gpus = int(json.loads(args.config)["train"]["gpus"])
    if gpus > 1:
        launch(run, gpus, dist_url="auto", args=(args,))
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
