"""LayerIF with DataInf's inverse: the streaming three-pass computation equals the closed form
evaluated from explicit per-sample gradients, and DataInf tracks the exact damped inverse."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mdlcap.scores import influence as I
from mdlcap.models import random_model


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n, B, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(B, 4, generator=g, dtype=torch.float64), "y": torch.randint(0, 3, (B,), generator=g)}
            for _ in range(n)]


def _loss(m, b):
    return nn.functional.cross_entropy(m(b["x"]), b["y"])


def _reference(net, train, val, blocks, c=0.1):
    """DataInf influence from explicit per-sample gradients (and with the exact damped inverse)."""
    out_datainf, out_exact = [], []
    for block in blocks.values():
        ps = list(block.parameters())
        flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
        v = sum(flat(torch.autograd.grad(_loss(net, b), ps)) for b in val) / len(val)
        G = torch.stack([flat(torch.autograd.grad(_loss(net, {"x": b["x"][i:i + 1], "y": b["y"][i:i + 1]}), ps))
                         for b in train for i in range(b["x"].shape[0])])
        n, d = G.shape
        lam = c * (G ** 2).sum(1).mean() / d
        # (1/n) Σ_j (λI + g_j g_jᵀ)⁻¹ applied to g_i, by explicit matrices
        Minv = sum(torch.linalg.inv(lam * torch.eye(d, dtype=G.dtype) + torch.outer(g, g)) for g in G) / n
        out_datainf.append((-(G @ Minv @ v)).numpy())
        F = G.T @ G / n
        out_exact.append((-(G @ torch.linalg.solve(F + lam * torch.eye(d, dtype=G.dtype), v))).numpy())
    return np.stack(out_datainf, 1), np.stack(out_exact, 1)


@pytest.mark.parametrize("store", [True, False])
def test_layer_influence_matches_datainf_closed_form(store):
    net = _mlp()
    train, val = _batches(3, 4, seed=1), _batches(2, 4, seed=2)
    blocks = {"l0": net[0], "l1": net[2]}
    res = I.layer_influence(net, train, val, blocks=blocks, loss_fn=_loss, progress=False,
                            store_limit_bytes=(1 << 30) if store else 0)
    assert res.diagnostics["stored_gradients"] is store
    want, exact = _reference(net, train, val, blocks)
    np.testing.assert_allclose(res.values, want, rtol=1e-8, atol=1e-12)
    # DataInf is an approximation of the exact inverse: same sign pattern for most samples
    assert np.mean(np.sign(res.values) == np.sign(exact)) > 0.6
    # pools: "pos" keeps only beneficial samples (I < 0)
    sums_all, sums_pos = res.layer_sums("all"), res.layer_sums("pos")
    for k, name in enumerate(blocks):
        assert sums_all[name] == pytest.approx(want[:, k].sum())
        assert sums_pos[name] == pytest.approx(want[:, k][want[:, k] < 0].sum())
        assert sums_pos[name] <= min(0.0, sums_all[name]) + 1e-15
    for pool in ("all", "pos"):
        s = res.layer_scores(pool)
        assert min(s.values()) >= 0 and max(s.values()) > 0


def test_layer_influence_on_hf_model_and_errors():
    model = random_model(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    g = torch.Generator().manual_seed(0)

    def mk(n):
        ids = torch.randint(0, 64, (n, 8), generator=g)
        lab = ids.clone()
        lab[:, :4] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab}

    res = I.layer_influence(model, [mk(3), mk(3)], [mk(2)], progress=False)
    assert res.values.shape == (6, 2) and np.all(np.isfinite(res.values))
    assert res.block_names == ["layers.0", "layers.1"]
    with pytest.raises(ValueError, match="pool"):
        res.layer_sums("neg")
    with pytest.raises(ValueError, match="damping_scale"):
        I.layer_influence(model, [mk(2)], [mk(2)], damping_scale=0.0, progress=False)
    with pytest.raises(ValueError, match="batches"):
        I.layer_influence(model, [], [mk(2)], progress=False)
