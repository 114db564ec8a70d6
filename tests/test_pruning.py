"""Pruners and ratio methods (mdlcap.interventions.pruning) on a random tiny Mistral with grouped-query attention."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mdlcap.interventions import pruning as P
from mdlcap.models import decoder_layers, random_model

RATIOS = [0.3, 0.5, 0.7]


@pytest.fixture(scope="module")
def model():
    # 4 query heads over 2 key/value heads: GQA, as in Mistral-7B
    return random_model(seed=0, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 128, (3, 16), generator=g)
        am = torch.ones_like(ids)
        am[0, 12:] = 0                       # one padded row: statistics must leave it out
        out.append({"input_ids": ids, "attention_mask": am, "labels": ids})
    return out


def _tolerance(layer, pruner):
    """One weight of rounding per row (Wanda) or per tensor (magnitude, SparseGPT)."""
    mods = P.prunable_linears(layer).values()
    if pruner == "wanda":
        return max(0.5 / m.in_features for m in mods) + 1e-12
    return 0.5 * len(mods) / sum(m.weight.numel() for m in mods) + 1e-12


@pytest.mark.parametrize("pruner", P.PRUNERS)
def test_measured_sparsity_equals_requested(model, batches, pruner):
    m = copy.deepcopy(model)
    recs = P.prune_model(m, RATIOS, pruner, batches, progress=False, blocksize=16)
    measured = P.measured_sparsity(m)
    for layer, rec, want, got in zip(decoder_layers(m), recs, RATIOS, measured):
        assert rec["measured"] == got
        assert abs(got - want) <= _tolerance(layer, pruner), (pruner, want, got)
        # every prunable linear individually, too
        for mod in P.prunable_linears(layer).values():
            frac = float((mod.weight == 0).float().mean())
            tol = 0.5 / mod.in_features if pruner == "wanda" else 0.5 / mod.weight.numel()
            assert abs(frac - want) <= tol + 1e-12
    # nothing outside the decoder layers' linears was touched
    assert torch.equal(m.lm_head.weight, model.lm_head.weight)


def test_wanda_compares_within_rows(model, batches):
    m = copy.deepcopy(model)
    P.prune_model(m, [0.5] * 3, "wanda", batches, progress=False)
    W = P.prunable_linears(decoder_layers(m)[0])["self_attn.q_proj"].weight
    per_row = (W == 0).sum(1)
    assert torch.all(per_row == per_row[0])


def _layer0_inputs(model, batches):
    rec = P.capture_layer_inputs(model, batches)
    X = torch.cat([h.reshape(-1, h.shape[-1]) for h in rec.hidden])
    return rec, X


def test_sparsegpt_reconstructs_better_than_magnitude_on_a_matrix():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 48, generator=g) @ torch.randn(48, 48, generator=g)   # correlated inputs
    X[:, :4] *= 10                                                              # a few outlier features
    W = torch.randn(32, 48, generator=g)
    H = 2 * X.T @ X / X.shape[0]
    errs = {}
    for pruner in P.PRUNERS:
        Wp = W.clone()
        if pruner == "magnitude":
            Wp[P.magnitude_mask(Wp, 0.5)] = 0
        elif pruner == "wanda":
            Wp[P.wanda_mask(Wp, (X ** 2).sum(0), 0.5)] = 0
        else:
            P.sparsegpt_prune_(Wp, H, 0.5, blocksize=16)
        assert float((Wp == 0).float().mean()) == pytest.approx(0.5, abs=1 / W.numel())
        errs[pruner] = float(((X @ (W - Wp).T) ** 2).sum())
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"]


@torch.no_grad()
def test_sparsegpt_layer_error_not_above_magnitude(model, batches):
    """On the calibration inputs of layer 0, SparseGPT's pruned layer is closer to the dense one."""
    rec = P.capture_layer_inputs(model, batches)
    dense = [P.layer_forward(decoder_layers(model)[0], h, a, k) for h, a, k in zip(rec.hidden, rec.args, rec.kwargs)]
    errs = {}
    for pruner in ("magnitude", "sparsegpt"):
        m = copy.deepcopy(model)
        P.prune_model(m, [0.6, 0.0, 0.0], pruner, batches, progress=False, blocksize=16)
        layer = decoder_layers(m)[0]
        out = [P.layer_forward(layer, h, a, k) for h, a, k in zip(rec.hidden, rec.args, rec.kwargs)]
        errs[pruner] = sum(float(((o - d) ** 2).sum()) for o, d in zip(out, dense))
    assert errs["sparsegpt"] <= errs["magnitude"]


