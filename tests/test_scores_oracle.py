"""curvlinops (an independent implementation) as the oracle for the curvature surrogates of
METHOD.md §1: our block GGN / Hessian products (scores.operators.BlockOperator) must equal
curvlinops' GGNLinearOperator / HessianLinearOperator restricted to the same parameters, and our
K-FAC / EK-FAC ζ² must equal ζ² computed from curvlinops' KFACLinearOperator / EKFACLinearOperator
(empirical Fisher, KFAC-expand) up to a pinned convention.

Conventions pinned here (scores.fisher, scores.kfac): our Fisher is that of the mean loss over all
loss terms, from per-sequence gradients of the token-SUM loss / M; K-FAC-expand with A and G summed
over the loss positions. curvlinops' KFAC-expand with loss_average "batch+sequence" is the same
matrix when every position of a sequence carries a loss (the decoder data below feed the model
ids[:, :-1] with targets ids[:, 1:], so they do), hence the natural relation

    ζ²_ours(λ) = gᵀ(K_cl + λI)⁻¹ g        (decoder next-token cross-entropy; cross-entropy on vectors)

One difference remains and is pinned: a custom loss_fn has one loss term per SAMPLE, while
curvlinops counts MSE-mean's C outputs as C terms (R = C), so for MSE K_ours = K_cl / R and
ζ²_ours(λ) = R · gᵀ(K_cl + RλI)⁻¹ g. The true Fisher (labels drawn from the model) is checked
against curvlinops' exact expectation (FisherType.TYPE2) on the MLP, averaging many draws.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

curvlinops = pytest.importorskip("curvlinops")
from curvlinops import (EKFACLinearOperator, FisherType, GGNLinearOperator,  # noqa: E402
                        HessianLinearOperator, KFACLinearOperator, KFACType)

from mdlcap.models import decoder_layers, random_model  # noqa: E402
from mdlcap.scores.autograd import eager_attention, flat  # noqa: E402
from mdlcap.scores.operators import BlockOperator  # noqa: E402
from mdlcap.scores.registry import layer_gains  # noqa: E402

DAMPING = 1e-2


# ----------------------------------------------------------------------------- fixtures
def _mlp(n_out):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, n_out)).double()


def _mlp_data(kind, n_out, n_batches=3, B=6):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_batches):
        x = torch.randn(B, 5, generator=g, dtype=torch.float64)
        y = (torch.randn(B, n_out, generator=g, dtype=torch.float64) if kind == "mse"
             else torch.randint(0, n_out, (B,), generator=g))
        out.append((x, y))
    return out


def _criterion(kind):
    return nn.MSELoss() if kind == "mse" else nn.CrossEntropyLoss()


def _our_loss_fn(kind):
    crit = _criterion(kind)

    def loss_fn(model, batch):
        z = model(batch["x"])
        return crit(z, batch["y"]), z
    return loss_fn


def _as_batches(data):
    return [{"x": x, "y": y} for x, y in data]


def _dense_ours(model, batches, params, curvature, loss_fn):
    op = BlockOperator(model, batches, params, curvature, loss_fn, True, torch.device("cpu"), len(batches))
    dim = sum(p.numel() for p in params)
    eye = torch.eye(dim, dtype=torch.float64)
    return torch.stack([op(eye[:, j]) for j in range(dim)], dim=1)


def _dense_cl(op_cls, model, crit, params, data, **kw):
    op = op_cls(model, crit, params, data, check_deterministic=False, **kw)
    dim = sum(p.numel() for p in params)
    return op @ torch.eye(dim, dtype=params[0].dtype)


def _zeta2(K, g, damping):
    return torch.dot(g, torch.linalg.solve(K + damping * torch.eye(K.shape[0], dtype=K.dtype), g)).item()


def _mean_grad(model, crit, params, data):
    acc = [torch.zeros_like(p) for p in params]
    for x, y in data:
        for a, gi in zip(acc, torch.autograd.grad(crit(model(x), y), params)):
            a += gi
    return flat([a / len(data) for a in acc], torch.float64)


# ----------------------------------------------------------------------------- GGN and Hessian products
@pytest.mark.parametrize("kind,n_out", [("mse", 3), ("ce", 4)])
@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_block_operator_matches_curvlinops_on_mlp(kind, n_out, curvature):
    model, data = _mlp(n_out), _mlp_data(kind, n_out)
    op_cls = GGNLinearOperator if curvature == "ggn" else HessianLinearOperator
    for block in (model[0], model[2], model[4]):
        params = list(block.parameters())
        ours = _dense_ours(model, _as_batches(data), params, curvature, _our_loss_fn(kind))
        ref = _dense_cl(op_cls, model, _criterion(kind), params, data)
        torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-10)


class _ShiftedLogits(nn.Module):
    """The decoder as curvlinops sees it: input ids -> (B, V, T-1) logits of the next token, so
    that nn.CrossEntropyLoss on labels[:, 1:] is the Hugging Face causal-LM mean loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits[:, :-1].permute(0, 2, 1)


def _decoder(n_batches=2, B=3, T=6, hidden_act="silu"):
    model = random_model(seed=2, num_hidden_layers=2, hidden_size=16, intermediate_size=24, vocab_size=20,
                         num_attention_heads=2, num_key_value_heads=1, hidden_act=hidden_act).double()
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(0, 20, (B, T), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})     # every label in the loss
    data = [(b["input_ids"], b["labels"][:, 1:]) for b in batches]
    return model, batches, data


