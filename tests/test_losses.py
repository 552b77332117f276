"""Loss modules: PwCL / InfoNCE against direct numpy evaluations, gradcheck, the DDP gather."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cavl.losses import InfoNceLoss, ItmLoss, MlmLoss, PairwiseContrastiveLoss


def pwcl_numpy(E, Fm, tau):
    """The paper's formula, literally: -log( sum_i s(E_i, F_i) / sum_{i != j} s(E_i, F_j) )."""
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    Fm = Fm / np.linalg.norm(Fm, axis=1, keepdims=True)
    B = len(E)
    pos = sum(math.exp(float(E[i] @ Fm[i]) / tau) for i in range(B))
    neg = sum(math.exp(float(E[i] @ Fm[j]) / tau) for i in range(B) for j in range(B) if i != j)
    return -math.log(pos / neg)


def infonce_numpy(E, Fm, tau):
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    Fm = Fm / np.linalg.norm(Fm, axis=1, keepdims=True)
    S = E @ Fm.T / tau
    t2i = -np.mean([S[i, i] - np.log(np.exp(S[i]).sum()) for i in range(len(S))])
    i2t = -np.mean([S[i, i] - np.log(np.exp(S[:, i]).sum()) for i in range(len(S))])
    return 0.5 * (t2i + i2t)


@pytest.mark.parametrize("B,D,tau", [(2, 3, 1.0), (5, 8, 0.07), (16, 32, 0.5)])
def test_pwcl_equals_direct_formula(B, D, tau):
    rng = np.random.default_rng(B)
    E, Fm = rng.normal(size=(B, D)), rng.normal(size=(B, D))
    got = PairwiseContrastiveLoss(tau)(torch.tensor(E), torch.tensor(Fm))["pwcl_loss"].item()
    assert got == pytest.approx(pwcl_numpy(E, Fm, tau), rel=1e-5, abs=1e-5)


def test_pwcl_is_not_infonce_and_rewards_alignment():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(6, 4))
    loss = PairwiseContrastiveLoss(0.5)
    aligned = loss(torch.tensor(E), torch.tensor(E))["pwcl_loss"].item()
    shuffled = loss(torch.tensor(E), torch.tensor(E[::-1].copy()))["pwcl_loss"].item()
    assert aligned < shuffled
    assert aligned != pytest.approx(InfoNceLoss(0.5)(torch.tensor(E), torch.tensor(E))["pwcl_loss"].item())


@pytest.mark.parametrize("B,tau", [(3, 1.0), (7, 0.1)])
def test_infonce_equals_direct_formula(B, tau):
    rng = np.random.default_rng(B)
    E, Fm = rng.normal(size=(B, 5)), rng.normal(size=(B, 5))
    got = InfoNceLoss(tau)(torch.tensor(E), torch.tensor(Fm))["pwcl_loss"].item()
    assert got == pytest.approx(infonce_numpy(E, Fm, tau), rel=1e-6)


@pytest.mark.parametrize("cls", [PairwiseContrastiveLoss, InfoNceLoss])
def test_gradcheck_float64(cls):
    torch.manual_seed(0)
    E = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    Fm = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = cls(0.3)
    # the loss casts to float32 under autocast-friendly .float(); gradcheck the float64 math
    loss.logits = lambda e, f: (F.normalize(e, dim=-1) @ F.normalize(f, dim=-1).t()) / 0.3
    assert torch.autograd.gradcheck(lambda e, f: loss(e, f)["pwcl_loss"], (E, Fm), eps=1e-6, atol=1e-5)


