"""The backbone's one forward pass (CavlModel.forward): its one-modality forms encode_text /
encode_image, cached states, word-region links, the frozen mode, parity with Hugging Face's
BertModel and VisualBertModel, and that every caller goes through it (nothing else chains the
embeddings, encoder and pooler or builds an attention mask)."""

import pytest
import torch

from cavl import retrieval
from cavl.adapters import AdapterSettings, ShortcutAdapter
from cavl.finetune_model import FinetuneModel
from cavl.model import CavlConfig, CavlForPretraining, CavlModel, ObjectiveConfig
from cavl.tasks import get_task
from cavl.tasks.base import TaskLoss, TaskOutput
from cavl.tasks.tir import TirOutput

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, visual_dim=6, cls_token_id=2, sep_token_id=3, mask_token_id=4)
SHORTCUT = AdapterSettings(bottleneck=4, shortcut_layers=1, shortcut_width=8, shortcut_heads=2)


def tiny_model(seed=0, **kw) -> CavlModel:
    torch.manual_seed(seed)
    return CavlModel(CavlConfig(**{**TINY, **kw})).eval()


def inputs(B=4, L=7, R=5, D=6, seed=0, pair=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, -2:] = 0  # a padded caption
    vmask = torch.ones(B, R, dtype=torch.long)
    vmask[1, -3:] = 0  # an image with fewer regions
    types = torch.zeros_like(ids)
    if pair:
        types[:, L // 2 :] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "visual_feats": torch.randn(B, R, D, generator=g), "visual_boxes": torch.rand(B, R, 5, generator=g),
            "visual_mask": vmask}


def fused(model, b, **kw):
    return model(b["input_ids"], b["attention_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"],
                 b["token_type_ids"], **kw)


def live_shortcut(model, seed=1) -> ShortcutAdapter:
    """A shortcut whose output block is not zero (a fresh one passes the states through)."""
    torch.manual_seed(seed)
    sc = ShortcutAdapter(model.config, SHORTCUT)
    with torch.no_grad():
        sc.up.weight.normal_(std=0.2)
    return sc.eval()


# ---------------------------------------------------------------------------------------------
# One modality, cached states, links, frozen
# ---------------------------------------------------------------------------------------------


