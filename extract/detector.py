"""The detector: a Detectron2 Faster R-CNN and a batched forward that returns region features.

Pooled features are the box-head output (1024-d for R50-FPN) or mean-pooled res5 (2048-d for
R101-C4). Random weights (`weights=None`) are for the demo and tests only: the model is seeded
and the RPN's box-delta layer zeroed, so proposals are the (clipped) anchors themselves (random
deltas push almost every anchor outside the image and leave no proposals).
"""

import hashlib
import logging
import os
import pickle
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList

from cavl.io import file_sha256
from extract.boxes import BoxConfig, select_regions
from extract.butd import ATTRIBUTE_ROI_HEADS, add_attribute_config
from extract.vocab import read_vocab

ATTRIBUTE_HEADS = ("BUTDRes5ROIHeads", *ATTRIBUTE_ROI_HEADS.values())

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorConfig:
    config: str = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"  # model-zoo name or yaml path
    weights: str | None = None  # Detectron2 .pkl / .pth checkpoint; None = random init (demo, tests)
    seed: int = 0  # seed of the random initialisation: every shard gets the same model
    min_size: int | None = None  # shorter image side fed to the model; None = INPUT.MIN_SIZE_TEST
    max_size: int | None = None  # cap on the longer side; None = INPUT.MAX_SIZE_TEST
    proposals: int | None = None  # RPN proposals kept per image; None = RPN.POST_NMS_TOPK_TEST
    opts: tuple = field(default_factory=tuple)  # extra detectron2 overrides: ("KEY", "VALUE", ...)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # float16 autocast on CUDA (never on CPU; off with random weights, see below)
    attributes: bool = False  # add the attribute head (extract/butd.py) when the config has none
    objects_vocab: str | None = None  # vocabulary files (extract/vocab.py): they set the number of
    attributes_vocab: str | None = None  # object classes / attributes and name them in the shards


def build_cfg(dcfg):
    """The Detectron2 CfgNode for `dcfg` (model-zoo configs ship inside the detectron2 package)."""
    cfg = add_attribute_config(get_cfg())
    path = dcfg.config if os.path.isfile(dcfg.config) else model_zoo.get_config_file(dcfg.config)
    cfg.merge_from_file(path)
    if dcfg.opts:
        cfg.merge_from_list(list(dcfg.opts))
    if dcfg.attributes:
        cfg.MODEL.ATTRIBUTE_HEAD.ENABLED = True
        cfg.MODEL.ROI_HEADS.NAME = ATTRIBUTE_ROI_HEADS.get(cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_HEADS.NAME)
    if cfg.MODEL.ATTRIBUTE_HEAD.ENABLED and cfg.MODEL.ROI_HEADS.NAME not in ATTRIBUTE_HEADS:
        raise ValueError(f"ROI heads {cfg.MODEL.ROI_HEADS.NAME} have no attribute head "
                         f"(attribute-capable: {', '.join(ATTRIBUTE_HEADS)})")
    if dcfg.objects_vocab:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(read_vocab(dcfg.objects_vocab))
    if dcfg.attributes_vocab:
        cfg.MODEL.ATTRIBUTE_HEAD.NUM_ATTRIBUTES = len(read_vocab(dcfg.attributes_vocab))
    if dcfg.min_size is not None:
        cfg.INPUT.MIN_SIZE_TEST = int(dcfg.min_size)
    if dcfg.max_size is not None:
        cfg.INPUT.MAX_SIZE_TEST = int(dcfg.max_size)
    if dcfg.proposals is not None:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = int(dcfg.proposals)
    cfg.MODEL.WEIGHTS = dcfg.weights or ""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.DEVICE = auto if dcfg.device == "auto" else dcfg.device
    cfg.freeze()
    return cfg


