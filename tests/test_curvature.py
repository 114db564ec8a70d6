"""ζ² = g_kᵀ(H_kk + λI)⁻¹g_k: matrix-free CG against dense Hessians/GGNs built explicitly,
the cheap surrogates against their formulas evaluated by hand, and the API's contracts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from mdlcap.models import fingerprint_batches, fingerprint_model, random_model
from mdlcap.scores import kfac, kronecker
from mdlcap.scores.autograd import eager_attention, mean_loss
from mdlcap.scores.blocks import resolve_blocks
from mdlcap.scores.newton import applied_step, block_quadratic
from mdlcap.scores.registry import cached_gains, layer_gains
from mdlcap.scores.table import load_scores, scores_frame
from mdlcap.study.measure import measure

# ----------------------------------------------------------------------------- fixtures


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _mlp_batches(n=3, B=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(B, 5, generator=g, dtype=torch.float64), "y": torch.randint(0, 3, (B,), generator=g)}
            for _ in range(n)]


def _mlp_loss(model, batch):
    z = model(batch["x"])
    return nn.functional.cross_entropy(z, batch["y"]), z


def _blocks(net):
    return {"l0": net[0], "l1": net[2], "l2": net[4]}


def _dense(model, batches, block, loss_of_outputs, forward, curvature):
    """Mean-loss gradient and dense H_kk (exact Hessian or Jᵀ∇²ℓJ) for one block, explicitly."""
    ps = list(block.parameters())
    names = {id(p): k for k, p in model.named_parameters()}
    base = {k: v.detach() for k, v in model.named_parameters()}
    flat0 = torch.cat([p.detach().reshape(-1) for p in ps])

    def params_of(f):
        d, i = dict(base), 0
        for p in ps:
            d[names[id(p)]] = f[i:i + p.numel()].view_as(p)
            i += p.numel()
        return d

    g, H = 0, 0
    for b in batches:
        out = lambda f: forward(functional_call, model, params_of(f), b)  # noqa: E731
        L = lambda f: loss_of_outputs(out(f), b)  # noqa: E731
        g = g + torch.autograd.functional.jacobian(L, flat0)
        if curvature == "hessian":
            H = H + torch.autograd.functional.hessian(L, flat0)
        else:
            z0 = out(flat0).detach()
            J = torch.autograd.functional.jacobian(out, flat0).reshape(-1, flat0.numel())
            Hz = torch.autograd.functional.hessian(lambda z: loss_of_outputs(z.view_as(z0), b), z0.reshape(-1))
            H = H + J.T @ Hz @ J
    return g / len(batches), H / len(batches)


def _mlp_dense(net, batches, block, curvature):
    return _dense(net, batches, block, lambda z, b: nn.functional.cross_entropy(z, b["y"]),
                  lambda fc, m, p, b: fc(m, p, (b["x"],)), curvature)


def _zeta2(g, H, lam):
    return (g @ torch.linalg.solve(H + lam * torch.eye(len(g), dtype=H.dtype), g)).item()


def _hf_batches(vocab=32, n=2, B=2, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (B, T), generator=g)
        lab = ids.clone()
        lab[:, : T // 2] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab})
    return out


# ----------------------------------------------------------------------------- CG vs dense


@pytest.mark.parametrize("curvature,damping", [("ggn", 1e-3), ("ggn", 1e-1), ("hessian", 0.5)])
def test_cg_matches_dense_mlp(curvature, damping):
    net, batches = _mlp(), _mlp_batches()
    res = layer_gains(net, batches, method="cg", curvature=curvature, damping=damping, blocks=_blocks(net),
                        loss_fn=_mlp_loss, max_iter=500, tol=1e-13, progress=False)
    for name, block in _blocks(net).items():
        g, H = _mlp_dense(net, batches, block, curvature)
        lam = res.diagnostics[name]["damping_used"]
        assert lam >= damping
        want = _zeta2(g, H, lam)
        assert res[name] == pytest.approx(want, rel=1e-6), name
        assert res.diagnostics[name]["rel_residual"] < 1e-6
        ev_min = torch.linalg.eigvalsh(H).min().item()
        if curvature == "hessian":
            # damping used makes H + λI positive definite (Eq 7) and the reported λ_min(H) is a Ritz value ≥ the true one
            assert ev_min + lam > 0
            assert res.diagnostics[name]["ritz_min_H"] >= ev_min - 1e-8


def test_cg_hessian_raises_damping_when_indefinite():
    net, batches = _mlp(), _mlp_batches()
    res = layer_gains(net, batches, method="cg", curvature="hessian", damping=1e-4, blocks=_blocks(net),
                        loss_fn=_mlp_loss, max_iter=500, tol=1e-13, progress=False)
    raised = 0
    for name, block in _blocks(net).items():
        g, H = _mlp_dense(net, batches, block, "hessian")
        ev_min = torch.linalg.eigvalsh(H).min().item()
        d = res.diagnostics[name]
        if ev_min + 1e-4 < 0:             # the requested damping leaves H̃ indefinite: it must be raised
            assert d["damping_used"] > -ev_min and d["damping_raises"] >= 1
            raised += 1
        assert res[name] == pytest.approx(_zeta2(g, H, d["damping_used"]), rel=1e-6)
    assert raised >= 1                    # this random net's Hessian blocks are indefinite


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_cg_matches_dense_hf_mistral_gqa(curvature):
    """Same check on a Hugging Face Mistral (grouped-query attention), float64, default blocks."""
    model = random_model(vocab_size=32, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1).double()
    batches = _hf_batches()
    lam = 1e-2 if curvature == "ggn" else 1.0
    res = layer_gains(model, batches, method="cg", curvature=curvature, damping=lam, max_iter=800, tol=1e-13,
                        progress=False)
    assert list(res) == ["layers.0", "layers.1"]
    from transformers.loss.loss_utils import ForCausalLMLoss

    def fwd(fc, m, p, b):
        with eager_attention(m):
            return fc(m, p, (), {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}).logits

    def loss(z, b):
        return ForCausalLMLoss(z, b["labels"], vocab_size=32)

    for i, layer in enumerate(model.model.layers):
        g, H = _dense(model, batches, layer, loss, fwd, curvature)
        d = res.diagnostics[f"layers.{i}"]
        assert res[f"layers.{i}"] == pytest.approx(_zeta2(g, H, d["damping_used"]), rel=1e-6)


def test_mean_over_batches():
    """Gains are those of the mean loss: equal-size batches or their concatenation give the same ζ²."""
    net, batches = _mlp(), _mlp_batches()
    cat = [{"x": torch.cat([b["x"] for b in batches]), "y": torch.cat([b["y"] for b in batches])}]
    for method in ("cg", "grad_norm"):
        a = layer_gains(net, batches, method=method, blocks=_blocks(net), loss_fn=_mlp_loss, progress=False,
                          max_iter=300, tol=1e-13)
        b = layer_gains(net, cat, method=method, blocks=_blocks(net), loss_fn=_mlp_loss, progress=False,
                          max_iter=300, tol=1e-13)
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-8)


# ----------------------------------------------------------------------------- cheap surrogates vs formulas


def _per_sample_grads(net, batches, block):
    ps = list(block.parameters())
    out = []
    for b in batches:
        for i in range(b["x"].shape[0]):
            loss = nn.functional.cross_entropy(net(b["x"][i:i + 1]), b["y"][i:i + 1])
            out.append(torch.autograd.grad(loss, ps))
    return out


def _mean_grad(net, batches, block):
    ps = list(block.parameters())
    gs = [torch.autograd.grad(_mlp_loss(net, b)[0], ps) for b in batches]
    return [sum(g[j] for g in gs) / len(gs) for j in range(len(ps))]


def test_diag_fisher_and_grad_norm_formulas():
    net, batches = _mlp(), _mlp_batches()
    lam = 1e-3
    df = layer_gains(net, batches, method="diag_fisher", damping=lam, blocks=_blocks(net), loss_fn=_mlp_loss,
                       progress=False, fisher="empirical")
    gn = layer_gains(net, batches, method="grad_norm", blocks=_blocks(net), loss_fn=_mlp_loss, progress=False)
    for name, block in _blocks(net).items():
        g = _mean_grad(net, batches, block)
        ps = _per_sample_grads(net, batches, block)
        F = [sum(s[j] ** 2 for s in ps) / len(ps) for j in range(len(g))]
        want = sum((gj ** 2 / (fj + lam)).sum().item() for gj, fj in zip(g, F))
        assert df[name] == pytest.approx(want, rel=1e-10)
        assert gn[name] == pytest.approx(sum((gj ** 2).sum().item() for gj in g), rel=1e-10)


def test_kfac_and_ekfac_formulas():
    """Empirical Fisher, one loss term per sample: K-FAC A = E[a aᵀ], G = E[(Bδ)(Bδ)ᵀ] (δ of the
    batch-mean loss, so Bδ is the sample's own loss gradient); EK-FAC: eigenvalues refitted to
    per-sample gradients in the Kronecker eigenbasis. Recomputed here with explicit per-sample loops."""
    net, batches = _mlp(), _mlp_batches()
    lam = 1e-3
    kf = layer_gains(net, batches, method="kfac", damping=lam, blocks=_blocks(net), loss_fn=_mlp_loss, progress=False,
                     fisher="empirical")
    ek = layer_gains(net, batches, method="ekfac", damping=lam, blocks=_blocks(net), loss_fn=_mlp_loss,
                       progress=False, fisher="empirical")
    layers = [net[0], net[2], net[4]]
    for name, lin in zip(_blocks(net), layers):
        A = torch.zeros(lin.in_features, lin.in_features, dtype=torch.float64)
        G = torch.zeros(lin.out_features, lin.out_features, dtype=torch.float64)
        per_sample = []
        for b in batches:
            B = b["x"].shape[0]
            acts = {}
            h = lin.register_forward_hook(lambda m, i, o: acts.update(a=i[0].detach(), o=o))
            z = net(b["x"])
            h.remove()
            loss = nn.functional.cross_entropy(z, b["y"])
            delta = torch.autograd.grad(loss, acts["o"])[0]
            A += acts["a"].T @ acts["a"] / B
            G += (B * delta).T @ (B * delta) / B
            per_sample += [torch.outer(B * delta[i], acts["a"][i]) for i in range(B)]
        A, G = A / len(batches), G / len(batches)
        g = _mean_grad(net, batches, lin)
        ea, qa = torch.linalg.eigh(A)
        eg, qg = torch.linalg.eigh(G)
        gw = qg.T @ g[0] @ qa
        want = (gw ** 2 / (torch.outer(eg.clamp_min(0), ea.clamp_min(0)) + lam)).sum().item()
        S = sum((qg.T @ s @ qa) ** 2 for s in per_sample) / len(per_sample)
        want_ek = (gw ** 2 / (S + lam)).sum().item()
        # bias: diagonal Fisher from per-batch gradients (B·g_b²)
        gb = [torch.autograd.grad(_mlp_loss(net, b)[0], lin.bias)[0] for b in batches]
        fb = sum(b_["x"].shape[0] * x ** 2 for b_, x in zip(batches, gb)) / len(batches)
        bias = (g[1] ** 2 / (fb + lam)).sum().item()
        assert kf[name] == pytest.approx(want + bias, rel=1e-8)
        assert ek[name] == pytest.approx(want_ek + bias, rel=1e-8)
        # per-sample gradient of a Linear layer is exactly rank one, so EK-FAC's eigenvalues equal
        # the empirical Fisher's diagonal in the Kronecker eigenbasis


# ----------------------------------------------------------------------------- smoke, blocks, caching, errors

SMOKE_CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)


@pytest.mark.parametrize("method,curvature", [("cg", "ggn"), ("cg", "hessian"), ("diag_fisher", None),
                                              ("kfac", None), ("ekfac", None), ("grad_norm", None)])
@pytest.mark.parametrize("blocks", [None, "attn_mlp"])
def test_every_method_runs_on_hf_model(method, curvature, blocks):
    model = random_model(**SMOKE_CFG)
    batches = _hf_batches(vocab=64, n=2, B=2, T=8)
    res = layer_gains(model, batches, method=method, curvature=curvature or "ggn", blocks=blocks, max_iter=5,
                        progress=False)
    n_blocks = 2 if blocks is None else 4
    assert len(res) == n_blocks
    vals = res.values_array()
    assert np.all(np.isfinite(vals)) and np.all(vals > 0)
    assert set(res.diagnostics) == set(res)
    if method == "cg":
        assert all(d["iterations"] >= 1 for d in res.diagnostics.values())
    # parameters and mode are restored
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kfac_shared_inputs_give_the_same_scores(monkeypatch, method):
    """q/k/v (and gate/up) read the same tensor: sharing their A factor must not change ζ²."""
    model = random_model(**SMOKE_CFG).double()
    batches = _hf_batches(vocab=64, n=2, B=3, T=8)
    shared = layer_gains(model, batches, method=method, progress=False)
    monkeypatch.setattr(kfac, "SHARE_KFAC_INPUTS", False)
    separate = layer_gains(model, batches, method=method, progress=False)
    for k in shared:
        assert shared[k] == pytest.approx(separate[k], rel=1e-9)


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_kfac_gram_path_equals_dense_eigh(monkeypatch, method):
    """Factors from fewer rows than their size are eigendecomposed from the Gram matrix (partial
    eigenbasis, the rest of the spectrum 0): the same ζ² and the same (K + λI)⁻¹ as the dense eigh."""
    model = random_model(**SMOKE_CFG).double()
    batches = _hf_batches(vocab=64, n=1, B=2, T=8)          # 2 × 4 loss tokens < 16, 32 (hidden, MLP)
    gram = layer_gains(model, batches, method=method, progress=False)
    kf = kfac.kfac_factors(model, batches, None, eigen_corrected=(method == "ekfac"))
    name = next(iter(kf.blocks))
    lin = [p for p in kf.blocks[name] if kf.is_kronecker(p)]
    assert any(kf.eigenvalues(p).shape != p.shape for p in lin)       # the Gram path was taken
    v = torch.randn(sum(p.numel() for p in kf.blocks[name]), dtype=torch.float64)
    x = kf.inverse(name, v, 1e-3)
    torch.testing.assert_close(kf.matvec(name, x, 1e-3), v, rtol=1e-8, atol=1e-8)
    monkeypatch.setattr(kronecker, "GRAM_ROWS", 0.0)
    dense = layer_gains(model, batches, method=method, progress=False)
    kd = kfac.kfac_factors(model, batches, None, eigen_corrected=(method == "ekfac"))
    torch.testing.assert_close(kd.inverse(name, v, 1e-3), x, rtol=1e-6, atol=1e-8)
    for k in gram:
        assert gram[k] == pytest.approx(dense[k], rel=1e-7)


def test_attn_mlp_blocks_partition_each_layer():
    model = random_model(**SMOKE_CFG)
    blk = resolve_blocks(model, "attn_mlp")
    for i, layer in enumerate(model.model.layers):
        got = {id(p) for p in blk[f"layers.{i}.attn"]} | {id(p) for p in blk[f"layers.{i}.mlp"]}
        assert got == {id(p) for p in layer.parameters()}
        assert {id(p) for p in layer.mlp.parameters()} <= {id(p) for p in blk[f"layers.{i}.mlp"]}


def test_cg_steps_give_lemma1_decrease():
    """m_k(d*) = −½ζ² − (λ/2)‖d*‖² (Appendix C identity) with d* returned by CG, checked via block_quadratic."""
    net, batches = _mlp(), _mlp_batches()
    lam = 0.05
    res = layer_gains(net, batches, method="cg", damping=lam, blocks=_blocks(net), loss_fn=_mlp_loss, max_iter=500,
                        tol=1e-13, progress=False, return_steps=True)
    for name, block in _blocks(net).items():
        q = block_quadratic(net, batches, list(block.parameters()), res.steps[name], curvature="ggn",
                              loss_fn=_mlp_loss)
        assert q["quadratic"] == pytest.approx(-0.5 * res[name] - 0.5 * lam * q["d_norm2"], rel=1e-8)
        before = mean_loss(net, batches, _mlp_loss)
        with applied_step(list(block.parameters()), res.steps[name], scale=1e-3):
            after = mean_loss(net, batches, _mlp_loss)
        assert after < before                      # d* is a descent direction
    assert mean_loss(net, batches, _mlp_loss) == pytest.approx(before)   # parameters restored


def test_cache_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLCAP_CACHE", str(tmp_path))
    net, batches = _mlp(), _mlp_batches()
    calls = []

    def compute():
        calls.append(1)
        return layer_gains(net, batches, method="grad_norm", blocks=_blocks(net), loss_fn=_mlp_loss, progress=False)

    key = {"model": fingerprint_model(net), "data": fingerprint_batches(batches), "method": "grad_norm",
           "damping": 1e-3}
    a = cached_gains(key, compute)
    b = cached_gains(key, compute)
    assert calls == [1] and dict(a) == dict(b) and b.method == "grad_norm"
    assert len(list((tmp_path / "scores").glob("*.json"))) == 1
    cached_gains({**key, "damping": 1e-2}, compute)       # another key computes again
    assert calls == [1, 1]
    # a different model or different data changes the key
    assert fingerprint_model(_mlp(seed=3)) != key["model"]
    assert fingerprint_batches(_mlp_batches(seed=5)) != key["data"]


def test_scores_frame_and_load_scores(tmp_path):
    df = scores_frame({("cola", "grad_norm"): {"a": 1.0, "b": 3.0}, ("calibration", "kfac"): {"a": 2.0, "b": 2.0}})
    assert list(df.columns) == ["task", "method", "layer", "score", "q"]
    assert df.groupby(["task", "method"])["q"].sum().tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        load_scores(tmp_path)
    (tmp_path / "02_curvature_scores").mkdir()
    df.to_csv(tmp_path / "02_curvature_scores" / "scores.csv", index=False)
    assert len(load_scores(tmp_path, task="cola")) == 2
    assert len(load_scores(tmp_path, method="kfac")) == 2
    with pytest.raises(ValueError, match="task"):
        load_scores(tmp_path, task="nope")
    none = scores_frame({("t", "m"): {"a": 0.0, "b": -1.0}})       # no positive score: q undefined, scores kept
    assert none["q"].isna().all() and none["score"].tolist() == [0.0, -1.0]
    with pytest.raises(ValueError, match="finite"):
        scores_frame({("t", "m"): {"a": float("nan")}})


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="newton"), "method"),
    (dict(method="cg", curvature="fisher"), "curvature"),
    (dict(damping=0.0), "damping"),
    (dict(damping=float("nan")), "damping"),
    (dict(max_iter=0), "max_iter"),
    (dict(loss_fn=3), "loss_fn"),
    (dict(blocks="heads"), "blocks"),
    (dict(fisher_granularity="token"), "fisher_granularity"),
])
def test_bad_input(kwargs, match):
    net, batches = _mlp(), _mlp_batches()
    kw = dict(blocks=_blocks(net), loss_fn=_mlp_loss, progress=False)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        layer_gains(net, batches, **kw)


def test_bad_batches_and_blocks():
    net = _mlp()
    with pytest.raises(ValueError, match="batches"):
        layer_gains(net, [], blocks=_blocks(net), loss_fn=_mlp_loss, progress=False)
    with pytest.raises(ValueError, match="disjoint"):
        layer_gains(net, _mlp_batches(), blocks={"a": net[0], "b": net[0]}, loss_fn=_mlp_loss, progress=False)
    with pytest.raises(ValueError, match="outputs"):     # GGN needs the outputs the loss is taken of
        layer_gains(net, _mlp_batches(), blocks=_blocks(net), loss_fn=lambda m, b: _mlp_loss(m, b)[0],
                      progress=False)
    with pytest.raises(ValueError, match="model"):       # no decoder layers in a plain MLP
        layer_gains(net, _mlp_batches(), loss_fn=_mlp_loss, progress=False)


def test_measure_reports_time_and_memory():
    _, dt, mem = measure(lambda: torch.ones(4_000_000).sum())
    assert dt > 0 and mem >= 0
    assert math.isfinite(dt)
