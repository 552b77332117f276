"""The BUTD detector (extract/butd.py, extract/configs/butd_R101_C4_attr.yaml), its attribute head,
and `python -m extract.weights check`.

The expected keys and shapes are written out here from ../shared/notes/butd.md (the published
prototxt), not read from the model.
"""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from extract.butd import AttributeOutputLayers, attribute_loss
from extract.detector import DetectorConfig, build_cfg
from extract.weights import BUTD_CONFIG, main as weights_main

FROZEN_BN = ("weight", "bias", "running_mean", "running_var")


def _conv(prefix, out_ch, in_ch, k):
    keys = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    keys.update({f"{prefix}.norm.{b}": (out_ch,) for b in FROZEN_BN})
    return keys


def _stage(prefix, blocks, in_ch, bottleneck, out_ch):
    keys = {}
    for i in range(blocks):
        block_in = in_ch if i == 0 else out_ch
        if i == 0:
            keys.update(_conv(f"{prefix}.{i}.shortcut", out_ch, block_in, 1))
        keys.update(_conv(f"{prefix}.{i}.conv1", bottleneck, block_in, 1))
        keys.update(_conv(f"{prefix}.{i}.conv2", bottleneck, bottleneck, 3))
        keys.update(_conv(f"{prefix}.{i}.conv3", out_ch, bottleneck, 1))
    return keys


def butd_keys():
    """Every parameter and buffer of BUTD's R101-C4 with attributes, in Detectron2 names."""
    keys = _conv("backbone.stem.conv1", 64, 3, 7)
    keys.update(_stage("backbone.res2", 3, 64, 64, 256))
    keys.update(_stage("backbone.res3", 4, 256, 128, 512))
    keys.update(_stage("backbone.res4", 23, 512, 256, 1024))
    keys.update(_stage("roi_heads.res5", 3, 1024, 512, 2048))
    rpn = "proposal_generator.rpn_head"
    keys.update({f"{rpn}.conv.weight": (512, 1024, 3, 3), f"{rpn}.conv.bias": (512,),
                 f"{rpn}.objectness_logits.weight": (12, 512, 1, 1), f"{rpn}.objectness_logits.bias": (12,),
                 f"{rpn}.anchor_deltas.weight": (48, 512, 1, 1), f"{rpn}.anchor_deltas.bias": (48,)})
    p = "roi_heads.box_predictor"
    keys.update({f"{p}.cls_score.weight": (1601, 2048), f"{p}.cls_score.bias": (1601,),
                 f"{p}.bbox_pred.weight": (6400, 2048), f"{p}.bbox_pred.bias": (6400,),
                 f"{p}.cls_embedding.weight": (1601, 256),
                 f"{p}.fc_attr.weight": (512, 2304), f"{p}.fc_attr.bias": (512,),
                 f"{p}.attr_score.weight": (401, 512), f"{p}.attr_score.bias": (401,)})
    return keys


@pytest.fixture(scope="module")
def butd_model():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(build_cfg(DetectorConfig(config=BUTD_CONFIG, device="cpu"))).eval()


def test_butd_architecture_has_the_published_keys_and_shapes(butd_model):
    actual = {k: tuple(v.shape) for k, v in butd_model.state_dict().items()}
    expected = butd_keys()
    assert sorted(set(actual) - set(expected)) == []
    assert sorted(set(expected) - set(actual)) == []
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}


def _write_pkl(path, keys):
    """A checkpoint in the Detectron2 .pkl layout the BUTD port's files use: names → numpy arrays."""
    with open(path, "wb") as f:
        pickle.dump({"model": {k: np.zeros(s, np.float32) for k, s in keys.items()},
                     "__author__": "test"}, f)


def test_weights_check_accepts_exact_keys_and_reports_each_defect(tmp_path, capsys):
    keys = butd_keys()
    good = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    _write_pkl(good, keys)
    assert weights_main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "missing keys (in the architecture, not in the file): 0" in out
    assert "unexpected keys (in the file, not in the architecture): 0" in out
    assert "shape mismatches: 0" in out and "OK" in out

    bad = dict(keys)
    bad["roi_heads.box_predictor.attr_scores.weight"] = bad.pop("roi_heads.box_predictor.attr_score.weight")
    bad["proposal_generator.rpn_head.conv.weight"] = (1024, 1024, 3, 3)  # stock RPN width
    broken = tmp_path / "broken.pkl"
    _write_pkl(broken, bad)
    assert weights_main(["check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "missing keys (in the architecture, not in the file): 1\n  roi_heads.box_predictor.attr_score.weight" in out
    assert "unexpected keys (in the file, not in the architecture): 1\n  roi_heads.box_predictor.attr_scores.weight" in out
    assert ("shape mismatches: 1\n  proposal_generator.rpn_head.conv.weight: file [1024, 1024, 3, 3] "
            "vs architecture [512, 1024, 3, 3]") in out
    assert "FAILED" in out


def test_weights_check_refuses_a_file_that_needs_more_than_arrays(tmp_path, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("ran",))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"w": Exploit()}}, f)
    assert weights_main(["check", str(evil)]) == 2
    captured = capsys.readouterr()
    assert "refusing to unpickle builtins.print" in captured.err and "ran" not in captured.out


