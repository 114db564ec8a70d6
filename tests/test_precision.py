"""Precision allocation (METHOD.md §5): exact solver vs brute force, fake quantisation, estimators, loaders."""
from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mdlcap.interventions.precision import quantize as Q
from mdlcap.interventions.precision import stats as ST
from mdlcap.interventions.precision import data as D
from mdlcap.interventions.precision import solve as S


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: two intra-op threads only spin against each other on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- exact solver
def _brute(cost, err, allowed, budget=None, cap=None):
    L, K = cost.shape
    best = None
    for ch in itertools.product(range(K), repeat=L):
        ch = np.array(ch)
        if not allowed[np.arange(L), ch].all():
            continue
        c, e = cost[np.arange(L), ch].sum(), err[np.arange(L), ch].sum()
        if budget is not None and e <= budget and (best is None or c < best[0]):
            best = (c, e)
        if cap is not None and c <= cap and (best is None or e < best[1]):
            best = (c, e)
    return best


def _instance(rng):
    L = int(rng.integers(3, 6))
    a = rng.lognormal(0, 2, L)
    flops = rng.integers(10, 5000, L).astype(float)
    p_star = rng.uniform(0, 14, L)
    return a, flops, p_star


def test_exact_matches_brute_force_min_cost():
    rng = np.random.default_rng(0)
    n_feasible = 0
    for _ in range(150):
        a, flops, p_star = _instance(rng)
        cost, err, allowed = S.caq_tables(a, flops, S.BIT_CHOICES, p_star)
        budget = a.sum() * 2.0 ** -rng.uniform(3, 22)
        ref = _brute(cost, err, allowed, budget=budget)
        if ref is None:
            with pytest.raises(S.Infeasible):
                S.allocate_exact(cost, err, budget, allowed)
            continue
        n_feasible += 1
        got = S.allocate_exact(cost, err, budget, allowed)
        assert got.cost == pytest.approx(ref[0], rel=1e-12)
        assert got.err <= budget * (1 + 1e-12)
        ch = got.choice
        assert allowed[np.arange(len(a)), ch].all()
        assert cost[np.arange(len(a)), ch].sum() == pytest.approx(got.cost)
    assert n_feasible > 50


def test_exact_matches_brute_force_min_error_general_tables():
    rng = np.random.default_rng(1)
    for _ in range(100):
        L, K = int(rng.integers(3, 6)), int(rng.integers(2, 5))
        cost = rng.uniform(0, 10, (L, K))
        err = rng.uniform(0, 10, (L, K))
        allowed = rng.random((L, K)) < 0.8
        allowed[np.arange(L), rng.integers(0, K, L)] = True
        cap = rng.uniform(np.where(allowed, cost, np.inf).min(1).sum(), cost.max(1).sum())
        ref = _brute(cost, err, allowed, cap=cap)
        got = S.allocate_min_error(cost, err, cap, allowed)
        assert got.err == pytest.approx(ref[1], rel=1e-12, abs=1e-12)
        assert got.cost <= cap * (1 + 1e-12)


def test_front_is_nondominated_and_sorted():
    rng = np.random.default_rng(2)
    cost, err = rng.uniform(0, 1, (6, 4)), rng.uniform(0, 1, (6, 4))
    f = S.pareto_front(cost, err)
    assert np.all(np.diff(f.cost) > 0) and np.all(np.diff(f.err) < 0)
    # each point is exactly the sum of its choices
    rows = np.arange(6)
    for c, e, ch in zip(f.cost, f.err, f.choice):
        assert c == pytest.approx(cost[rows, ch].sum()) and e == pytest.approx(err[rows, ch].sum())


def test_exact_agrees_with_cvxpy_milp():
    pytest.importorskip("cvxpy")
    rng = np.random.default_rng(3)
    a, flops = rng.lognormal(0, 2, 6), rng.integers(10, 5000, 6).astype(float)
    cost, err, allowed = S.caq_tables(a, flops)
    budget = a.sum() * 2.0 ** -9
    got = S.allocate_exact(cost, err, budget, allowed)
    _, milp_cost = S.allocate_milp_cvxpy(cost, err, budget, allowed)
    assert got.cost == pytest.approx(milp_cost, rel=1e-9)


def test_relaxation_pgd_reaches_kkt_and_rounding_is_feasible_not_better():
    rng = np.random.default_rng(4)
    for _ in range(20):
        L = int(rng.integers(3, 30))
        a, flops = rng.lognormal(0, 2, L), rng.integers(10, 100000, L).astype(float)
        budget = a.sum() * 2.0 ** -rng.uniform(5, 14)
        lo, hi = np.full(L, 4.0), np.full(L, 32.0)
        pk = S.relax_kkt(a, flops, budget, lo, hi)
        pg = S.relax_pgd(a, flops, budget, lo, hi)
        assert flops @ pg == pytest.approx(flops @ pk, rel=1e-3)       # first-order method: close, not exact
        assert np.sum(a * np.exp2(-pk)) <= budget * (1 + 1e-9)
        cost, err, allowed = S.caq_tables(a, flops)
        ch = S.caq_relaxed(a, flops, budget)
        rows = np.arange(L)
        assert err[rows, ch].sum() <= budget * (1 + 1e-9)
        exact = S.allocate_exact(cost, err, budget, allowed)
        assert cost[rows, ch].sum() >= exact.cost * (1 - 1e-12)
        assert exact.cost >= flops @ pk * (1 - 1e-9)          # the relaxation is a lower bound


