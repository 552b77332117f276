"""The bottom-up-attention (BUTD) detector and the attribute head, built through Detectron2's registries.

Importing this module registers the backbone ``build_butd_resnet_backbone`` (ResNet with Caffe's
max-pool stem) and the ROI heads ``BUTDRes5ROIHeads`` (res5 with stride 1 and dilated 3×3 convs,
so 14×14 ROIs stay 14×14), ``AttributeRes5ROIHeads`` and ``AttributeStandardROIHeads`` (the stock
C4 and FPN heads); all three add the attribute head when ``MODEL.ATTRIBUTE_HEAD.ENABLED``.

The attribute head sits in the box predictor, as in the Detectron2 port of BUTD, so its keys are
``roi_heads.box_predictor.{cls_embedding, fc_attr, attr_score}``; output 0 means "no attribute".
Training embeds each foreground ROI's ground-truth class; inference the predicted one.
``extract/configs/butd_R101_C4_attr.yaml`` selects the whole BUTD architecture
(``../shared/notes/butd.md``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet, build_resnet_backbone
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

# Stock ROI heads → the registered subclass that adds the attribute head to its box predictor.
ATTRIBUTE_ROI_HEADS = {"Res5ROIHeads": "AttributeRes5ROIHeads", "StandardROIHeads": "AttributeStandardROIHeads"}


def add_attribute_config(cfg):
    """Add ``MODEL.ATTRIBUTE_HEAD`` (off by default) to a Detectron2 config."""
    cfg.MODEL.ATTRIBUTE_HEAD = CfgNode({
        "ENABLED": False,
        "NUM_ATTRIBUTES": 400,  # attribute classes, without "no attribute"
        "EMBED_DIM": 256,  # object-class embedding
        "HIDDEN_DIM": 512,
        "LOSS_WEIGHT": 0.5,
    })
    return cfg


class CaffeMaxPoolStem(BasicStem):
    """ResNet stem with Caffe's max-pool: no padding, output size rounded up."""

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


@BACKBONE_REGISTRY.register()
def build_butd_resnet_backbone(cfg, input_shape):
    backbone = build_resnet_backbone(cfg, input_shape)
    backbone.stem = CaffeMaxPoolStem(input_shape.channels, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
                                     cfg.MODEL.RESNETS.NORM)
    if cfg.MODEL.BACKBONE.FREEZE_AT >= 1:
        backbone.stem.freeze()
    return backbone


class AttributePredictions(tuple):
    """What the box predictor returns: Detectron2's pair (scores, deltas), carrying the box
    features the attribute loss needs as `.features`."""

    def __new__(cls, scores, proposal_deltas, features):
        pair = super().__new__(cls, (scores, proposal_deltas))
        pair.scores, pair.features = scores, features
        return pair


def attribute_loss(logits, gt_attributes, weight):
    """BUTD's attribute loss: softmax cross-entropy over the attribute head's outputs, times `weight`.

    logits: (R, A + 1) of R foreground ROIs; gt_attributes: (R, M) head indices (attribute
    vocabulary id + 1), -1 where an ROI has fewer than M attributes (an ROI with none is ignored).
    Each (ROI, attribute) pair is one term of the mean.
    """
    m = gt_attributes.shape[1] if gt_attributes.dim() == 2 else 1
    targets = gt_attributes.reshape(-1).long()
    valid = targets >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    rows = torch.arange(len(logits), device=logits.device).repeat_interleave(m)[valid]
    return weight * F.cross_entropy(logits[rows], targets[valid])