def _hf_loss_fn(model, batch):
    out = model(**batch)
    return out.loss, out.logits


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_block_operator_matches_curvlinops_on_decoder(curvature):
    # curvlinops' Hessian product is forward-over-reverse (jvp of a vjp) and torch has no forward
    # AD for aten::silu_backward: a tanh MLP activation here (ours is reverse-over-reverse)
    model, batches, data = _decoder(hidden_act="tanh")
    params = [decoder_layers(model)[1].self_attn.o_proj.weight, decoder_layers(model)[1].post_attention_layernorm.weight]
    op_cls = GGNLinearOperator if curvature == "ggn" else HessianLinearOperator
    with eager_attention(model):
        ours = _dense_ours(model, batches, params, curvature, _hf_loss_fn)
        ref = _dense_cl(op_cls, _ShiftedLogits(model), nn.CrossEntropyLoss(), params, data)
    # the Hugging Face loss casts the logits to float32, hence float32 agreement only
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


# ----------------------------------------------------------------------------- K-FAC and EK-FAC
def _kfac_zeta2_cl(op_cls, model, crit, params, data, R, fisher_type=FisherType.EMPIRICAL):
    K = _dense_cl(op_cls, model, crit, params, data, fisher_type=fisher_type, kfac_approx=KFACType.EXPAND)
    return R * _zeta2(K, _mean_grad(model, crit, params, data), R * DAMPING)


@pytest.mark.parametrize("method,op_cls", [("kfac", KFACLinearOperator), ("ekfac", EKFACLinearOperator)])
@pytest.mark.parametrize("kind,n_out", [("mse", 3), ("ce", 4)])
def test_kfac_matches_curvlinops_on_mlp(method, op_cls, kind, n_out):
    model, data = _mlp(n_out), _mlp_data(kind, n_out)
    blocks = {f"w{i}": [model[i].weight] for i in (0, 2, 4)}     # Linear weights: all Kronecker-factored
    ours = layer_gains(model, _as_batches(data), method=method, damping=DAMPING, blocks=blocks,
                       loss_fn=_our_loss_fn(kind), progress=False, fisher="empirical")
    R = n_out if kind == "mse" else 1        # curvlinops' loss terms per sample (ours: one per sample)
    for name, (w,) in blocks.items():
        ref = _kfac_zeta2_cl(op_cls, model, _criterion(kind), [w], data, R)
        assert ours[name] == pytest.approx(ref, rel=1e-7), (name, ours[name], ref)
    if R > 1:    # the convention really matters: without the factor R the two disagree
        ref1 = _zeta2(_dense_cl(op_cls, model, _criterion(kind), [model[4].weight], data,
                                fisher_type=FisherType.EMPIRICAL, kfac_approx=KFACType.EXPAND),
                      _mean_grad(model, _criterion(kind), [model[4].weight], data), DAMPING)
        assert abs(ours["w4"] / ref1 - 1) > 1e-3


def _ce_sampling_loss_fn():
    """Cross-entropy loss_fn that can draw its labels from the model (the true Fisher's protocol)."""
    def loss_fn(model, batch, sample=None):
        z = model(batch["x"])
        y = batch["y"] if sample is None else torch.multinomial(torch.softmax(z.detach(), -1), 1,
                                                                generator=sample).squeeze(-1)
        return nn.functional.cross_entropy(z, y), z
    return loss_fn


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_true_fisher_kfac_matches_curvlinops_expectation_on_mlp(method):
    """Labels drawn from the model, averaged over many draws -> curvlinops' exact expectation
    (TYPE2: the loss Hessian's square root backpropagated). Monte-Carlo tolerance."""
    model, data = _mlp(4), _mlp_data("ce", 4)
    blocks = {f"w{i}": [model[i].weight] for i in (0, 2, 4)}
    ours = layer_gains(model, _as_batches(data), method=method, damping=DAMPING, blocks=blocks,
                       loss_fn=_ce_sampling_loss_fn(), progress=False, fisher="true", fisher_samples=400)
    op_cls = KFACLinearOperator if method == "kfac" else EKFACLinearOperator
    for name, (w,) in blocks.items():
        ref = _kfac_zeta2_cl(op_cls, model, nn.CrossEntropyLoss(), [w], data, 1, FisherType.TYPE2)
        emp = _kfac_zeta2_cl(op_cls, model, nn.CrossEntropyLoss(), [w], data, 1)
        assert ours[name] == pytest.approx(ref, rel=0.05), (name, ours[name], ref, emp)


def test_kfac_matches_curvlinops_on_decoder():
    """Per decoder Linear weight; q/k/v share q's input factor in our code (same input, so the
    same A). Every position the model sees carries a loss (curvlinops gets ids[:, :-1] -> ids[:, 1:]),
    so our loss-position factors are curvlinops' all-position ones: no R. (curvlinops'
    EKFACLinearOperator takes 2-d outputs only, so EK-FAC is checked on the MLPs.)"""
    method, op_cls = "kfac", KFACLinearOperator
    model, batches, data = _decoder()
    data = [(ids[:, :-1], y) for (ids, y) in data]
    layer = decoder_layers(model)[1]
    mods = {"q": layer.self_attn.q_proj, "v": layer.self_attn.v_proj, "o": layer.self_attn.o_proj,
            "up": layer.mlp.up_proj, "down": layer.mlp.down_proj}
    blocks = {k: [m.weight] for k, m in mods.items()}
    with eager_attention(model):
        ours = layer_gains(model, batches, method=method, damping=DAMPING, blocks=blocks, progress=False,
                           fisher="empirical")
        wrapped, crit = _AllLogits(model), nn.CrossEntropyLoss()
        for name, m in mods.items():
            ref = _kfac_zeta2_cl(op_cls, wrapped, crit, [m.weight], data, 1)
            assert ours[name] == pytest.approx(ref, rel=1e-4), (name, ours[name], ref)


class _AllLogits(nn.Module):
    """ids (B, T-1) -> (B, V, T-1) logits at every position (each predicts the next token)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits.permute(0, 2, 1)