def test_composition_formula_and_floor():
    Lc, xn, bits = np.array([2.0, 3.0, 0.5]), np.array([1.0, 4.0, 10.0]), np.array([4, 8, 16])
    want = (2 * 3 * 0.5) * 0.1 + 2 * 1 * 2 ** -4 * 3 * 0.5 + 3 * 4 * 2 ** -8 * 0.5 + 0.5 * 10 * 2 ** -16
    assert S.composed_error(Lc, xn, bits, eps0=0.1) == pytest.approx(want)
    assert S.precision_floor([8.0], [2.0], 0.5)[0] == pytest.approx(0.5 * np.log2(8 * 4 / 0.5))


def test_solver_bad_inputs():
    with pytest.raises(ValueError, match="flops"):
        S.caq_tables([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="cost/err"):
        S.pareto_front(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="cost/err"):
        S.pareto_front(np.array([[1.0, np.nan]]), np.ones((1, 2)))
    with pytest.raises(S.Infeasible, match="allowed"):
        c, e, al = S.caq_tables([1.0, 1.0], [1.0, 1.0], p_star=[40, 1])
        S.allocate_exact(c, e, 1.0, al)
    with pytest.raises(S.Infeasible, match="budget"):
        S.allocate_exact(*S.caq_tables([1.0, 1.0], [1.0, 1.0])[:2], 1e-30)


# --------------------------------------------------------------------------- fake quantisation
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_fake_quantize_idempotent_and_half_step(bits):
    t = torch.randn(200, generator=torch.Generator().manual_seed(bits)) * 3
    qmax = 2 ** (bits - 1) - 1
    s = float(t.abs().max()) / qmax
    q = Q.fake_quantize(t, bits, scale=s)
    assert torch.equal(Q.fake_quantize(q, bits, scale=s), q)              # exact with a fixed scale
    torch.testing.assert_close(Q.fake_quantize(q, bits), q, rtol=1e-6, atol=1e-6)   # auto scale
    assert float((q - t).abs().max()) <= s / 2 * (1 + 1e-5)
    assert len(torch.unique(q)) <= 2 * qmax + 1
    assert q.dtype == torch.float32


def test_fake_quantize_32_bits_is_identity_and_clamps():
    t = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Q.fake_quantize(t, 32), t, rtol=1e-6, atol=1e-7)
    q = Q.fake_quantize(torch.tensor([10.0, -10.0, 0.3]), 4, scale=0.1)   # range ±0.7
    assert q.tolist() == pytest.approx([0.7, -0.7, 0.3])
    x = torch.tensor([[1.0, 0.3], [100.0, 30.0]])
    q = Q.fake_quantize(x, 8, per_sample=True)                              # each row its own scale
    assert torch.all((q - x).abs() <= x.abs().amax(1, keepdim=True) / 127 / 2 * (1 + 1e-5))
    torch.testing.assert_close(q[1] / 100, q[0], rtol=1e-6, atol=0)        # scale-equivariant per row
    assert torch.equal(Q.fake_quantize(torch.zeros(3), 4), torch.zeros(3))
    with pytest.raises(ValueError, match="bits"):
        Q.fake_quantize(t, 1)


# --------------------------------------------------------------------------- estimators
def test_kappa_against_dense_hessian():
    torch.manual_seed(0)
    stage = Q.Stage(nn.Linear(5, 4), nn.Tanh())
    x = torch.randn(3, 5)
    Hs = [torch.autograd.functional.hessian(lambda z: stage(z[None]).pow(2).sum(), x[n]) for n in range(3)]
    fro2 = np.mean([float(H.pow(2).sum()) / 5 for H in Hs])          # E‖Hv‖²/‖v‖² = ‖H‖_F²/d
    op = max(float(torch.linalg.matrix_norm(H, ord=2)) for H in Hs)
    k = ST.kappa(stage, x, n_probes=3000, batch_size=3, n_batches=1, power_iters=200)
    assert k["kappa_rms"] ** 2 == pytest.approx(fro2, rel=0.05)
    assert k["kappa_op"] == pytest.approx(op, rel=1e-3)
    assert k["kappa"] <= k["kappa_rms"] * (1 + 1e-9)                 # mean ≤ RMS
    # ReLU layer: the Hessian of ‖relu(Wx+b)‖² is exactly 2 Wᵀ D W
    relu = Q.Stage(nn.Linear(5, 6), nn.ReLU())
    xr = torch.randn(1, 5)
    W = relu.op.weight.detach()
    Dm = torch.diag(((xr @ W.T + relu.op.bias.detach()) > 0).float()[0])
    H = 2 * W.T @ Dm @ W
    k = ST.kappa(relu, xr, n_probes=3000, batch_size=1, n_batches=1, power_iters=200)
    assert k["kappa_op"] == pytest.approx(float(torch.linalg.matrix_norm(H, ord=2)), rel=1e-3)
    assert k["kappa_rms"] ** 2 == pytest.approx(float(H.pow(2).sum()) / 5, rel=0.05)