def test_caffe_max_pool_roipool_and_dilated_res5_give_the_published_sizes(butd_model):
    from detectron2.structures import Boxes

    with torch.no_grad():
        res4 = butd_model.backbone(torch.zeros(1, 3, 600, 800))["res4"]
        assert tuple(res4.shape) == (1, 1024, 38, 50)
        # Caffe's pooling (padding 0, ceil) and Detectron2's (padding 1, floor) differ on odd sizes.
        stem = butd_model.backbone.stem
        assert tuple(stem(torch.zeros(1, 3, 601, 801)).shape[2:]) == (150, 200)
        conv = F.relu(stem.conv1(torch.zeros(1, 3, 601, 801)))
        assert tuple(F.max_pool2d(conv, 3, 2, 1).shape[2:]) == (151, 201)

        heads = butd_model.roi_heads
        pooled = heads.pooler([res4], [Boxes(torch.tensor([[10.0, 20.0, 300.0, 400.0]]))])
        assert tuple(pooled.shape) == (1, 1024, 14, 14)
        assert type(heads.pooler.level_poolers[0]).__name__ == "RoIPool"  # torchvision's max pooling, not ROIAlign
        res5 = heads.res5(pooled)
        assert tuple(res5.shape) == (1, 2048, 14, 14)
        assert tuple(res5.mean(dim=(2, 3)).shape) == (1, 2048)
    conv2 = heads.res5[0].conv2
    assert conv2.dilation == (2, 2) and conv2.padding == (2, 2) and heads.res5[0].conv1.stride == (1, 1)


def test_attribute_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 0.0, 0.0], [0.3, -1.0, 0.2, 2.0]])
    gt = torch.tensor([[2, 3], [-1, -1], [1, -1]])  # ROI 1 has no attribute: ignored
    log_p = torch.log_softmax(logits, dim=1)
    by_hand = -0.5 * (log_p[0, 2] + log_p[0, 3] + log_p[2, 1]) / 3
    assert torch.allclose(attribute_loss(logits, gt, 0.5), by_hand)
    assert attribute_loss(logits, torch.full((3, 1), -1), 0.5).item() == 0.0


def _tiny_predictor():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    from extract.butd import add_attribute_config

    cfg = add_attribute_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ATTRIBUTE_HEAD.NUM_ATTRIBUTES = 4
    cfg.MODEL.ATTRIBUTE_HEAD.EMBED_DIM = 5
    cfg.MODEL.ATTRIBUTE_HEAD.HIDDEN_DIM = 6
    torch.manual_seed(0)
    return AttributeOutputLayers(cfg, ShapeSpec(channels=8))


def _attribute_logits_by_hand(p, features, classes):
    x = torch.cat([features, p.cls_embedding.weight[classes]], dim=1)
    return F.relu(x @ p.fc_attr.weight.T + p.fc_attr.bias) @ p.attr_score.weight.T + p.attr_score.bias


def test_attribute_head_trains_on_ground_truth_classes_and_predicts_with_the_predicted_class():
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    p = _tiny_predictor()
    features = torch.randn(3, 8)
    proposals = Instances((10, 10), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]] * 3)),
                          gt_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]] * 3)),
                          gt_classes=torch.tensor([2, 3, 0]),  # 3 = background (NUM_CLASSES)
                          gt_attributes=torch.tensor([[1, 4], [2, -1], [-1, -1]]))
    with EventStorage():  # detectron2's losses log accuracy there
        losses = p.losses(p(features), [proposals])
    # Foreground ROIs 0 and 2 with their ground-truth classes; ROI 2 has no attribute.
    logits = _attribute_logits_by_hand(p, features[[0]], torch.tensor([2]))
    log_p = torch.log_softmax(logits, dim=1)
    assert torch.allclose(losses["loss_attr"], -0.5 * (log_p[0, 1] + log_p[0, 4]) / 2)
    assert {"loss_cls", "loss_box_reg"} <= set(losses)

    with torch.no_grad():
        predicted = torch.tensor([1, 0, 2])
        ids, scores = p.predict_attributes(features, predicted)
        probs = torch.softmax(_attribute_logits_by_hand(p, features, predicted), dim=1)
    assert torch.equal(ids, probs[:, 1:].argmax(dim=1))  # "no attribute" (output 0) never predicted
    assert torch.allclose(scores, probs[:, 1:].max(dim=1).values)
    with torch.no_grad():
        other, _ = p.predict_attributes(features, torch.tensor([0, 2, 1]))
        assert not torch.equal(_attribute_logits_by_hand(p, features, torch.tensor([0, 2, 1])),
                               _attribute_logits_by_hand(p, features, predicted))


def test_attribute_option_adds_the_head_to_an_fpn_box_head():
    from detectron2.modeling import build_model

    cfg = build_cfg(DetectorConfig(config="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", device="cpu",
                                   attributes=True, opts=("MODEL.RESNETS.DEPTH", "18",
                                                          "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")))
    assert cfg.MODEL.ROI_HEADS.NAME == "AttributeStandardROIHeads"
    predictor = build_model(cfg).roi_heads.box_predictor
    assert predictor.fc_attr.in_features == 1024 + 256 and predictor.num_attributes == 400
