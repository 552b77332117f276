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


class _FivePercentOff(torch.autograd.Function):
    """Identity whose backward is 5 % too large: a wrong gradient gradcheck must see."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.05


@pytest.mark.parametrize("learnable", [False, True], ids=["fixed_tau", "learnable_tau"])
@pytest.mark.parametrize("cls", [PairwiseContrastiveLoss, InfoNceLoss])
def test_gradcheck_of_the_loss_module(cls, learnable):
    """The module's own forward and backward (its float32 cosine matrix, its temperature a buffer
    or a parameter): analytic gradients with respect to both embeddings and log(tau) equal
    central differences of its outputs. The tolerances suit float32 arithmetic (eps 1e-3) and
    still catch a gradient 5 % off."""
    torch.manual_seed(0)
    loss = cls(0.5, learnable_temperature=learnable)
    E = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    Fm = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    log_tau = loss.log_tau.detach().double().requires_grad_()

    def module(e, fm, lt):
        return torch.func.functional_call(loss, {"log_tau": lt}, (e, fm))["pwcl_loss"]

    tolerances = dict(eps=1e-3, atol=1e-3, rtol=1e-2)
    assert torch.autograd.gradcheck(module, (E, Fm, log_tau), **tolerances)
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(lambda e, fm, lt: module(_FivePercentOff.apply(e), fm, lt), (E, Fm, log_tau),
                                 **tolerances)
    # the temperature reaches the loss: d/d log(tau) is not zero
    assert torch.autograd.grad(module(E, Fm, log_tau), log_tau)[0].abs() > 1e-3


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


@pytest.mark.slow  # two spawned processes that each import torch, as under torchrun (~15 s)
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


class _TwoRanksInOneProcess:
    """torch.distributed as cavl.losses sees it on `rank` of 2, in this process: all_gather
    hands out every rank's local rows of the same tensor (text or image side), precomputed."""

    def __init__(self, rank, local_rows):
        self.rank, self.local_rows = rank, local_rows  # side → [rows of rank 0, rows of rank 1]

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self):
        return WORLD

    def get_rank(self):
        return self.rank

    def all_gather(self, parts, x):
        side, = [s for s, rows in self.local_rows.items() if torch.equal(rows[self.rank], x)]
        for k, rows in enumerate(self.local_rows[side]):
            parts[k].copy_(rows)


def test_gather_gives_each_rank_the_global_loss_and_ddp_the_global_gradient(monkeypatch):
    """The gather's gradient rule without processes (the spawned test above checks it under real
    DDP): each of 2 simulated ranks holding 3 pairs evaluates the loss of all 6, and the mean of
    the ranks' gradients (what DDP's all-reduce makes of them) equals one process's gradient over
    the 6 pairs — for PwCL and InfoNCE, projection weights and temperature."""
    from cavl import losses

    x_text, x_img = _inputs()
    for kind in ("pairwise", "infonce"):
        ref_loss, ref_grad, ref_tau = _single_process(kind)
        with torch.no_grad():  # every rank's rows as the loss normalises them, before the gather
            tower = _Tower(kind)
            shards = [slice(k * B, (k + 1) * B) for k in range(WORLD)]
            local_rows = {"text": [F.normalize(tower.proj(x_text[k]), dim=-1) for k in shards],
                          "image": [F.normalize(tower.proj(x_img[k]) * 2.0, dim=-1) for k in shards]}
        grads, tau_grads = [], []
        for rank in range(WORLD):
            tower = _Tower(kind)
            mine = slice(rank * B, (rank + 1) * B)
            with monkeypatch.context() as patch:
                patch.setattr(losses, "dist", _TwoRanksInOneProcess(rank, local_rows))
                out = tower(x_text[mine], x_img[mine])["pwcl_loss"]
                out.backward()
            assert out.item() == pytest.approx(ref_loss, rel=1e-6)
            grads.append(tower.proj.weight.grad)
            tau_grads.append(tower.loss.log_tau.grad)
        assert torch.allclose(sum(grads) / WORLD, ref_grad, atol=1e-6), kind
        assert torch.allclose(sum(tau_grads) / WORLD, ref_tau, atol=1e-6), kind
        # without the gather's gradient scaling, DDP's mean would be 1/WORLD of the embeddings' part
        assert not torch.allclose(sum(grads) / WORLD / WORLD, ref_grad, atol=1e-6)


def test_gather_false_keeps_a_call_local_without_changing_the_module(monkeypatch):
    """Evaluation on the main process passes gather=False: the loss of its own pairs only, while
    the module (and so the next training call) still gathers."""
    from cavl import losses

    x_text, x_img = _inputs()
    for kind in ("pairwise", "infonce"):
        with torch.no_grad():
            tower = _Tower(kind)
            shards = [slice(k * B, (k + 1) * B) for k in range(WORLD)]
            local_rows = {"text": [F.normalize(tower.proj(x_text[k]), dim=-1) for k in shards],
                          "image": [F.normalize(tower.proj(x_img[k]) * 2.0, dim=-1) for k in shards]}
            e, f = tower.proj(x_text[shards[0]]), tower.proj(x_img[shards[0]]) * 2.0
            alone = tower.loss(e, f)["pwcl_loss"]  # no process group: the local loss
            with monkeypatch.context() as patch:
                patch.setattr(losses, "dist", _TwoRanksInOneProcess(0, local_rows))
                local = tower.loss(e, f, gather=False)["pwcl_loss"]
                gathered = tower.loss(e, f)["pwcl_loss"]
        assert torch.equal(local, alone) and tower.loss.gather
        assert gathered.item() == pytest.approx(_single_process(kind)[0], rel=1e-6)
        assert not torch.equal(gathered, local)