class AttributeOutputLayers(FastRCNNOutputLayers):
    """Detectron2's box predictor with BUTD's attribute head beside it."""

    @configurable
    def __init__(self, input_shape, *, num_attributes, embed_dim=256, hidden_dim=512,
                 attribute_loss_weight=0.5, **kwargs):
        super().__init__(input_shape, **kwargs)
        feature_dim = self.cls_score.in_features
        self.attribute_loss_weight = attribute_loss_weight
        self.cls_embedding = nn.Embedding(self.num_classes + 1, embed_dim)
        self.fc_attr = nn.Linear(feature_dim + embed_dim, hidden_dim)
        self.attr_score = nn.Linear(hidden_dim, num_attributes + 1)
        nn.init.normal_(self.attr_score.weight, std=0.01)
        nn.init.constant_(self.attr_score.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ATTRIBUTE_HEAD
        return {**super().from_config(cfg, input_shape), "num_attributes": head.NUM_ATTRIBUTES,
                "embed_dim": head.EMBED_DIM, "hidden_dim": head.HIDDEN_DIM,
                "attribute_loss_weight": head.LOSS_WEIGHT}

    @property
    def num_attributes(self):
        return self.attr_score.out_features - 1

    def forward(self, x):
        x = torch.flatten(x, start_dim=1) if x.dim() > 2 else x
        scores, deltas = super().forward(x)
        return AttributePredictions(scores, deltas, x)

    def attribute_logits(self, features, classes):
        """(R, A + 1) attribute logits of boxes with features (R, D) and object classes (R,)."""
        embedded = self.cls_embedding(classes.long())
        return self.attr_score(F.relu(self.fc_attr(torch.cat([features, embedded.to(features.dtype)], 1))))

    def predict_attributes(self, features, classes):
        """Each box's most likely attribute (0-based vocabulary id, "no attribute" excluded) and its
        probability, given the box's object class."""
        probs = F.softmax(self.attribute_logits(features, classes).float(), dim=-1)
        scores, ids = probs[:, 1:].max(dim=1)
        return ids, scores

    def losses(self, predictions, proposals):
        losses = super().losses(predictions, proposals)
        gt_classes = torch.cat([p.gt_classes for p in proposals]) if proposals else predictions.scores.new_zeros(0)
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        gt_attributes = _gt_attributes(proposals, predictions.scores.device)
        logits = self.attribute_logits(predictions.features[foreground], gt_classes[foreground])
        losses["loss_attr"] = attribute_loss(logits, gt_attributes[foreground], self.attribute_loss_weight)
        return losses


def _gt_attributes(proposals, device):
    """The sampled proposals' `gt_attributes` (copied from their matched targets), padded to one
    width with -1; -1 rows for images whose targets carry none."""
    parts = [p.gt_attributes.view(len(p), -1) if p.has("gt_attributes")
             else torch.full((len(p), 1), -1, dtype=torch.long, device=device) for p in proposals]
    width = max([t.shape[1] for t in parts], default=1)
    return torch.cat([F.pad(t.long(), (0, width - t.shape[1]), value=-1) for t in parts]) if parts else \
        torch.full((0, 1), -1, dtype=torch.long, device=device)


def _with_attribute_predictor(ret, cfg, feature_shape):
    if cfg.MODEL.ATTRIBUTE_HEAD.ENABLED:
        ret["box_predictor"] = AttributeOutputLayers(cfg, feature_shape)
    return ret


@ROI_HEADS_REGISTRY.register()
class AttributeRes5ROIHeads(Res5ROIHeads):
    """Detectron2's C4 heads, with the attribute head when MODEL.ATTRIBUTE_HEAD.ENABLED."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        channels = ret["box_predictor"].cls_score.in_features
        return _with_attribute_predictor(ret, cfg, ShapeSpec(channels=channels, height=1, width=1))


@ROI_HEADS_REGISTRY.register()
class BUTDRes5ROIHeads(AttributeRes5ROIHeads):
    """BUTD's C4 heads: res5 keeps the 14×14 ROIPool grid (stride 1) and dilates its 3×3 convs."""

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
        blocks = ResNet.make_stage(
            BottleneckBlock, 3, stride_per_block=[1, 1, 1], in_channels=out_channels // 2,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8, out_channels=out_channels,
            num_groups=r.NUM_GROUPS, norm=r.NORM, stride_in_1x1=r.STRIDE_IN_1X1, dilation=r.RES5_DILATION,
        )
        return nn.Sequential(*blocks), out_channels


@ROI_HEADS_REGISTRY.register()
class AttributeStandardROIHeads(StandardROIHeads):
    """Detectron2's FPN heads, with the attribute head on the box head's output when enabled."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        return _with_attribute_predictor(ret, cfg, ret["box_head"].output_shape)
