"""Pretraining losses, each a module that returns a dict with one named loss.

`MlmLoss` → {"mlm_loss"}, `ItmLoss` → {"itm_loss"}, `PairwiseContrastiveLoss` /
`InfoNceLoss` → {"pwcl_loss"}. The contrastive losses know about distributed training: under
DDP they gather the embeddings of every rank (the local shard put back so it keeps its
gradient), so every rank evaluates the loss over the global batch. A call that must stay local
(evaluation on the main process alone) passes `gather=False`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class MlmLoss(nn.Module):
    """Cross-entropy over the M masked positions: logits (M, V), labels (M,). No masked token
    (tiny batches of short captions) gives a zero loss that still depends on the graph, not NaN."""

    def forward(self, logits, labels) -> dict:
        if labels.numel() == 0:
            return {"mlm_loss": logits.sum() * 0.0}
        return {"mlm_loss": F.cross_entropy(logits.float(), labels)}


class ItmLoss(nn.Module):
    """Cross-entropy of the binary matching head: logits (B, 2), labels (B,) with 1 = matched."""

    def forward(self, logits, labels) -> dict:
        return {"itm_loss": F.cross_entropy(logits.float(), labels)}


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by `scale` on the way back."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def gather_with_local_grad(x):
    """All ranks' x (B, D) concatenated in rank order → (world·B, D); only the local rows carry
    gradient (open_clip's `gather_with_grad=False`). DDP averages parameter gradients over ranks,
    so the local rows' gradient is scaled by `world` to give the global batch's dL/dθ (a learnable
    temperature needs no correction: each rank already sees its full dL/dτ)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = _ScaleGrad.apply(x, float(world))
    return torch.cat(parts, dim=0)


class _Contrastive(nn.Module):
    """Shared part: temperature (fixed or learnable), L2 normalisation, gather, cosine matrix.
    `gather`: whether a call gathers the other ranks' embeddings unless it passes its own."""

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = False, gather: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_tau = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.gather = gather

    @property
    def temperature(self):
        return self.log_tau.exp().clamp(min=0.01)  # as CLIP: 1/tau capped at 100

    def logits(self, text_emb, image_emb, gather: bool | None = None):
        """log s(E'_i, F'_j) = cos(E'_i, F'_j) / tau over the global batch → (N, N), N = world·B
        (N = B with gather=False; None: the constructor's `gather`)."""
        e = F.normalize(text_emb.float(), dim=-1)  # (B, D)
        f = F.normalize(image_emb.float(), dim=-1)  # (B, D)
        if self.gather if gather is None else gather:
            e, f = gather_with_local_grad(e), gather_with_local_grad(f)  # (N, D)
        if e.shape[0] < 2:
            raise ValueError("the contrastive loss needs at least 2 pairs in the (global) batch")
        return e @ f.t() / self.temperature  # (N, N)


class PairwiseContrastiveLoss(_Contrastive):
    """CAVL's pair-wise contrastive loss (PwCL) over a batch of N matched pairs:

        L = -log( sum_i s(E'_i, F'_i) / sum_{i != j} s(E'_i, F'_j) ),   s(e, f) = exp(cos(e, f) / tau)

    all N positives against all N^2 - N negatives at once (not per sample as InfoNCE does),
    evaluated in log space; L can be negative. exp(cos / tau), not the raw cosine, keeps the sums
    positive so the log ratio is always defined. Both sums are soft maxima: with a CLIP-like tau
    (0.07-0.1) a few well-aligned pairs minimise the loss while the rest stay unaligned (demo:
    PwCL < 0, held-out R@1 near chance); tau = 0.5 spreads the gradient over all pairs, hence the
    default. A learnable tau drifts towards the low-tau regime, so it is off by default.
    """

    def forward(self, text_emb, image_emb, gather: bool | None = None) -> dict:
        logits = self.logits(text_emb, image_emb, gather)  # (N, N)
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)  # (N, N)
        log_pos = torch.logsumexp(logits.diagonal(), dim=0)  # log sum_i s_ii
        log_neg = torch.logsumexp(logits.masked_fill(eye, float("-inf")).flatten(), dim=0)  # log sum_{i!=j} s_ij
        return {"pwcl_loss": log_neg - log_pos}


class InfoNceLoss(_Contrastive):
    """CLIP's symmetric per-sample InfoNCE: mean over text→image and image→text cross-entropy."""

    def forward(self, text_emb, image_emb, gather: bool | None = None) -> dict:
        logits = self.logits(text_emb, image_emb, gather)  # (N, N)
        target = torch.arange(logits.shape[0], device=logits.device)  # (N,)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return {"pwcl_loss": loss}


def make_contrastive_loss(kind: str, temperature: float, learnable_temperature: bool) -> _Contrastive:
    losses = {"pairwise": PairwiseContrastiveLoss, "infonce": InfoNceLoss}
    if kind not in losses:
        raise ValueError(f"unknown contrastive loss {kind!r}; known: {sorted(losses)}")
    return losses[kind](temperature, learnable_temperature)