def test_gradcheck_through_the_real_logits_and_learnable_temperature():
    """The module as used (float32 cast, learnable tau): analytic vs numerical gradients agree."""
    torch.manual_seed(0)
    loss = PairwiseContrastiveLoss(0.5, learnable_temperature=True).double()
    E = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    Fm = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(e, fm, log_tau):
        loss.log_tau.data = log_tau.detach().clone()
        e_n, f_n = F.normalize(e, dim=-1), F.normalize(fm, dim=-1)
        logits = e_n @ f_n.t() / log_tau.exp()
        eye = torch.eye(4, dtype=torch.bool)
        return torch.logsumexp(logits.masked_fill(eye, -math.inf).flatten(), 0) - torch.logsumexp(logits.diagonal(), 0)

    log_tau = torch.tensor(math.log(0.5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (E, Fm, log_tau), eps=1e-6, atol=1e-5)
    # and the module's own (float32) gradient matches the float64 reference
    out = loss(E, Fm)["pwcl_loss"]
    gE, = torch.autograd.grad(out, E)
    ref, = torch.autograd.grad(f(E, Fm, log_tau), E)
    assert torch.allclose(gE, ref, atol=1e-5)


def test_mlm_and_itm_losses():
    logits = torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    assert torch.allclose(MlmLoss()(logits, labels)["mlm_loss"], F.cross_entropy(logits, labels))
    empty = MlmLoss()(torch.randn(0, 10, requires_grad=True), torch.zeros(0, dtype=torch.long))["mlm_loss"]
    assert empty.item() == 0.0 and empty.requires_grad  # no masked token: zero, not NaN
    logits2 = torch.randn(4, 2)
    y = torch.tensor([1, 0, 1, 1])
    assert torch.allclose(ItmLoss()(logits2, y)["itm_loss"], F.cross_entropy(logits2, y))


def test_temperature_must_be_positive_and_batch_needs_two_pairs():
    with pytest.raises(ValueError):
        PairwiseContrastiveLoss(0.0)
    with pytest.raises(ValueError):
        PairwiseContrastiveLoss(0.5)(torch.randn(1, 4), torch.randn(1, 4))


# ---------------------------------------------------------------------------------------------
# Distributed: 2 processes (gloo, CPU) vs one process on the concatenated batch
# ---------------------------------------------------------------------------------------------

WORLD, B, D_IN, D = 2, 3, 5, 4


class _Tower(torch.nn.Module):
    """Stands in for the model: both sides go through one projection, then the loss."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(D_IN, D)
        self.loss = (PairwiseContrastiveLoss if kind == "pairwise" else InfoNceLoss)(0.5, learnable_temperature=True)

    def forward(self, x_text, x_img):
        return self.loss(self.proj(x_text), self.proj(x_img) * 2.0)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D_IN, generator=g), torch.randn(WORLD * B, D_IN, generator=g)


def _single_process(kind):
    tower = _Tower(kind)
    out = tower(*_inputs())["pwcl_loss"]
    out.backward()
    return out.item(), tower.proj.weight.grad.clone(), tower.loss.log_tau.grad.clone()


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for kind in ("pairwise", "infonce"):
            tower = _Tower(kind)
            ddp = torch.nn.parallel.DistributedDataParallel(tower)  # averages gradients over ranks
            x_text, x_img = _inputs()
            mine = slice(rank * B, (rank + 1) * B)
            out = ddp(x_text[mine], x_img[mine])["pwcl_loss"]
            out.backward()
            results[(kind, rank)] = (out.item(), tower.proj.weight.grad.clone(), tower.loss.log_tau.grad.clone())
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_equals_single_process_loss():
    """Each of 2 ranks holds 3 pairs; the gathered loss is the loss of the 6 pairs, and the
    DDP-averaged gradients (projection weights and temperature) equal one process's — for PwCL
    and for InfoNCE."""
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    mp.start_processes(_worker, args=(_free_port(), results), nprocs=WORLD, start_method="spawn", join=True)
    for kind in ("pairwise", "infonce"):
        ref_loss, ref_grad, ref_tau = _single_process(kind)
        for rank in range(WORLD):
            loss, grad, tau_grad = results[(kind, rank)]
            assert loss == pytest.approx(ref_loss, rel=1e-6)
            assert torch.allclose(grad, ref_grad, atol=1e-6), (kind, (grad - ref_grad).abs().max())
            assert torch.allclose(tau_grad, ref_tau, atol=1e-6)