def state_dict_sha256(model):
    """Checksum of a model's weights (used to identify a randomly initialised model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (detectron2's `pickle.load` runs any code a file names)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a checkpoint")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def read_checkpoint(path):
    """A Detectron2 checkpoint as the dict `DetectionCheckpointer._load_model` expects.

    `.pkl`: numpy arrays only; Detectron2 names (the model zoo's ``{"model": ...}``, or a plain
    dict of dotted names like the BUTD port's) load by exact name, Caffe2 / Detectron1 blob names
    (``res2_0_branch2a_w``) through Detectron2's matching heuristics. `.pth`/`.pt` (torch.save):
    `torch.load(weights_only=True)`.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pkl":
        try:
            with open(path, "rb") as f:
                data = _ArrayUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{path}: not a checkpoint of numpy arrays only ({e}); "
                                         "this loader runs no code from a file") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
        if "model" in data:  # Detectron2 format
            return {"model": data["model"], "__author__": data.get("__author__", "unknown"),
                    "matching_heuristics": bool(data.get("matching_heuristics", False))}
        data = data.get("blobs", data)  # Detectron1 detection models keep arrays in "blobs"
        dotted = all("." in k for k in data)
        return {"model": data, "__author__": "Detectron2 names" if dotted else "Caffe2",
                "matching_heuristics": not dotted}
    if ext in (".pth", ".pt"):
        data = torch.load(path, map_location="cpu", weights_only=True)
        return data if "model" in data else {"model": data}
    raise ValueError(f"unsupported checkpoint {path!r}: expected a Detectron2 .pkl or .pth file")


