"""The two adapters of CAVL's adaptive finetuning, and which parameters each method trains.

    Adapter II (bottleneck)  x + Up(GELU(Down(x))) in each layer's two adapter slots (CavlLayer)
    Adapter I (shortcut)     a small transformer beside the frozen backbone, fed the same input
                             embeddings, whose up-projected output is added to the backbone's
                             final states (so the backbone's states can be cached)

Both start as the identity (Up zero-initialised). Methods (the task head always trains): full
(everything), linear (nothing else), adapter1, adapter2 (+ `also_train` backbone groups),
adapter1+2. Parameters are (un)frozen by module type, never by name matching.
"""

from __future__ import annotations

import torch
from torch import nn

from cavl.model import CavlConfig, CavlEncoder, CavlModel
from cavl.settings import AdapterSettings  # noqa: F401  (finetune.adapters' dataclass, imported from here)

METHODS = ("full", "linear", "adapter1", "adapter2", "adapter1+2")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return method


def uses_adapter1(method: str) -> bool:
    return check_method(method) in ("adapter1", "adapter1+2")


def uses_adapter2(method: str) -> bool:
    return check_method(method) in ("adapter2", "adapter1+2")


def backbone_frozen(method: str) -> bool:
    """True when no backbone parameter trains and no adapter sits inside it: the backbone then
    runs under no_grad in eval mode and its outputs may be cached."""
    return check_method(method) in ("linear", "adapter1")


class TaskHead(nn.Module):
    """Base class of every task head (so the head is found, and trained, by its type)."""


class BottleneckAdapter(nn.Module):
    """Adapter II: x + Up(GELU(Down(x))); Up starts at zero, so the adapter starts as identity."""

    def __init__(self, hidden: int, bottleneck: int, init_std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))  # (B, T, H)


class ShortcutAdapter(nn.Module):
    """Adapter I: general + Up(encoder(Down(embeddings))), the encoder the backbone's own layer
    type at `shortcut_width`; embeddings and general (the backbone's final states) are (B, T, H)."""

    def __init__(self, backbone: CavlConfig, settings: AdapterSettings):
        super().__init__()
        H, W = backbone.hidden_size, settings.shortcut_width
        cfg = CavlConfig(
            hidden_size=W, num_hidden_layers=settings.shortcut_layers,
            num_attention_heads=settings.shortcut_heads, intermediate_size=4 * W,
            hidden_act=backbone.hidden_act, hidden_dropout_prob=backbone.hidden_dropout_prob,
            attention_probs_dropout_prob=backbone.attention_probs_dropout_prob,
            layer_norm_eps=backbone.layer_norm_eps, initializer_range=backbone.initializer_range,
        )
        self.down = nn.Linear(H, W)
        self.encoder = CavlEncoder(cfg)
        self.up = nn.Linear(W, H)  # the output block's projection back to the backbone width
        init_weights(self, backbone.initializer_range)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, embeddings, general, mask):
        # embeddings, general: (B, T, H); mask: (B, 1, 1, T) bool
        s, _ = self.encoder(self.down(embeddings), mask)  # (B, T, W)
        return general + self.up(s)  # (B, T, H)


def init_weights(module: nn.Module, std: float):
    """BERT's init: normal(0, std) linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def install_bottleneck_adapters(backbone: CavlModel, bottleneck: int):
    """Put a fresh Adapter II into both slots of every layer of `backbone` (in place)."""
    H, std = backbone.config.hidden_size, backbone.config.initializer_range
    for layer in backbone.encoder.layers:
        layer.attention_adapter = BottleneckAdapter(H, bottleneck, std)
        layer.ffn_adapter = BottleneckAdapter(H, bottleneck, std)
    return backbone


def _group_parameters(backbone: CavlModel, group: str) -> list:
    """The parameters of one `also_train` group of the backbone."""
    if group == "layer_norm":
        return [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    if group == "visual_embeddings":
        e = backbone.embeddings
        return [*e.visual_projection.parameters(), *e.box_projection.parameters(), e.visual_token_type]
    if group == "pooler":
        return list(backbone.pooler.parameters())
    raise ValueError(f"unknown backbone group {group!r}")


def configure_trainable(model: nn.Module, backbone: CavlModel, method: str, settings: AdapterSettings):
    """Freeze / unfreeze the parameters of `model` (which holds `backbone`) for `method`."""
    model.requires_grad_(check_method(method) == "full")
    if method == "full":
        return model
    for m in model.modules():
        if isinstance(m, (TaskHead, BottleneckAdapter, ShortcutAdapter)):
            m.requires_grad_(True)
    if uses_adapter2(method):
        for group in settings.also_train:
            for p in _group_parameters(backbone, group):
                p.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def params_line(trainable: int, total: int) -> str:
    """The PEFT-style summary line."""
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def trainable_state(model: nn.Module) -> dict:
    """The tensors a method trained: every parameter with requires_grad (name → tensor)."""
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def state_checksum(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a module's state (in name order)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
