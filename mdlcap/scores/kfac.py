"""Eq 8 with H_kk ≈ K-FAC or EK-FAC (METHOD.md §1), per nn.Linear weight of the block, for the
Fisher of the mean loss over all loss tokens (scores.fisher: true Fisher by default, empirical on
request).

Convention: K-FAC-expand (Eschenhagen et al. 2023; curvlinops `KFACLinearOperator`,
kfac_approx="expand", loss_average="batch+sequence"): every loss-token position t of every
sequence is a row of the weight-sharing dimension, a_t the Linear's input there, g_t = ∂S/∂out_t
the output gradient of the token-SUM loss S of the Fisher's labels, and

    F ≈ A ⊗ G,   A = (1/P) Σ_t a_t a_tᵀ,   G = (1/M) Σ_t g_t g_tᵀ

(P = number of positions summed = M loss tokens for Hugging Face batches; the samples for a custom
loss_fn with 2-d inputs; all positions for a custom loss_fn with 3-d inputs, as curvlinops),
pooled over all batches (and processes). Eigenbasis Q_A ⊗ Q_G, and ζ² = Σ (Q_Gᵀ g Q_A)² / (ev + λ):
  kfac   ev = eigenvalues of A ⊗ G (outer product of the factors' eigenvalues)
  ekfac  the same eigenbasis, ev re-fitted to the per-sequence gradients Σ_t g_t a_tᵀ projected on
         it, squared, / M (George et al. 2018); one more pass over the batches, with the factor
         pass's label draws (so every g_t lies in G's span: see scores.kronecker's Gram path)
Parameters that are not nn.Linear weights (norms, biases) use the diagonal of the Fisher from the
batch gradient of S, squared, / M (unbiased for the true Fisher's diagonal: cross-sequence terms
vanish in expectation as the cross-token ones do; for the empirical Fisher a coarser estimate).

Deviations, with reasons:
- A and G are summed over loss-token positions only (issue 14): prompt and padding positions,
  which the loss reaches only through attention, are left out of both factors (g, the gradient,
  keeps them). curvlinops sums A over every position of the sequence; on data where every
  position carries a loss the two agree exactly (tests/test_scores_oracle.py).
- Factors accumulate in float32 for float32 models (float64 for float64 ones, `ag.acc_dtype`):
  the factors are sums of outer products of float32 activations/gradients, whose rounding already
  exceeds float32 accumulation's, and ζ² only needs eigenvalues to well below λ.
- kronfluence is not used: it computes EK-FAC influence (train × query pairs), not a
  layer-restricted Newton decrement.

Cost per batch: one forward; the true-loss backward for g (parameters of the scored blocks only);
the Fisher backward w.r.t. the Linear modules' inputs only (no weight gradients), with the factor
hooks active only there; one eigendecomposition per distinct factor (q/k/v and gate/up share A),
batched over factors of equal size, or of the n × n Gram matrix when a factor has n < dim rows
(scores.kronecker).

Public API for preconditioning (scores.newton):
    kf = kfac_factors(model, batches, blocks, fisher="true")
    kf.inverse("layers.3", v, damping)   # (K_k + λI)⁻¹ v, v flat in ag.flat order of the block's params
    kf.gradient("layers.3")              # g_k of the mean loss, same flattening
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag
from mdlcap.scores import fisher as fi
from mdlcap.scores import kronecker as kr
from mdlcap.scores.blocks import resolve_blocks
from mdlcap.scores.kronecker import Factor

SHARE_KFAC_INPUTS = True    # modules fed the same tensor (q/k/v, gate/up) share one A factor and its eigenbasis
EKFAC_CHUNK = 2 ** 24       # elements of per-sample projected gradients formed at once (EK-FAC)
__all__ = ["SHARE_KFAC_INPUTS", "KfacHooks", "KfacFactors", "kfac_factors", "gains_kfac"]


class KfacHooks:
    """Forward/backward hooks on the nn.Linear modules whose weight is scored.

    mode "factors": A_sum += Σ_t a_t a_tᵀ on recorded forwards (P counted), G_sum += Σ_t g_t g_tᵀ on
    recorded backwards, g = scale · (output gradient) at the positions `pos`.
    mode "eigen": per-sample gradients projected on the K-FAC eigenbasis, squared, summed into S.
    `record_inputs` / `record_grads` switch the hooks on for the Fisher's forward / backward only.

    Memory: G is allocated on a module's first recorded gradient; A only on a module's first own
    input (a module whose input is shared, k/v after q and up after gate, gets none and reads its
    owner's); S (weight-sized) only in mode "eigen", the one pass that uses it.
    """

    def __init__(self, linears: dict[str, nn.Linear], dtype):
        self.linears, self.dtype = linears, dtype
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self.S: dict[str, torch.Tensor] = {}
        self.P = 0.0                       # positions summed into A (per recorded forward)
        self.mode = "factors"
        self.record_inputs = self.record_grads = False
        self.pos = None                    # (B, T) bool loss positions, or None (all)
        self.scale = 1.0                   # output gradient -> gradient of the token-sum loss
        self.QA, self.QG = {}, {}
        self.alias: dict[str, str] = {}     # module -> module whose input (hence A) it shares (q/k/v, gate/up)
        self.targets: dict[int, torch.Tensor] = {}   # tensors the Fisher backward differentiates w.r.t.
        self._owner: dict[int, tuple[str, torch.Tensor]] = {}
        self._acts: dict[str, torch.Tensor] = {}
        self._counted = False
        self._order = None
        self._handles = []

    def input_factor(self, key: str) -> Factor:
        """Module `key`'s own A accumulator, allocated (empty) on first use."""
        if key not in self.A:
            m = self.linears[key]
            self.A[key] = Factor(m.in_features, self.dtype, m.weight.device)
        return self.A[key]

    def complete_factors(self) -> None:
        """Zeros for the factors never touched (a module never called), in module order, so that every
        process all-reduces the same list. Under torch.distributed the owners and aliases are first
        agreed on (a process may hold no batch, hence have seen no input)."""
        keys = list(self.linears)
        dist = ag.dist_group()
        if dist is not None and keys:
            dev = self.linears[keys[0]].weight.device
            code = torch.tensor([float(keys.index(self.alias[k]) + 2 if k in self.alias else int(k in self.A))
                                 for k in keys], dtype=torch.float64, device=dev)
            dist.all_reduce(code, op=dist.ReduceOp.MAX)      # 0 none, 1 owns its A, j+2 shares keys[j]'s
            for k, c in zip(keys, code.tolist()):
                if c >= 2:
                    self.alias.setdefault(k, keys[int(c) - 2])
                elif c == 1:
                    self.input_factor(k)
        for k in keys:
            if k not in self.alias:
                self.input_factor(k)
            if k not in self.G:
                m = self.linears[k]
                self.G[k] = Factor(m.out_features, self.dtype, m.weight.device)
        self.A = {k: self.A[k] for k in keys if k in self.A}
        self.G = {k: self.G[k] for k in keys}

    def new_forward(self, pos):
        self._owner.clear()
        self._acts.clear()
        self.targets.clear()
        self.pos = pos
        self._order = None
        self._counted = False

    def __enter__(self):
        for k, m in self.linears.items():
            self._handles.append(m.register_forward_hook(self._fwd(k)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        # drop the last forward's tensors: their graph holds this object's backward hooks from C++,
        # a cycle gc cannot see, which would keep A, G, Q and S alive after the call (streaming)
        self._owner.clear()
        self._acts.clear()
        self.targets.clear()

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, [T,] d) -> the rows at the loss positions, (P, d)."""
        if self.pos is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.pos.shape):
            return x[self.pos]
        return x.reshape(-1, x.shape[-1])

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, T', d): each sample's loss positions first (T' = the most any sample
        has), the rest zero; (B, 1, d) for 2-d x."""
        if x.dim() == 2:
            return x.unsqueeze(1)
        if self.pos is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.pos.shape):
            if self._order is None:
                t = int(self.pos.sum(1).max().item()) if self.pos.numel() else 0
                order = torch.argsort((~self.pos).to(torch.int8), dim=1, stable=True)[:, :t]
                self._order = (order, self.pos.gather(1, order).unsqueeze(-1))
            order, keep = self._order
            return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1])) * keep.to(x.dtype)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def _fwd(self, key):
        def hook(mod, inp, out):
            if not (torch.is_grad_enabled() and self.record_inputs):
                return
            src = inp[0]
            owner = self._owner.get(id(src))
            shared = SHARE_KFAC_INPUTS and owner is not None and owner[1] is src   # same input as an earlier module
            if shared:
                self.alias.setdefault(key, owner[0])
            else:
                self._owner[id(src)] = (key, src)           # keep src alive so its id is not reused
            if self.mode == "factors":
                if not shared and key not in self.alias:
                    a2 = self._rows(src.detach()).to(self.dtype)
                    self.input_factor(key).add(a2)
                    if not self._counted:                     # positions counted once per forward
                        self.P += a2.shape[0]
                        self._counted = True
            elif not shared:
                self._acts[key] = self._masked(src.detach().to(self.dtype)) @ self.QA[key]   # (B, T, in) in eigenbasis
            tgt = src if src.requires_grad else mod.weight        # what reaches this module's output cheapest
            self.targets.setdefault(id(tgt), tgt)
            if out.requires_grad:
                out.register_hook(self._bwd(key))
        return hook

    def _bwd(self, key):
        def hook(grad):
            if not self.record_grads:
                return
            d = grad.detach().to(self.dtype) * self.scale
            if self.mode == "factors":
                d2 = self._rows(d)
                if key not in self.G:
                    self.G[key] = Factor(d2.shape[-1], self.dtype, d2.device)
                self.G[key].add(d2)
            else:
                dq = self._masked(d) @ self.QG[key]                          # (B, T, out)
                a = self._acts[self.alias.get(key, key)]
                if key not in self.S:
                    self.S[key] = torch.zeros(dq.shape[-1], a.shape[-1], dtype=self.dtype, device=d.device)
                B = dq.shape[0]
                step = max(1, EKFAC_CHUNK // max(1, dq.shape[-1] * a.shape[-1]))
                for i in range(0, B, step):                                  # per-sample projected gradients
                    pg = torch.einsum("bto,bti->boi", dq[i:i + step], a[i:i + step])
                    self.S[key] += (pg * pg).sum(0)
        return hook


def _linears_by_param(model, param_ids: set[int]) -> dict[int, tuple[str, nn.Linear]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) in param_ids:
            out[id(m.weight)] = (name, m)
    return out


class KfacFactors:
    """Per-block K-FAC (or EK-FAC) curvature of the mean loss and its gradient (module docstring).

    blocks: {name: [params]}; gradient(name) -> flat g_k (ag.flat order); inverse(name, v, λ) ->
    (K_k + λI)⁻¹ v; zeta2(name, λ) -> g_kᵀ (K_k + λI)⁻¹ g_k. Kronecker entries per nn.Linear weight,
    diagonal Fisher for the other parameters."""

    def __init__(self, blocks, grads, diag, lin, eig, QA, QG, S, eigen_corrected, dtype):
        self.blocks, self._grads, self._diag, self._lin = blocks, grads, diag, lin
        self._eig, self.QA, self.QG, self.S = eig, QA, QG, S
        self.eigen_corrected, self.dtype = eigen_corrected, dtype

    def _entries(self, name):
        if name not in self.blocks:
            raise ValueError(f"block: unknown block {name!r}; have {list(self.blocks)}")
        return self.blocks[name]

    def _full(self, k) -> bool:
        return self.QA[k].shape[0] == self.QA[k].shape[1] and self.QG[k].shape[0] == self.QG[k].shape[1]

    def is_kronecker(self, p) -> bool:
        """True when p is an nn.Linear weight with Kronecker factors (else: diagonal Fisher)."""
        return id(p) in self._lin

    def eigenvalues(self, p) -> torch.Tensor:
        """The curvature's eigenvalues for parameter p: (r_G, r_A) on the Kronecker eigenbasis of an
        nn.Linear weight (r < dim when a factor's basis is partial: the rest are 0), the diagonal
        entries (shape of p) otherwise."""
        if id(p) in self._lin:
            k = self._lin[id(p)][0]
            if self.eigen_corrected:
                return self.S[k]
            ea, eg = self._eig[k]
            return torch.outer(eg, ea)                               # eigenvalues of A ⊗ G
        return self._diag[id(p)]

    def gradient(self, name) -> torch.Tensor:
        return ag.flat([self._grads[id(p)] for p in self._entries(name)], self.dtype)

    def _apply(self, name, v, damping, power):
        params = self._entries(name)
        v = v.to(self.dtype)
        if v.numel() != sum(p.numel() for p in params):
            raise ValueError(f"v: has {v.numel()} entries, block {name!r} has {sum(p.numel() for p in params)}")
        out, i = [], 0
        for p in params:
            x = v[i:i + p.numel()].view(p.shape)
            i += p.numel()
            ev = self.eigenvalues(p) + damping
            if id(p) in self._lin:
                k = self._lin[id(p)][0]
                qa, qg = self.QA[k], self.QG[k]
                if self._full(k):
                    out.append(qg @ ((qg.T @ x @ qa) * ev.pow(power)) @ qa.T)
                else:        # partial eigenbasis: the complement's eigenvalue is 0, i.e. λ here
                    out.append(x * damping ** power + qg @ ((qg.T @ x @ qa) * (ev.pow(power) - damping ** power)) @ qa.T)
            else:
                out.append(x * ev.pow(power))
        return torch.cat([o.reshape(-1) for o in out])

    def inverse(self, name, v, damping) -> torch.Tensor:
        """(K_k + λI)⁻¹ v for block `name`; v flat in ag.flat order of the block's parameters."""
        return self._apply(name, v, float(damping), -1.0)

    def matvec(self, name, v, damping=0.0) -> torch.Tensor:
        """(K_k + λI) v."""
        return self._apply(name, v, float(damping), 1.0)

    def zeta2(self, name, damping) -> float:
        """g_kᵀ (K_k + λI)⁻¹ g_k (Eq 8 with H ≈ K-FAC / EK-FAC), in the eigenbasis."""
        total = 0.0
        for p in self._entries(name):
            g = self._grads[id(p)]
            if id(p) in self._lin:
                k = self._lin[id(p)][0]
                gq = self.QG[k].T @ g @ self.QA[k]                   # gradient in the Kronecker eigenbasis
                ev = self.eigenvalues(p) + damping
                if self._full(k):
                    total += torch.sum(gq * gq / ev).item()
                else:        # partial eigenbasis (Gram path): the complement has eigenvalue 0
                    total += (torch.sum(g * g) / damping + torch.sum(gq * gq * (1.0 / ev - 1.0 / damping))).item()
                continue
            total += torch.sum(g * g / (self.eigenvalues(p) + damping)).item()
        return total


def _recorded(hooks, pos, fn):
    """fn() (a forward) with the factor hooks recording its inputs."""
    hooks.new_forward(pos)
    hooks.record_inputs = True
    try:
        return fn()
    finally:
        hooks.record_inputs = False


def _fisher_passes(model, b, loss_fn, fisher, gen, mc_samples, hooks, on_mean, backward):
    """Every Fisher forward and backward of batch b. on_mean(bl): the mean-loss work (its graph is
    retained when the draws share it); backward(loss, retain, first): one Fisher backward with the
    hooks recording (first: the draw from which an empirical Fisher also takes g)."""
    pos = fi.loss_positions(b, loss_fn)
    if loss_fn is None or fisher == "empirical":          # the draws share the mean loss's forward
        bl = _recorded(hooks, pos, lambda: fi.batch_losses(model, b, loss_fn, fisher, gen, mc_samples))
        on_mean(bl)
        for j, draw in enumerate(bl.fisher_sums):
            backward(draw(), j < len(bl.fisher_sums) - 1, j == 0)
        return bl
    bl = fi.batch_losses(model, b, loss_fn, fisher, gen, mc_samples)   # custom loss_fn, true Fisher
    on_mean(bl)
    for j, draw in enumerate(bl.fisher_sums):                          # each draw its own forward
        backward(_recorded(hooks, pos, draw), False, j == 0)
    return bl


def kfac_factors(model, batches, blocks, *, fisher: str = "true", loss_fn=None, progress: bool = False,
                 eigen_corrected: bool = False, mc_samples: int = 1, seed: int = fi.FISHER_SEED) -> KfacFactors:
    """K-FAC (eigen_corrected=False) or EK-FAC factors of the mean loss's Fisher for every block, with
    the mean-loss gradient (module docstring). blocks: as `resolve_blocks` (None, "attn_mlp",
    {name: [params] | nn.Module}); fisher "true" (labels drawn from the model, `mc_samples` draws per
    loss token, generator seeded by `seed` and each batch's content) or "empirical"."""
    fi.check_fisher(fisher, loss_fn, mc_samples)
    batches = ag.check_batches(batches)
    blocks = resolve_blocks(model, blocks)
    device = ag.model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = ag.acc_dtype(all_params)
    lin = _linears_by_param(model, {id(p) for p in all_params})
    linears = {name: m for name, m in lin.values()}
    others = [p for p in all_params if id(p) not in lin]
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    d_acc = [torch.zeros_like(p, dtype=dtype) for p in others]       # diagonal Fisher for non-Linear params
    mc = mc_samples if fisher == "true" else 1                       # draws per loss token
    hooks = KfacHooks(linears, dtype)
    pids = {id(p) for p in all_params}
    index = {id(p): i for i, p in enumerate(all_params)}
    M = 0.0

    def fisher_backward(loss, retain, first):
        with_g = fisher == "empirical" and first          # empirical: S_b = M_b · L_b gives g as well
        head = all_params if with_g else others
        have = pids if with_g else {id(p) for p in others}
        wrt = head + [t for t in hooks.targets.values() if id(t) not in have]
        hooks.record_grads = True
        try:
            gs = ag.grads(loss, wrt, retain_graph=retain)
        finally:
            hooks.record_grads = False
        sel = [gs[index[id(p)]] for p in others] if with_g else gs[:len(others)]
        for da, g in zip(d_acc, sel):
            da += g.to(dtype) ** 2
        if with_g:
            for a, g in zip(g_acc, gs):
                a += g.to(dtype) / max(cur["M"], 1)

    cur = {"M": 0}

    def on_mean(bl):
        cur["M"] = bl.n_terms
        if fisher == "true":
            for a, g in zip(g_acc, ag.grads(bl.mean, all_params, retain_graph=bl.shared_forward)):
                a += g.to(dtype)

    with ag.scoring_mode(model, all_params), hooks:
        for b in tqdm(batches, desc="kfac factors", disable=ag.progress_off(progress)):
            b = ag.to_device(b, device)
            bl = _fisher_passes(model, b, loss_fn, fisher, fi.batch_generator(b, device, seed), mc_samples, hooks,
                                on_mean, fisher_backward)
            M += bl.n_terms
        n = ag.global_count(len(batches), device)
        hooks.complete_factors()
        counts = torch.tensor([M, hooks.P], dtype=torch.float64, device=device)
        dense = [f.fold() for f in list(hooks.A.values()) + list(hooks.G.values())] if ag.dist_group() else []
        ag.allreduce_(g_acc + d_acc + dense + [counts])
        M_tot, P_tot = max(counts[0].item(), 1.0), max(counts[1].item(), 1.0)
        a_eig = kr.eigh_batched(hooks.A, 1.0 / P_tot)              # one eigendecomposition per distinct input
        g_eig = kr.eigh_batched(hooks.G, 1.0 / (M_tot * mc))
        eig = {}
        for k in linears:
            ea, qa = a_eig[hooks.alias.get(k, k)]
            eg, qg = g_eig[k]
            eig[k] = (ea, eg)
            hooks.QA[k], hooks.QG[k] = qa, qg
        S = {}
        if eigen_corrected:                      # second pass: re-fit eigenvalues to per-sequence gradients
            hooks.mode = "eigen"

            def eigen_backward(loss, retain, first):
                hooks.record_grads = True
                try:
                    torch.autograd.grad(loss, list(hooks.targets.values()), allow_unused=True, retain_graph=retain)
                finally:
                    hooks.record_grads = False

            for b in tqdm(batches, desc="ekfac eigenvalues", disable=ag.progress_off(progress)):
                b = ag.to_device(b, device)
                _fisher_passes(model, b, loss_fn, fisher, fi.batch_generator(b, device, seed), mc_samples,
                               hooks, lambda bl: None, eigen_backward)
            for k in linears:
                if k not in hooks.S:
                    hooks.S[k] = torch.zeros(hooks.QG[k].shape[1], hooks.QA[k].shape[1], dtype=dtype, device=device)
            S = {k: hooks.S[k] for k in linears}
            ag.allreduce_(list(S.values()))
            for v in S.values():
                v /= M_tot * mc
    grads = {id(p): a / n for p, a in zip(all_params, g_acc)}
    diag = {id(p): d / (M_tot * mc) for p, d in zip(others, d_acc)}
    return KfacFactors(blocks, grads, diag, lin, eig, hooks.QA, hooks.QG, S, eigen_corrected, dtype)


def gains_kfac(model, batches, blocks, *, damping, loss_fn, progress, eigen_corrected, fisher="true",
               mc_samples=1, seed=fi.FISHER_SEED):
    """(gains, diagnostics) of Eq 8 with K-FAC (eigen_corrected=False) or EK-FAC curvature."""
    kf = kfac_factors(model, batches, blocks, fisher=fisher, loss_fn=loss_fn, progress=progress,
                      eigen_corrected=eigen_corrected, mc_samples=mc_samples, seed=seed)
    gains, diags = {}, {}
    for name, params in kf.blocks.items():
        gains[name] = kf.zeta2(name, damping)
        n_kfac = sum(p.numel() for p in params if kf.is_kronecker(p))
        diags[name] = {"damping_used": damping, "n_params_kronecker": n_kfac,
                       "n_params_diagonal": sum(p.numel() for p in params) - n_kfac,
                       "eigen_corrected": eigen_corrected, "fisher": fisher, "mc_samples": mc_samples}
    return gains, diags