def test_encode_text_is_forward_without_regions():
    model, b = tiny_model(), inputs(pair=True)
    with torch.no_grad():
        text = model.encode_text(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        plain = model(b["input_ids"], b["attention_mask"], token_type_ids=b["token_type_ids"])
        zero_width = model(b["input_ids"], b["attention_mask"], b["visual_feats"][:, :0], b["visual_boxes"][:, :0],
                           b["visual_mask"][:, :0], b["token_type_ids"])
    assert text.text_len == 7 and text.last_hidden_state.shape == (4, 7, 16) and text.region_states.shape[1] == 0
    for other in (plain, zero_width):  # bitwise: no region token changes nothing
        assert torch.equal(text.last_hidden_state, other.last_hidden_state)
        assert torch.equal(text.pooled_output, other.pooled_output)


def test_encode_image_is_forward_behind_an_empty_caption():
    model, b = tiny_model(), inputs()
    with torch.no_grad():
        image = model.encode_image(b["visual_feats"], b["visual_boxes"], b["visual_mask"])
        ids = torch.tensor([[2, 3]]).expand(4, 2)
        ref = model(ids, torch.ones_like(ids), b["visual_feats"], b["visual_boxes"], b["visual_mask"])
    assert image.text_len == 2 and image.region_states.shape == (4, 5, 16)
    assert torch.equal(image.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(image.pooled_output, ref.pooled_output)
    # the pretraining model's F′ and E′ are masked means over exactly these passes
    pre = CavlForPretraining(model.config)
    pre.bert.load_state_dict(model.state_dict())
    pre.eval()
    with torch.no_grad():
        f = pre.image_embedding(b["visual_feats"], b["visual_boxes"], b["visual_mask"])
        e = pre.text_embedding(b["input_ids"], b["attention_mask"])
        text = model.encode_text(b["input_ids"], b["attention_mask"])
    m = b["visual_mask"].float().unsqueeze(-1)
    assert torch.allclose(f, (image.region_states * m).sum(1) / m.sum(1), atol=1e-6)
    t = b["attention_mask"].float().unsqueeze(-1)
    assert torch.allclose(e, (text.text_states * t).sum(1) / t.sum(1), atol=1e-6)


@pytest.mark.parametrize("with_shortcut", [False, True])
def test_cached_states_give_the_full_pass(with_shortcut):
    model, b = tiny_model(), inputs(pair=True)
    sc = live_shortcut(model) if with_shortcut else None
    with torch.no_grad():
        states = fused(model, b).last_hidden_state  # what the backbone cache stores
        full = fused(model, b, shortcut=sc)
        cached = fused(model, b, cached_states=states, shortcut=sc)
    assert torch.equal(cached.last_hidden_state, full.last_hidden_state)
    assert torch.equal(cached.pooled_output, full.pooled_output)
    if with_shortcut:
        assert not torch.allclose(full.last_hidden_state, states)  # the shortcut did something
    with pytest.raises(ValueError, match="hidden_states"):
        fused(model, b, cached_states=states, output_hidden_states=True)


def test_cached_states_skip_the_encoder():
    model, b = tiny_model(), inputs()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        states = fused(model, b).last_hidden_state
        fused(model, b, cached_states=states)
    assert len(calls) == 1


def test_word_region_links_add_the_words_position_embeddings_to_region_tokens():
    model, b = tiny_model(), inputs()
    emb = model.embeddings
    links = torch.zeros(4, 5, 7)
    links[0, 1, 3] = links[0, 1, 4] = links[2, 0, 1] = 1.0  # region 1 of row 0 ← words 3, 4; region 0 of row 2 ← word 1
    args = (b["input_ids"], b["token_type_ids"], b["visual_feats"], b["visual_boxes"])
    with torch.no_grad():
        plain, linked = emb(*args), emb(*args, word_region_links=links)
        assert torch.equal(emb(*args, word_region_links=torch.zeros_like(links)), plain)
        pos = emb.position_embeddings.weight
        assert torch.equal(linked[:, :7], plain[:, :7])  # text tokens untouched
        assert torch.allclose(linked[0, 7 + 1], plain[0, 7 + 1] + pos[3] + pos[4], atol=1e-6)
        assert torch.allclose(linked[2, 7 + 0], plain[2, 7 + 0] + pos[1], atol=1e-6)
        assert torch.equal(linked[1, 7:], plain[1, 7:])
        # and the forward pass runs on the linked embeddings
        hooked = []
        h = model.encoder.register_forward_hook(lambda m, a, out: hooked.append(a[0]))
        fused(model, b, word_region_links=links)
        h.remove()
    assert torch.equal(hooked[0], linked)


def test_frozen_backbone_gives_the_same_states_without_its_gradient():
    model, b = tiny_model(), inputs()
    sc = live_shortcut(model).train()
    model.train()  # dropout on: both passes draw the same masks from the same seed
    torch.manual_seed(7)
    free = fused(model, b, shortcut=sc)
    torch.manual_seed(7)
    frozen = fused(model, b, shortcut=sc, frozen=True)
    assert torch.equal(free.last_hidden_state, frozen.last_hidden_state)
    frozen.pooled_output.sum().backward()
    assert all(p.grad is None for p in model.embeddings.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.pooler.dense.weight.grad is not None  # the pooler runs after the shortcut, with gradient
    assert sc.down.weight.grad is not None and sc.down.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Every caller goes through forward
# ---------------------------------------------------------------------------------------------


class ForwardProbe:
    """Counts backbone forwards and every call of its embeddings / encoder / pooler, and records
    whether each of those ran inside a backbone forward."""

    def __init__(self, backbone):
        self.depth, self.forwards, self.parts, self.outside = 0, 0, [], []
        backbone.register_forward_pre_hook(self._enter)
        backbone.register_forward_hook(self._leave)
        for name in ("embeddings", "encoder", "pooler"):
            getattr(backbone, name).register_forward_hook(lambda *a, name=name: self._part(name))

    def _enter(self, *args):
        self.depth += 1
        self.forwards += 1

    def _leave(self, *args):
        self.depth -= 1

    def _part(self, name):
        self.parts.append(name)
        if self.depth == 0:
            self.outside.append(name)


def finetune_model(task, method, state):
    torch.manual_seed(0)
    return FinetuneModel(CavlModel(CavlConfig(**TINY)), get_task(task), state, method, SHORTCUT)


@pytest.mark.parametrize("method", ["full", "adapter1", "adapter1+2"])
def test_finetuning_and_retrieval_run_the_backbone_forward_only(method):
    b = inputs(B=6)
    b["tir_image"] = torch.tensor([0, 1, 1, 2, 3, 3])
    state = {**get_task("tir").options}
    model = finetune_model("tir", method, state)
    probe = ForwardProbe(model.backbone)
    model.train()
    out = model.task_output(b)
    # positives, text-only, image-only and the negatives' fused pass: four backbone forwards
    assert isinstance(out, TirOutput) and probe.forwards == 4
    losses = model.loss(out, b)
    assert isinstance(losses, TaskLoss) and set(losses) == {"loss", "itm_loss", "pwcl_loss"}
    losses.loss.backward()
    model.eval()
    with torch.no_grad():
        model.encode(b)
        retrieval.text_embedding(model, b)
        retrieval.image_embedding(model, b)
        model.backbone_states(b)
    assert probe.forwards == 8
    assert probe.parts == ["embeddings", "encoder", "pooler"] * 8 and not probe.outside


def test_pretraining_runs_the_backbone_forward_only():
    torch.manual_seed(0)
    model = CavlForPretraining(CavlConfig(**TINY), ObjectiveConfig(pwcl_encoding="separate"))
    probe = ForwardProbe(model.bert)
    b = inputs()
    batch = {"text_ids": b["input_ids"], "text_mask": b["attention_mask"], "mlm_ids": b["input_ids"],
             "mlm_mask": b["attention_mask"], "mlm_labels": torch.where(b["attention_mask"] > 0, b["input_ids"], -100),
             "itm_labels": torch.tensor([1, 0, 1, 0]), "visual_feats": b["visual_feats"],
             "visual_boxes": b["visual_boxes"], "visual_mask": b["visual_mask"]}
    model(batch)["loss"].backward()
    assert probe.forwards == 3 and not probe.outside  # fused MLM/ITM, text-only, image-only


def test_cached_finetuning_pass_equals_the_live_one():
    b = inputs()
    b["vqa_targets"] = torch.eye(4)
    model = finetune_model("vqa", "adapter1", {"answers": ["a", "b", "c", "d"]}).eval()
    with torch.no_grad():
        model.shortcut.up.weight.normal_(std=0.2)
        states = model.backbone_states(b)
        live, cached = model(b), model({**b, "backbone_states": states})
        assert isinstance(model.task_output(b), TaskOutput)
    assert isinstance(live, TaskLoss) and dict(live).keys() == {"loss", "vqa_loss"}
    assert torch.equal(live.loss, cached.loss) and torch.equal(live["vqa_loss"], live.loss)


# ---------------------------------------------------------------------------------------------
# Parity with Hugging Face
# ---------------------------------------------------------------------------------------------


def test_encode_text_matches_transformers_bert(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=32)).eval()
    hf.save_pretrained(tmp_path)
    ours = CavlModel.from_bert(tmp_path, visual_dim=6).eval()
    b = inputs(pair=True)
    with torch.no_grad():
        ref = hf(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_hidden_states=True)
        out = ours.encode_text(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, c in zip(ref.hidden_states, out.hidden_states):
        assert (a - c).abs().max().item() <= 1e-5
    assert (ref.pooler_output - out.pooled_output).abs().max().item() <= 1e-5


def visualbert_pair(seed=0):
    """A random VisualBertModel and a CavlModel with the same function: our box projection is zero
    with VisualBERT's visual position embedding 0 as its bias, our visual token type its type 1,
    and our feature standardisation the identity — then the region embeddings match."""
    from transformers import VisualBertConfig, VisualBertModel

    torch.manual_seed(seed)
    hf = VisualBertModel(VisualBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=32,
                                          visual_embedding_dim=6)).eval()
    ours = tiny_model(seed + 1)
    from cavl.model import map_bert_key

    state = {}
    for k, v in hf.state_dict().items():
        if k.startswith("embeddings.visual_projection."):
            state[k] = v
        elif not k.startswith(("embeddings.visual_", "embeddings.position_ids")):
            state[map_bert_key(k)] = v
    e = hf.embeddings
    with torch.no_grad():
        state["embeddings.box_projection.weight"] = torch.zeros(16, 5)
        state["embeddings.box_projection.bias"] = e.visual_position_embeddings.weight[0].clone()
        state["embeddings.visual_token_type"] = e.visual_token_type_embeddings.weight[1].clone()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {"embeddings.visual_feature_mean", "embeddings.visual_feature_scale"}
    return hf, ours


def test_forward_matches_transformers_visualbert_where_the_embeddings_match():
    hf, ours = visualbert_pair()
    b = inputs(pair=True)
    with torch.no_grad():
        ref = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                 visual_embeds=b["visual_feats"], visual_attention_mask=b["visual_mask"], output_hidden_states=True)
        out = fused(ours, b, output_hidden_states=True)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape == (4, 12, 16)
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    for a, c in zip(ref.hidden_states, out.hidden_states):
        assert (a - c).abs().max().item() <= 1e-5
    assert (ref.pooler_output - out.pooled_output).abs().max().item() <= 1e-5
    # the oracle can fail: one changed weight breaks it
    with torch.no_grad():
        ours.embeddings.visual_projection.bias[0] += 1e-3
        moved = fused(ours, b).last_hidden_state
    assert (ref.last_hidden_state - moved).abs().max().item() > 1e-5
