"""Preconditioned CG (mdlcap.scores.cg / newton / operators): the same ζ² as a dense solve with
every preconditioner, the residual of the UNpreconditioned system, the converged flag, one damping
for every block of the exact Hessian, and the Monte-Carlo GGN diagonal the diagonal M uses."""
from __future__ import annotations

import pytest
import torch

from mdlcap.models import random_model
from mdlcap.scores import autograd as ag
from mdlcap.scores.blocks import resolve_blocks
from mdlcap.scores.cg import conjugate_gradient
from mdlcap.scores.operators import BlockOperator, ggn_diagonal
from mdlcap.scores.registry import layer_gains

from test_curvature import _blocks, _dense, _hf_batches, _mlp, _mlp_batches, _mlp_dense, _mlp_loss, _zeta2


def _spd(n=40, cond=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    ev = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return q @ torch.diag(ev) @ q.T, torch.randn(n, generator=g, dtype=torch.float64)


def test_pcg_solves_the_unpreconditioned_system_and_reports_its_residual():
    A, b = _spd()
    lam = 1e-3
    exact = torch.linalg.solve(A + lam * torch.eye(len(b), dtype=A.dtype), b)
    d = torch.diag(A)
    for pre in (None, lambda r: r / (d + lam)):
        x, info = conjugate_gradient(lambda v: A @ v, b, lam, 500, 1e-10, pre)
        true = (b - (A @ x + lam * x)).norm() / b.norm()
        assert info["rel_residual"] == pytest.approx(true.item(), rel=1e-6, abs=1e-14)
        assert info["converged"] and torch.allclose(x, exact, rtol=1e-6, atol=1e-8)
        assert info["preconditioned"] == (pre is not None)
    # an exact preconditioner M⁻¹ = (A + λI)⁻¹ converges in one iteration
    inv = torch.linalg.inv(A + lam * torch.eye(len(b), dtype=A.dtype))
    x, info = conjugate_gradient(lambda v: A @ v, b, lam, 50, 1e-10, lambda r: inv @ r)
    assert info["iterations"] == 1 and info["converged"]
    # truncated: not converged, and the residual says by how much
    x, info = conjugate_gradient(lambda v: A @ v, b, lam, 3, 1e-10)
    assert not info["converged"] and info["rel_residual"] > 1e-3
    assert info["ritz"] and min(info["ritz"]) >= lam - 1e-12             # Ritz values of A + λI without M
    with pytest.raises(ValueError, match="precond"):
        conjugate_gradient(lambda v: A @ v, b, lam, 5, 1e-6, lambda r: -r)


@pytest.mark.parametrize("pre", ["none", "diag", "kfac"])
@pytest.mark.parametrize("curvature,damping", [("ggn", 1e-3), ("hessian", 1e-4)])
def test_every_preconditioner_gives_the_dense_zeta2(pre, curvature, damping):
    net, batches = _mlp(), _mlp_batches()
    res = layer_gains(net, batches, method="cg", curvature=curvature, damping=damping, blocks=_blocks(net),
                      loss_fn=_mlp_loss, max_iter=800, tol=1e-11, progress=False, preconditioner=pre)
    lams = {d["damping_used"] for d in res.diagnostics.values()}
    assert len(lams) == 1                             # one λ for every block (the Hessian's shared raise)
    for name, block in _blocks(net).items():
        g, H = _mlp_dense(net, batches, block, curvature)
        d = res.diagnostics[name]
        assert d["converged"] and d["rel_residual"] <= 1e-9 and d["preconditioner"] == pre
        assert res[name] == pytest.approx(_zeta2(g, H, d["damping_used"]), rel=1e-6)
        if curvature == "hessian":
            assert d["damping_needed"] <= d["damping_used"]
            assert torch.linalg.eigvalsh(H).min().item() + d["damping_used"] > 0
        if pre != "none":                             # Ritz values of M⁻¹A are not H's: not reported as H's
            assert d["ritz_min_H"] is None and d["ritz_min_preconditioned"] is not None


def test_hessian_shared_damping_across_blocks_and_groups():
    net, batches = _mlp(), _mlp_batches()
    kw = dict(method="cg", curvature="hessian", damping=1e-4, blocks=_blocks(net), loss_fn=_mlp_loss, max_iter=500,
              tol=1e-11, progress=False)
    per = layer_gains(net, batches, shared_damping=False, **kw)
    needed = [d["damping_used"] for d in per.diagnostics.values()]
    assert len(set(needed)) > 1                       # this net's blocks need different dampings
    for extra in ({}, {"group_size": 1}):
        try:
            one = layer_gains(net, batches, **kw, **extra)
        except TypeError:
            pytest.skip("layer_gains has no group_size here")
        used = {d["damping_used"] for d in one.diagnostics.values()}
        assert len(used) == 1 and used.pop() == pytest.approx(max(needed))
        assert [d["damping_needed"] for d in one.diagnostics.values()] == pytest.approx(needed)
        for name, block in _blocks(net).items():
            g, H = _mlp_dense(net, batches, block, "hessian")
            assert one[name] == pytest.approx(_zeta2(g, H, max(needed)), rel=1e-6)


def test_unconverged_solves_are_flagged():
    net, batches = _mlp(), _mlp_batches()
    res = layer_gains(net, batches, method="cg", damping=1e-3, blocks=_blocks(net), loss_fn=_mlp_loss, max_iter=2,
                      tol=1e-3, progress=False)
    assert not any(d["converged"] for d in res.diagnostics.values())
    assert all(d["rel_residual"] > 1e-3 for d in res.diagnostics.values())


def test_ggn_diagonal_is_unbiased_for_the_mean_loss():
    """Monte-Carlo diag(GGN) (labels sampled from the model) -> the dense GGN's diagonal of the mean loss."""
    model = random_model(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1).double()
    batches = _hf_batches(vocab=16, n=2, B=2, T=5)
    blocks = resolve_blocks(model)
    est = ggn_diagonal(model, batches, blocks, samples=3000, seed=0)["layers.0"]
    from transformers.loss.loss_utils import ForCausalLMLoss
    from mdlcap.scores.autograd import eager_attention

    def fwd(fc, m, p, b):
        with eager_attention(m):
            return fc(m, p, (), {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}).logits

    _, H = _dense(model, batches, model.model.layers[0], lambda z, b: ForCausalLMLoss(z, b["labels"], vocab_size=16),
                  fwd, "ggn")
    want = torch.diag(H)
    big = want > want.max() * 0.05
    assert est.shape == want.shape and (est >= 0).all()
    rel = ((est - want).abs()[big] / want[big]).median().item()
    assert rel < 0.1                                   # MC error ~ 1/sqrt(samples) per entry
    assert est.sum().item() == pytest.approx(want.sum().item(), rel=0.05)


def test_ggn_diagonal_custom_loss_uses_hutchinson():
    net, batches = _mlp(), _mlp_batches()
    blocks = {k: list(m.parameters()) for k, m in _blocks(net).items()}
    est = ggn_diagonal(net, batches, blocks, _mlp_loss, samples=400, seed=1)
    for name, block in _blocks(net).items():
        _, H = _mlp_dense(net, batches, block, "ggn")
        assert est[name].sum().item() == pytest.approx(torch.diag(H).sum().item(), rel=0.15)


def test_operator_products_counted():
    net, batches = _mlp(), _mlp_batches()
    ps = list(net[0].parameters())
    with ag.scoring_mode(net, ps):
        op = BlockOperator(net, batches, ps, "ggn", _mlp_loss, True, torch.device("cpu"), len(batches))
        b = torch.ones(sum(p.numel() for p in ps), dtype=torch.float64)
        _, info = conjugate_gradient(op, b, 1e-2, 5, 0.0)
    assert op.products == info["products"] == info["iterations"] + 1    # + the true-residual product