@pytest.mark.parametrize("pruner", P.PRUNERS)
def test_zero_ratios_leave_the_model_unchanged(model, batches, pruner):
    m = copy.deepcopy(model)
    P.prune_model(m, [0.0] * 3, pruner, batches, progress=False)
    inputs = {k: batches[0][k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.equal(m(**inputs).logits, model(**inputs).logits)


def test_layerwise_pass_reproduces_the_full_forward(model, batches):
    """The layer-by-layer pass (captured layer-0 kwargs reused for every layer) sees exactly the
    inputs the full forward gives each layer's q_proj (padding left out in both)."""
    ref: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(decoder_layers(model)):
        q = P.prunable_linears(layer)["self_attn.q_proj"]

        def hook(mod, args, out, i=i, state={}):
            x = args[0].reshape(-1, args[0].shape[-1])
            x = x[state["mask"].reshape(-1) > 0]
            ref[i] = ref.get(i, 0) + (x * x).sum(0)
        hooks.append((q.register_forward_hook(hook), hook))
    with torch.no_grad():
        for b in batches:
            for _, h in hooks:
                h.__defaults__[1]["mask"] = b["attention_mask"]
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for handle, _ in hooks:
        handle.remove()
    seen = {}
    P.layerwise(model, batches, lambda i, layer, stats: seen.__setitem__(i, stats["self_attn.q_proj"].sq.clone()),
                progress=False)
    assert sorted(seen) == [0, 1, 2]
    for i in seen:
        torch.testing.assert_close(seen[i], ref[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pruner", P.PRUNERS)
def test_two_four_pattern(model, batches, pruner):
    m = copy.deepcopy(model)
    P.prune_model(m, None, pruner, batches, nm=(2, 4), progress=False, blocksize=16)
    for layer in decoder_layers(m):
        for mod in P.prunable_linears(layer).values():
            z = (mod.weight == 0).reshape(mod.out_features, -1, 4).sum(-1)
            assert torch.all(z == 2)
    np.testing.assert_allclose(P.measured_sparsity(m), 0.5)


# --------------------------------------------------------------------------- ratio methods
SIZES = np.array([100, 300, 200, 400, 250, 150])
Q = np.array([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.8, 0.95])
def test_ratio_methods_hit_the_global_target(target):
    out = {
        "uniform": P.uniform_ratios(SIZES, target),
        "owl": P.owl_ratios(Q[::-1], SIZES, target, lam=0.08),
        "layerif": P.layerif_ratios(Q, SIZES, target),
        "mdl_eq": P.mdl_ratios(Q, SIZES, target, rho_max=1.0, equality=True),
    }
    for name, r in out.items():
        assert r.shape == (6,) and r.min() >= 0 and r.max() <= 1, name
        assert P.global_sparsity(r, SIZES) == pytest.approx(target, abs=1e-9), name


def test_ratio_directions():
    s = 0.5
    lif = P.layerif_ratios(Q, SIZES, s)
    assert np.argmin(lif) == np.argmax(Q) and np.argmax(lif) == np.argmin(Q)   # important layers pruned less
    assert lif.max() / lif.min() == pytest.approx(1.3 / 0.7)                   # epsilon = 0.3 (the references)
    outl = np.array([0.01, 0.02, 0.05, 0.03, 0.04, 0.02])
    owl = P.owl_ratios(outl, SIZES, s, lam=0.08)
    assert np.argmin(owl) == np.argmax(outl)
    assert owl.max() - owl.min() == pytest.approx(0.16)
    eq = P.mdl_ratios(Q, np.full(6, 10.0), 0.2, rho_max=1.0, equality=True)   # no layer clips at 0.2
    assert eq.max() < 1
    np.testing.assert_allclose(eq / eq.sum(), (1 / Q) / (1 / Q).sum(), rtol=1e-6)  # ρ ∝ N q^{-γ}


def _ww_sparsity(metric, prunables, sparsity, epsilon):
    """AlphaPruning's ww_sparsity restated: min-max map of the metric to [1-eps, 1+eps], times one scaler."""
    m = np.asarray(metric, float)
    r = (m - m.min()) / (m.max() - m.min()) * (2 * epsilon) + (1 - epsilon)
    return r * np.sum(prunables) * sparsity / np.sum(prunables * r)


def test_layerif_ratios_follow_the_reference_map():
    """Below the 0.99 cap: AlphaPruning's map on the metric m = -score, exactly; invariant to the
    score's scale and offset, so signed scores (a harmful layer's negative LayerIF sum) are fine."""
    assert P.layerif_ratios(Q, SIZES, 0.5).tolist() == pytest.approx(_ww_sparsity(-Q, SIZES, 0.5, 0.3).tolist(), abs=1e-12)
    signed = 7.0 * Q - 1.0                                  # some entries negative
    assert signed.min() < 0
    np.testing.assert_allclose(P.layerif_ratios(signed, SIZES, 0.5), P.layerif_ratios(Q, SIZES, 0.5), atol=1e-12)
    np.testing.assert_allclose(P.layerif_ratios(np.full(6, -1.0), SIZES, 0.5), 0.5)   # constant score: uniform
    np.testing.assert_allclose(P.layerif_ratios(Q, SIZES, 0.5, epsilon=0.0), 0.5)


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_layerif_ratios_clip_and_redistribute_at_high_sparsity(target):
    """Where s(1+eps) > 0.99 the reference (LayerIF) clips at 0.99 and misses the target; here the
    clipped layers stay at 0.99 and the others are scaled up until the global sparsity is s."""
    ref = _ww_sparsity(-Q, SIZES, target, 0.3)
    assert ref.max() > P.LAYERIF_CAP
    lif = P.layerif_ratios(Q, SIZES, target)
    assert lif.max() == P.LAYERIF_CAP and P.global_sparsity(lif, SIZES) == pytest.approx(target, abs=1e-12)
    assert P.global_sparsity(np.minimum(ref, 0.99), SIZES) < target - 1e-3      # what the reference prunes
    free = lif < P.LAYERIF_CAP
    assert free.sum() >= 2 and np.ptp(lif[free] / ref[free]) < 1e-12 and (lif[free] > ref[free]).all()
    assert (lif[~free] == P.LAYERIF_CAP).all() and (ref[~free] >= ref[free].max()).all()
    assert (np.diff(lif[np.argsort(ref)]) >= 0).all()                         # the reference's order kept
    with pytest.raises(ValueError, match="cap"):
        P.layerif_ratios(Q, SIZES, 0.995)


def test_paper_mdl_is_uniform_at_rho_max_with_raw_sizes():
    """METHOD.md §3: raw N_k ~ 10^5..10^8, b=16, λ=2, γ=1: every ρ_k(0) ≫ 1, all clip at ρ_max."""
    r = P.mdl_ratios(Q, SIZES * 1000, 0.5, bits=16, lam=2, gamma=1, rho_max=0.51)
    np.testing.assert_allclose(r, 0.51)
    assert P.global_sparsity(r, SIZES) >= 0.5


def test_bad_inputs_name_the_argument(model, batches):
    with pytest.raises(ValueError, match="ratios"):
        P.prune_model(copy.deepcopy(model), [0.5, 0.5], "magnitude")
    with pytest.raises(ValueError, match="ratios"):
        P.prune_model(copy.deepcopy(model), [0.5, 1.5, 0.5], "magnitude")
    with pytest.raises(ValueError, match="pruner"):
        P.prune_model(copy.deepcopy(model), [0.5] * 3, "random")
    with pytest.raises(ValueError, match="batches"):
        P.prune_model(copy.deepcopy(model), [0.5] * 3, "wanda")
    with pytest.raises(ValueError, match="nm"):
        P.prune_model(copy.deepcopy(model), None, "magnitude", nm=(5, 4))
    with pytest.raises(ValueError, match="target"):
        P.uniform_ratios(SIZES, 1.2)
    with pytest.raises(ValueError, match="sizes"):
        P.layerif_ratios(Q, SIZES[:3], 0.5)
    with pytest.raises(ValueError, match="score"):
        P.layerif_ratios([np.nan] * 6, SIZES, 0.5)


def _tiny(arch):
    from transformers import Gemma2Config, Gemma2ForCausalLM, GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM
    kw = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
    cfg, cls = {"llama": (LlamaConfig(**kw), LlamaForCausalLM),
                "gemma": (GemmaConfig(**kw, head_dim=8), GemmaForCausalLM),
                # alternating sliding-window (4 tokens) and full attention: two different masks
                "gemma2": (Gemma2Config(**kw, head_dim=8, sliding_window=4), Gemma2ForCausalLM)}[arch]
    torch.manual_seed(0)
    return cls(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma", "gemma2"])
def test_layerwise_pass_on_other_decoders(arch, batches):
    m = _tiny(arch)
    ref, hooks = {}, []
    b = {k: batches[1][k] for k in ("input_ids", "attention_mask")}
    for i, layer in enumerate(decoder_layers(m)):
        q = P.prunable_linears(layer)["self_attn.q_proj"]
        keep = b["attention_mask"].reshape(-1) > 0          # padding is left out of the statistics
        hooks.append(q.register_forward_hook(
            lambda mod, a, o, i=i: ref.__setitem__(i, (a[0].reshape(-1, a[0].shape[-1])[keep] ** 2).sum(0))))
    with torch.no_grad():
        m(**b)
    for h in hooks:
        h.remove()
    seen = {}
    P.layerwise(m, [b], lambda i, layer, stats: seen.__setitem__(i, stats["self_attn.q_proj"].sq.clone()), progress=False)
    for i in ref:
        torch.testing.assert_close(seen[i], ref[i], rtol=1e-5, atol=1e-5)
    P.prune_model(m, [0.5, 0.4, 0.3], "sparsegpt", [b], progress=False)
    np.testing.assert_allclose(P.measured_sparsity(m), [0.5, 0.4, 0.3], atol=0.5 / 32)
