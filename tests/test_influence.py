"""LayerIF with DataInf's inverse (mdlcap.scores.influence): the streaming three-pass computation
equals DataInf's closed form per tensor (λ_t = 0.1 · mean_j ‖g_j,t‖² / d_t, Sherman–Morrison per
tensor, summed per block) evaluated from explicit per-sample gradients; mislabelled training
samples come out harmful, so the "+ve" pool differs from "All"."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mdlcap.scores import influence as I
from mdlcap.models import random_model


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n, B, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(B, 4, generator=g, dtype=torch.float64), "y": torch.randint(0, 3, (B,), generator=g)}
            for _ in range(n)]


def _loss(m, b):
    return nn.functional.cross_entropy(m(b["x"]), b["y"])


def _one(b, i):
    return {"x": b["x"][i:i + 1], "y": b["y"][i:i + 1]}


def _reference(net, train, val, blocks, c=0.1, per_tensor=True):
    """DataInf from explicit per-sample gradients and explicit (λI + g gᵀ)⁻¹ matrices, one group
    per tensor (or per block), summed per block; also the exact damped inverse."""
    out_datainf, out_exact = [], []
    for block in blocks.values():
        ps = list(block.parameters())
        groups = [[p] for p in ps] if per_tensor else [ps]
        tot, tot_exact = 0.0, 0.0
        for grp in groups:
            flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
            V = torch.stack([flat(torch.autograd.grad(_loss(net, _one(b, i)), grp))
                             for b in val for i in range(b["x"].shape[0])])
            v = V.mean(0)                                   # mean of per-sample validation gradients
            G = torch.stack([flat(torch.autograd.grad(_loss(net, _one(b, i)), grp))
                             for b in train for i in range(b["x"].shape[0])])
            n, d = G.shape
            lam = c * (G ** 2).mean(1).mean()               # DataInf: mean_j mean(g_j²) / 10
            Minv = sum(torch.linalg.inv(lam * torch.eye(d, dtype=G.dtype) + torch.outer(g, g)) for g in G) / n
            tot = tot + (-(G @ Minv @ v)).numpy()
            F = G.T @ G / n
            tot_exact = tot_exact + (-(G @ torch.linalg.solve(F + lam * torch.eye(d, dtype=G.dtype), v))).numpy()
        out_datainf.append(tot)
        out_exact.append(tot_exact)
    return np.stack(out_datainf, 1), np.stack(out_exact, 1)


@pytest.mark.parametrize("store", [True, False])
@pytest.mark.parametrize("per_tensor", [True, False])
def test_layer_influence_matches_datainf_closed_form(store, per_tensor):
    net = _mlp()
    train, val = _batches(3, 4, seed=1), _batches(2, 4, seed=2)
    blocks = {"l0": net[0], "l1": net[2]}
    res = I.layer_influence(net, train, val, blocks=blocks, loss_fn=_loss, progress=False, per_tensor=per_tensor,
                            store_limit_bytes=(1 << 30) if store else 0)
    assert res.diagnostics["stored_gradients"] is store
    assert res.diagnostics["n_tensors"] == (4 if per_tensor else 2) and res.damping.shape == (res.diagnostics["n_tensors"],)
    want, exact = _reference(net, train, val, blocks, per_tensor=per_tensor)
    np.testing.assert_allclose(res.values, want, rtol=1e-8, atol=1e-12)
    # DataInf is an approximation of the exact inverse: same sign pattern for most samples
    assert np.mean(np.sign(res.values) == np.sign(exact)) > 0.6
    # pools: "pos" keeps only beneficial samples (I < 0); scores are the signed −sum, no offset
    sums_all, sums_pos = res.layer_sums("all"), res.layer_sums("pos")
    for k, name in enumerate(blocks):
        assert sums_all[name] == pytest.approx(want[:, k].sum())
        assert sums_pos[name] == pytest.approx(want[:, k][want[:, k] < 0].sum())
        assert sums_pos[name] <= min(0.0, sums_all[name]) + 1e-15
        assert res.layer_scores("all")[name] == pytest.approx(-want[:, k].sum())
        assert res.layer_scores("pos")[name] == pytest.approx(-sums_pos[name])


def test_per_tensor_and_per_block_differ():
    net = _mlp()
    train, val = _batches(3, 4, seed=1), _batches(2, 4, seed=2)
    blocks = {"l0": net[0], "l1": net[2]}
    a = I.layer_influence(net, train, val, blocks=blocks, loss_fn=_loss, progress=False).values
    b = I.layer_influence(net, train, val, blocks=blocks, loss_fn=_loss, progress=False, per_tensor=False).values
    assert not np.allclose(a, b)


def test_mislabelled_copies_are_harmful_and_pos_differs_from_all():
    """Train an MLP part-way on clean data; add label-flipped copies of training samples. Their
    influence on the clean validation loss is harmful (I > 0), the clean samples' beneficial
    (I < 0), so the +ve pool drops the copies and its sums differ from All's."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)

    def data(n):
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        return x, (x @ W).argmax(1)

    net = _mlp(1)
    xt, yt = data(256)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    for _ in range(30):                              # part-way: the validation loss still falls
        opt.zero_grad()
        _loss(net, {"x": xt, "y": yt}).backward()
        opt.step()
    xc, yc = data(24)
    flipped = (yc + 1) % 3                           # 8 mislabelled copies of the first clean samples
    train = [{"x": torch.cat([xc, xc[:8]]), "y": torch.cat([yc, flipped[:8]])}]
    xv, yv = data(64)
    res = I.layer_influence(net, train, [{"x": xv, "y": yv}], blocks={"l0": net[0], "l1": net[2]},
                            loss_fn=_loss, progress=False)
    total = res.values.sum(1)
    clean, bad = total[:24], total[24:]
    assert np.mean(bad > 0) >= 0.7 and np.mean(clean < 0) >= 0.8, (clean, bad)
    assert bad.mean() > 0 > clean.mean()
    s_all, s_pos = res.layer_sums("all"), res.layer_sums("pos")
    assert all(s_pos[k] < s_all[k] - 1e-9 for k in s_all)      # +ve ≠ All
    # no offset: a layer whose data is harmful on balance keeps its negative score
    assert min(res.layer_scores("all").values()) < 0 < min(res.layer_scores("pos").values())


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
    assert res.diagnostics["n_tensors"] == sum(len(list(layer.parameters())) for layer in model.model.layers)
    with pytest.raises(ValueError, match="pool"):
        res.layer_sums("neg")
    with pytest.raises(ValueError, match="damping_scale"):
        I.layer_influence(model, [mk(2)], [mk(2)], damping_scale=0.0, progress=False)
    with pytest.raises(ValueError, match="batches"):
        I.layer_influence(model, [], [mk(2)], progress=False)