def load_checkpoint(model, path):
    """Load `path` into `model` as Detectron2's checkpointer does (exact names, or its heuristics
    for Caffe2 blob names); → (missing keys, unexpected keys, [(key, file shape, model shape)])."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detector weights not found: {path}")
    incompatible = DetectionCheckpointer(model)._load_model(read_checkpoint(path))
    mismatched = [(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes]
    wrong_shape = {k for k, _, _ in mismatched}  # not loaded, so also listed as missing: once is enough
    return ([k for k in incompatible.missing_keys if k not in wrong_shape], list(incompatible.unexpected_keys),
            mismatched)


def load_weights(model, path):
    """Load `path` into `model`; a layer the file leaves random (missing key, other shape) is an error."""
    missing, unexpected, mismatched = load_checkpoint(model, path)
    if missing or mismatched:
        raise ValueError(f"{path} does not fit the detector: {len(missing)} missing keys "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), "
                         f"{len(mismatched)} shape mismatches; run `python -m extract.weights check {path} "
                         f"--config ...` for the full list")
    if unexpected:
        log.warning("%s: %d keys the detector does not use (%s)", path, len(unexpected), ", ".join(unexpected[:5]))


class RegionExtractor:
    """A Detectron2 Faster R-CNN that returns region boxes, classes, scores and pooled features."""

    def __init__(self, dcfg, box_cfg=BoxConfig()):
        self.dcfg, self.box_cfg = dcfg, box_cfg
        self.cfg = build_cfg(dcfg)
        self.device = torch.device(self.cfg.MODEL.DEVICE)
        torch.manual_seed(dcfg.seed)
        model = build_model(self.cfg)
        if dcfg.weights:
            load_weights(model, dcfg.weights)
            self.weights_checksum = "sha256:" + file_sha256(dcfg.weights)
        else:
            deltas = getattr(model.proposal_generator.rpn_head, "anchor_deltas", None)
            if deltas is None:
                raise ValueError(f"cannot zero the box deltas of RPN head "
                                 f"{type(model.proposal_generator.rpn_head).__name__}")
            torch.nn.init.zeros_(deltas.weight)
            torch.nn.init.zeros_(deltas.bias)
            self.weights_checksum = "random-init:seed=%d:sha256:%s" % (dcfg.seed, state_dict_sha256(model))
            log.warning("!" * 78)
            log.warning("RANDOM DETECTOR WEIGHTS (weights: null): features are meaningless; demo/tests only")
            log.warning("!" * 78)
        self.model = model.to(self.device).eval()
        # fp16 autocast only where it helps and is safe: random-init activations grow past fp16's
        # range (measured ~3e6 in R101-C4's res4), trained ones do not.
        self.amp = bool(dcfg.amp and self.device.type == "cuda" and dcfg.weights)
        heads = self.model.roi_heads
        self.feature_dim = heads.box_predictor.cls_score.in_features
        self.num_classes = heads.box_predictor.cls_score.out_features - 1
        self.sigmoid = bool(getattr(heads.box_predictor, "use_sigmoid_ce", False))
        self.attribute_head = heads.box_predictor if hasattr(heads.box_predictor, "predict_attributes") else None
        self.pixel_mean = self.model.pixel_mean.view(1, -1, 1, 1)
        self.pixel_std = self.model.pixel_std.view(1, -1, 1, 1)
        # Preprocessing parameters the image loader must follow.
        self.input_format = self.cfg.INPUT.FORMAT  # "BGR" for the model zoo
        self.min_size, self.max_size = int(self.cfg.INPUT.MIN_SIZE_TEST), int(self.cfg.INPUT.MAX_SIZE_TEST)
        self.size_divisibility = int(self.model.backbone.size_divisibility) or 1

    def vocabularies(self):
        """The vocabulary files that name the classes and attributes (shard metadata), or None."""
        files = {"objects": self.dcfg.objects_vocab, "attributes": self.dcfg.attributes_vocab}
        if not any(files.values()):
            return None
        return {kind: None if path is None else {"file": os.path.basename(path), "sha256": file_sha256(path),
                                                 "classes": len(read_vocab(path))}
                for kind, path in files.items()}

    def describe(self):
        """What the shard metadata records about the detector."""
        class_names = read_vocab(self.dcfg.objects_vocab).names if self.dcfg.objects_vocab else None
        if class_names is None and len(self.cfg.DATASETS.TEST):
            class_names = list(MetadataCatalog.get(self.cfg.DATASETS.TEST[0]).get("thing_classes", []))
        portable = self.cfg.clone()  # what defines the model, not where it ran
        portable.defrost()
        portable.MODEL.DEVICE = ""
        return {
            "config": self.dcfg.config,
            "config_yaml": portable.dump(),
            "device": str(self.device),
            "weights": self.dcfg.weights,
            "weights_checksum": self.weights_checksum,
            "random_init": not self.dcfg.weights,
            "rpn_deltas_zeroed": not self.dcfg.weights,
            "seed": self.dcfg.seed,
            "min_size_test": self.min_size,
            "max_size_test": self.max_size,
            "proposals": int(self.cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            "input_format": self.input_format,
            "roi_heads": self.cfg.MODEL.ROI_HEADS.NAME,
            "num_classes": self.num_classes,
            "class_names": class_names or None,
            "attribute_head": self.attribute_head is not None,
            "num_attributes": self.attribute_head.num_attributes if self.attribute_head else None,
            "amp": self.amp,
        }

    @torch.no_grad()
    def __call__(self, images, image_sizes, given=None):
        """Regions of a batch.

        images: (B, 3, H, W) uint8 (or float), channels in `input_format`, each image top-left in
            the padded canvas; image_sizes: (B, 2) (h, w); given: optional B float tensors (n_i, 4)
            in input pixels, used according to `box_cfg.given`.

        → dict of flat CPU tensors, image by image (given boxes in their order, then the detected
        ones by descending score): `counts` (B,), `num_given` (B,), `boxes` (S, 4) in input pixels,
        `scores` (S,), `classes` (S,) int64, `features` (S, D) float32, and with an attribute head
        `attributes` (S,) int64 (0-based vocabulary id, given the box's class), `attribute_scores` (S,).
        """
        B = images.shape[0]
        sizes = torch.as_tensor(image_sizes, dtype=torch.long).view(B, 2)
        x = self._normalize(images.to(self.device, non_blocking=True), sizes)
        size_list = [tuple(s) for s in sizes.tolist()]
        if self.box_cfg.given == "none" or given is None:
            given = [torch.zeros(0, 4)] * B
        num_given = torch.tensor([len(g) for g in given], dtype=torch.long)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            features = self.model.backbone(x)
            if self.box_cfg.given == "given":
                proposals = [torch.zeros(0, 4, device=self.device) for _ in range(B)]
            else:
                found, _ = self.model.proposal_generator(ImageList(x, size_list), features, None)
                proposals = [p.proposal_boxes.tensor.float() for p in found]
            rois = [torch.cat([self._clip(g, s), p]) for g, s, p in zip(given, size_list, proposals)]
            roi_feats, probs = self._roi_forward(features, rois)  # (R, D), (R, K)

        # Flat layout of the rois: image b holds [given_b..., proposals_b...].
        n_rois = torch.tensor([len(r) for r in rois], device=self.device)
        roi_start = torch.cumsum(n_rois, 0) - n_rois
        boxes = torch.cat(rois) if rois else torch.zeros(0, 4, device=self.device)
        n_given_d = num_given.to(self.device)
        n_prop = n_rois - n_given_d
        is_prop = torch.arange(len(boxes), device=self.device) - torch.repeat_interleave(roi_start, n_rois)
        is_prop = is_prop >= torch.repeat_interleave(n_given_d, n_rois)
        prop_rows = torch.nonzero(is_prop).flatten()
        owner = torch.repeat_interleave(torch.arange(B, device=self.device), n_prop)
        lo, hi = self.box_cfg.quotas(n_given_d)
        sel = select_regions(boxes[prop_rows], probs[prop_rows], owner, B, lo, hi, self.box_cfg)
        det_rows = prop_rows[sel.index]

        # Given boxes: their best class and its score, no selection.
        given_rows = torch.nonzero(~is_prop).flatten()
        given_owner = torch.repeat_interleave(torch.arange(B, device=self.device), n_given_d)
        g_score, g_label = probs[given_rows].max(dim=1) if len(given_rows) else (probs.new_zeros(0), given_rows)

        # Interleave per image: given first, then detected (both already grouped by image).
        rows = torch.cat([given_rows, det_rows])
        image = torch.cat([given_owner, sel.image])
        order = torch.sort(image, stable=True).indices
        rows = rows[order]
        classes = torch.cat([g_label, sel.label])[order]
        out = {
            "counts": torch.bincount(image, minlength=B).cpu(),
            "num_given": num_given,
            "boxes": boxes[rows].float().cpu(),
            "scores": torch.cat([g_score, sel.score])[order].float().cpu(),
            "classes": classes.cpu(),
            "features": roi_feats[rows].float().cpu(),
        }
        if self.attribute_head is not None:  # only for the kept boxes: a small share of the time
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                ids, scores = self.attribute_head.predict_attributes(roi_feats[rows], classes)
            out["attributes"], out["attribute_scores"] = ids.cpu(), scores.float().cpu()
        return out

    def _normalize(self, x, sizes):
        """(x - mean) / std, zero outside each image, padded to the backbone's divisibility."""
        x = (x.float() - self.pixel_mean) / self.pixel_std
        B, _, H, W = x.shape
        rows = torch.arange(H, device=x.device).view(1, H, 1) < sizes[:, 0].to(x.device).view(B, 1, 1)
        cols = torch.arange(W, device=x.device).view(1, 1, W) < sizes[:, 1].to(x.device).view(B, 1, 1)
        x = x * (rows & cols).unsqueeze(1)  # detectron2 pads after normalising: padding is 0
        d = self.size_divisibility
        return F.pad(x, (0, (-W) % d, 0, (-H) % d))

    def _clip(self, boxes, size):
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).view(-1, 4)
        h, w = size
        return boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device))

    def _roi_forward(self, features, rois):
        """Pooled feature and foreground class probabilities of every roi."""
        heads = self.model.roi_heads
        box_lists = [Boxes(r) for r in rois]
        if hasattr(heads, "res5"):  # C4: res5 on the pooled res4 crop, then mean over space
            x = heads.pooler([features[f] for f in heads.in_features], box_lists)
            feats = heads.res5(x).mean(dim=(2, 3))  # (R, 2048)
        else:  # FPN: multi-level ROIAlign, then the two-FC box head
            x = heads.box_pooler([features[f] for f in heads.box_in_features], box_lists)
            feats = heads.box_head(x)  # (R, 1024)
        logits = heads.box_predictor.cls_score(feats).float()  # (R, K+1), background last
        probs = torch.sigmoid(logits) if self.sigmoid else F.softmax(logits, dim=-1)
        return feats, probs[:, :-1]
