"""Adapters: identity at init, placement in the layer slots, which parameters train and change."""

import copy

import pytest
import torch

from cavl.adapters import (AdapterSettings, BottleneckAdapter, ShortcutAdapter, configure_trainable,
                           count_parameters, params_line, state_checksum)
from cavl.finetune_model import FinetuneModel
from cavl.model import CavlConfig, CavlModel
from cavl.tasks import get_task
from cavl.train_loop import OptimConfig, build_optimizer

TINY = CavlConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=32, visual_dim=12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
VQA_STATE = {"answers": ["yes", "no", "2", "red"]}


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return CavlModel(TINY)


def vqa_batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    L, R = 7, 5
    ids = torch.randint(5, 40, (n, L), generator=g)
    mask = torch.ones(n, L, dtype=torch.long)
    mask[0, 5:] = 0  # a padded question
    vmask = torch.ones(n, R, dtype=torch.long)
    vmask[1, 3:] = 0  # an image with fewer regions
    targets = torch.zeros(n, len(VQA_STATE["answers"]))
    targets[torch.arange(n), torch.arange(n) % 4] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "visual_feats": torch.randn(n, R, 12, generator=g), "visual_boxes": torch.rand(n, R, 5, generator=g),
            "visual_mask": vmask, "vqa_targets": targets}


def make(method, also_train=("layer_norm",), seed=0):
    settings = AdapterSettings(bottleneck=8, shortcut_layers=1, shortcut_width=16, shortcut_heads=2,
                               also_train=list(also_train))
    return FinetuneModel(tiny_backbone(seed), get_task("vqa"), VQA_STATE, method, settings)


def test_bottleneck_adapter_is_identity_when_fresh():
    adapter = BottleneckAdapter(32, 8)
    x = torch.randn(3, 5, 32)
    assert torch.equal(adapter(x), x)
    assert torch.count_nonzero(adapter.up.weight) == 0


@pytest.mark.parametrize("method", ["adapter2", "adapter1", "adapter1+2"])
def test_fresh_adapters_reproduce_the_backbone_exactly(method):
    reference = tiny_backbone().eval()
    model = make(method).eval()
    batch = vqa_batch()
    with torch.no_grad():
        want = reference(batch["input_ids"], batch["attention_mask"], batch["visual_feats"], batch["visual_boxes"],
                         batch["visual_mask"], batch["token_type_ids"])
        got = model.encode(batch)
    assert torch.equal(got.states[:, 0], want.last_hidden_state)
    assert torch.equal(got.pooled[:, 0], want.pooled_output)


def test_adapter2_sits_in_both_slots_of_every_layer_and_no_hooks():
    model = make("adapter2")
    for layer in model.backbone.encoder.layers:
        assert isinstance(layer.attention_adapter, BottleneckAdapter)
        assert isinstance(layer.ffn_adapter, BottleneckAdapter)
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    assert model.shortcut is None
    assert isinstance(make("adapter1").shortcut, ShortcutAdapter)


def _trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_which_parameters_train_per_method():
    linear = _trainable_names(make("linear"))
    assert linear and all(n.startswith("head.") for n in linear)
    a1 = _trainable_names(make("adapter1"))
    assert a1 - linear and all(n.startswith(("head.", "shortcut.")) for n in a1)
    a2 = _trainable_names(make("adapter2"))
    assert all(n.startswith("head.") or "_adapter." in n or "norm." in n for n in a2)
    assert not any(k in n for n in a2 for k in ("attention.query", "attention.out", "ffn_in", "ffn_out", "word_"))
    assert any("attention_norm" in n for n in a2) and any("ffn_adapter.up" in n for n in a2)
    bare = _trainable_names(make("adapter2", also_train=()))
    assert not any("norm." in n and "head." not in n for n in bare)
    vis = _trainable_names(make("adapter2", also_train=("visual_embeddings", "pooler")))
    assert {"backbone.embeddings.visual_token_type", "backbone.embeddings.visual_projection.weight",
            "backbone.pooler.dense.weight"} <= vis
    both = _trainable_names(make("adapter1+2"))
    assert a1 | a2 <= both
    full = make("full")
    assert _trainable_names(full) == {n for n, _ in full.named_parameters()}


def test_params_line_is_peft_style():
    trainable, total = count_parameters(make("adapter2"))
    line = params_line(trainable, total)
    assert line == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    assert 0 < trainable < total


@pytest.mark.parametrize("method,also_train", [("adapter2", ()), ("adapter2", ("layer_norm",)), ("adapter1", ()),
                                               ("linear", ()), ("adapter1+2", ("layer_norm",))])
def test_optimiser_steps_change_only_adapter_and_head_parameters(method, also_train):
    model = make(method, also_train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.01))
    model.train()
    for seed in (1, 2):  # two steps: zero-initialised Up layers pass gradient on from the second
        model(vqa_batch(seed=seed))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = _trainable_names(model)
    assert changed == trainable
    frozen = [n for n, _ in model.named_parameters() if n not in trainable]
    assert frozen and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in frozen)


def test_frozen_backbone_stays_in_eval_mode_while_training():
    model = make("adapter1").train()
    assert model.training and model.shortcut.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())
    model2 = make("adapter2").train()
    assert model2.backbone.training


def test_state_checksum_follows_weights():
    a, b = tiny_backbone(0), tiny_backbone(0)
    assert state_checksum(a) == state_checksum(b)
    with torch.no_grad():
        b.pooler.dense.bias[0] += 1e-6
    assert state_checksum(a) != state_checksum(b)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        make("adapter3")
    with pytest.raises(ValueError, match="also_train"):
        AdapterSettings(also_train=["attention"])
    with pytest.raises(ValueError, match="multiple"):
        AdapterSettings(shortcut_width=10, shortcut_heads=4)


def test_full_method_trains_everything_and_model_copies():
    model = make("adapter2")
    configure_trainable(model, model.backbone, "full", model.adapter_settings)
    assert all(p.requires_grad for p in model.parameters())
    # plain modules: a deep copy is an equal, independent model (no hooks or closures that
    # would tie it to the original)
    twin = copy.deepcopy(model)
    assert twin is not model and type(twin) is type(model)
    assert _trainable_names(twin) == _trainable_names(model)
    state, twin_state = model.state_dict(), twin.state_dict()
    assert state.keys() == twin_state.keys() and all(torch.equal(state[k], twin_state[k]) for k in state)
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(model.parameters(), twin.parameters()))
    batch = vqa_batch()
    model.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(batch)["loss"], model(batch)["loss"])
        before = model(batch)["loss"]
        next(twin.head.parameters()).add_(1.0)  # changing the copy leaves the original as it was
        assert torch.equal(model(batch)["loss"], before) and not torch.equal(twin(batch)["loss"], before)