def test_power_iteration_matches_matrix_norm():
    torch.manual_seed(1)
    lin = nn.Linear(30, 20)
    assert ST.spectral_norm(lin, (30,), n_iter=300) == pytest.approx(
        float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)), rel=1e-4)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    shape = (2, 5, 5)
    J = torch.autograd.functional.jacobian(
        lambda z: nn.functional.conv2d(z.view(1, *shape), conv.weight.detach(), None, 1, 1).flatten(), torch.zeros(50))
    assert ST.spectral_norm(conv, shape, n_iter=300) == pytest.approx(float(torch.linalg.matrix_norm(J, ord=2)), rel=1e-4)
    # the local (Jacobian) Lipschitz estimate of a ReLU stage never exceeds the weight bound
    st = Q.Stage(lin, nn.ReLU())
    assert ST.local_lipschitz(st, torch.randn(8, 30), n_iter=100) <= ST.spectral_norm(lin, (30,), n_iter=300) * (1 + 1e-4)


def test_models_shapes_and_quantised_forward():
    for name in Q.MODELS:
        m = Q.build_model(name, (1, 8, 8), 10)
        x = torch.rand(4, 1, 8, 8)
        assert m(x).shape == (4, 10)
        bits = [8] * len(m.stages)
        assert m(x, bits=bits).shape == (4, 10)
        torch.testing.assert_close(m(x, bits=[32] * len(m.stages)), m(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="model"):
        Q.build_model("resnet", (1, 8, 8), 10)


# --------------------------------------------------------------------------- data loaders
def test_digits_default_split():
    d = D.load_image_data("digits", seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert len(d.y_train) + len(d.y_val) + len(d.y_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.n_classes == 10


def test_loaders_reject_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="data_path"):
        D.load_image_data("mnist", None)
    with pytest.raises(ValueError, match="data_path"):
        D.load_image_data("fashion_mnist", tmp_path / "nope")
    with pytest.raises(ValueError, match="data_path.*train-images"):
        D.load_image_data("mnist", tmp_path)
    with pytest.raises(ValueError, match="data_path.*data_batch_1.bin"):
        D.load_image_data("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data_path.*train_32x32.mat"):
        D.load_image_data("svhn", tmp_path)
    with pytest.raises(ValueError, match="dataset"):
        D.load_image_data("imagenet")
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04not a pickle we will open")
    with pytest.raises(ValueError, match="pickle"):
        D.load_cifar10_bin(tmp_path)
    bad = tmp_path / "x-idx"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(bad)


def _write_idx(path, arr):
    hdr = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(hdr + arr.astype(np.uint8).tobytes())


def test_idx_cifar_svhn_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    m = tmp_path / "mnist"
    m.mkdir()
    imgs = {k: rng.integers(0, 256, (n, 28, 28)) for k, n in (("train", 40), ("t10k", 20))}
    labs = {k: np.tile(np.arange(10), n // 10) for k, n in (("train", 40), ("t10k", 20))}
    for k in imgs:
        _write_idx(m / f"{k}-images-idx3-ubyte.gz", imgs[k])
        _write_idx(m / f"{k}-labels-idx1-ubyte.gz", labs[k])
    xtr, ytr, xte, yte = D.load_idx_pair(m)
    assert xtr.shape == (40, 1, 28, 28) and np.allclose(xte[:, 0] * 255, imgs["t10k"]) and (ytr == labs["train"]).all()
    d = D.load_image_data("mnist", m, val_fraction=0.25)
    assert len(d.y_val) == 10 and len(d.y_test) == 20

    c = tmp_path / "cifar-10-batches-bin"
    c.mkdir()
    recs = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        lab = np.arange(10, dtype=np.uint8)
        pix = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
        (c / name).write_bytes(np.concatenate([lab[:, None], pix], axis=1).tobytes())
        recs[name] = pix
    xtr, ytr, xte, yte = D.load_cifar10_bin(tmp_path)
    assert xtr.shape == (50, 3, 32, 32) and np.allclose(xte.reshape(10, -1) * 255, recs["test_batch.bin"])

    from scipy.io import savemat
    s = tmp_path / "svhn"
    s.mkdir()
    X = rng.integers(0, 256, (32, 32, 3, 20), dtype=np.uint8)
    y = np.tile(np.arange(1, 11), 2)[:, None]
    for name in ("train_32x32.mat", "test_32x32.mat"):
        savemat(s / name, {"X": X, "y": y})
    xtr, ytr, _, _ = D.load_svhn_mat(s)
    assert xtr.shape == (20, 3, 32, 32) and ytr.max() == 9 and (ytr[9] == 0)
    assert np.allclose(xtr[3, 1] * 255, X[:, :, 1, 3])
