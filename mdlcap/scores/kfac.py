"""Eq 8 with H_kk ≈ K-FAC or EK-FAC (METHOD.md §1), per nn.Linear weight of the block:
Kronecker factors A = E[a aᵀ] (layer inputs) and G = E[δ δᵀ] (per-sample output gradients), so
H ≈ A ⊗ G with eigenbasis Q_A ⊗ Q_G, and ζ² = Σ (Q_Gᵀ g Q_A)² / (eigenvalue + λ).
  kfac   eigenvalues of A ⊗ G (outer product of the factors' eigenvalues)
  ekfac  the same eigenbasis, eigenvalues re-fitted to the per-sample gradients projected on it
         (George et al. 2018); one more pass over the batches
Parameters that are not nn.Linear weights (norms, biases) use a diagonal Fisher estimate.

Why not a library: kronfluence computes EK-FAC influence (train × query pairs), not a
layer-restricted Newton decrement, and is not installed here; the hooks below are the whole method.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from mdlcap.scores import autograd as ag

SHARE_KFAC_INPUTS = True    # modules fed the same tensor (q/k/v, gate/up) share one A factor and its eigenbasis


class KfacHooks:
    """Forward/backward hooks on the nn.Linear modules whose weight is scored.

    Pass "factors": A += mean_t a aᵀ per batch, G += Σ_i s_i² Σ_{t∈i} δ_t δ_tᵀ / B (δ = ∂L_batch/∂out,
    s_i = per-sample rescaling so that s_i δ is the gradient of sample i's own loss).
    Pass "eigen": per-sample gradients projected on the K-FAC eigenbasis, squared and summed.

    Memory: G is allocated for every module up front; A only on a module's first own input (a
    module whose input is shared, k/v after q and up after gate, gets none and reads its owner's);
    S (weight-sized) only with eigen_corrected, the one pass that uses it.
    """

    def __init__(self, linears: dict[str, nn.Linear], dtype, eigen_corrected: bool = True):
        self.linears, self.dtype = linears, dtype
        self.A: dict[str, torch.Tensor] = {}
        self.G = {k: torch.zeros(m.out_features, m.out_features, dtype=dtype, device=m.weight.device) for k, m in linears.items()}
        self.S = ({k: torch.zeros(m.out_features, m.in_features, dtype=dtype, device=m.weight.device)
                   for k, m in linears.items()} if eigen_corrected else {})
        self.mode = "factors"
        self.scale = None          # (B,) per-sample rescaling of δ
        self.QA, self.QG = {}, {}
        self.alias: dict[str, str] = {}     # module -> module whose input (hence A) it shares (q/k/v, gate/up)
        self._owner: dict[int, tuple[str, torch.Tensor]] = {}
        self._acts: dict[str, torch.Tensor] = {}
        self._handles = []

    def input_factor(self, key: str) -> torch.Tensor:
        """Module `key`'s own A accumulator, allocated (zeros) on first use."""
        if key not in self.A:
            m = self.linears[key]
            self.A[key] = torch.zeros(m.in_features, m.in_features, dtype=self.dtype, device=m.weight.device)
        return self.A[key]

    def complete_input_factors(self) -> None:
        """Zeros for the modules that own their input but saw none (never called), in module order,
        so that every process all-reduces the same list. Under torch.distributed the owners and
        aliases are first agreed on (a process may hold no batch, hence have seen no input)."""
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
        self.A = {k: self.A[k] for k in keys if k in self.A}

    def new_batch(self):
        self._owner.clear()

    def __enter__(self):
        for k, m in self.linears.items():
            self._handles.append(m.register_forward_hook(self._fwd(k)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _fwd(self, key):
        def hook(mod, inp, out):
            if not torch.is_grad_enabled():
                return
            src = inp[0]
            a = src.detach().to(self.dtype)
            if self.mode == "factors":
                owner = self._owner.get(id(src))
                if SHARE_KFAC_INPUTS and owner is not None and owner[1] is src:   # same input as an earlier module
                    self.alias.setdefault(key, owner[0])
                elif key not in self.alias:
                    self._owner[id(src)] = (key, src)           # keep src alive so its id is not reused
                    a2 = a.reshape(-1, a.shape[-1])
                    self.input_factor(key).add_(a2.T @ a2 / a2.shape[0])
            else:
                self._acts[key] = a @ self.QA[key]                          # (B, T, in) in eigenbasis
            if out.requires_grad:
                out.register_hook(self._bwd(key))
        return hook

    def _bwd(self, key):
        def hook(grad):
            d = grad.detach().to(self.dtype)
            B = d.shape[0]
            s = self.scale if self.scale is not None else torch.full((B,), float(B), dtype=self.dtype, device=d.device)
            d = d * s.view(-1, *([1] * (d.dim() - 1)))                       # per-sample loss gradients
            if self.mode == "factors":
                d2 = d.reshape(-1, d.shape[-1])
                self.G[key] += d2.T @ d2 / B
            else:
                dq = d @ self.QG[key]                                       # (B, T, out)
                a = self._acts.pop(key)
                pg = torch.einsum("bto,bti->boi", dq.reshape(B, -1, dq.shape[-1]), a.reshape(B, -1, a.shape[-1]))
                self.S[key] += (pg * pg).sum(0)
        return hook


def _linears_by_param(model, param_ids: set[int]) -> dict[int, tuple[str, nn.Linear]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) in param_ids:
            out[id(m.weight)] = (name, m)
    return out


def gains_kfac(model, batches, blocks, *, damping, loss_fn, progress, eigen_corrected):
    """(gains, diagnostics) of Eq 8 with K-FAC (eigen_corrected=False) or EK-FAC curvature."""
    device = ag.model_device(model)
    all_params = [p for ps in blocks.values() for p in ps]
    dtype = ag.acc_dtype(all_params)
    lin = _linears_by_param(model, {id(p) for p in all_params})
    linears = {name: m for name, m in lin.values()}
    g_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]
    d_acc = [torch.zeros_like(p, dtype=dtype) for p in all_params]     # diagonal Fisher for non-Linear params
    hooks = KfacHooks(linears, dtype, eigen_corrected)
    n_samples = 0
    with ag.scoring_mode(model, all_params), hooks:
        for b in tqdm(batches, desc="kfac factors", disable=ag.progress_off(progress)):
            b = ag.to_device(b, device)
            w = ag.sample_weights(b, loss_fn)
            hooks.new_batch()
            loss, _ = ag.call_loss(model, b, loss_fn)
            B = ag.batch_size_of(b)
            hooks.scale = (1.0 / w).to(dtype).nan_to_num(posinf=0.0).to(device) if w is not None else None
            gs = ag.grads(loss, all_params)
            for a, da, g in zip(g_acc, d_acc, gs):
                a += g.to(dtype)
                da += B * g.to(dtype) ** 2          # per-batch estimate of E_i[g_i²] (≈ B·g_b²)
            n_samples += B
        n = ag.global_count(len(batches), device)
        hooks.complete_input_factors()
        ag.allreduce_(g_acc + d_acc + list(hooks.A.values()) + list(hooks.G.values()))
        hooks.new_batch()
        eig, a_eig = {}, {}
        for k in linears:
            owner = hooks.alias.get(k, k)
            if owner not in a_eig:                       # one eigendecomposition per distinct input
                ea, qa = torch.linalg.eigh(hooks.A[owner] / n)
                a_eig[owner] = (ea.clamp_min(0), qa)
            ea, qa = a_eig[owner]
            eg, qg = torch.linalg.eigh(hooks.G[k] / n)
            eig[k] = (ea, eg.clamp_min(0))
            hooks.QA[k], hooks.QG[k] = qa, qg
        if eigen_corrected:                      # second pass: re-fit eigenvalues to per-sample grads
            hooks.mode = "eigen"
            for b in tqdm(batches, desc="ekfac eigenvalues", disable=ag.progress_off(progress)):
                b = ag.to_device(b, device)
                w = ag.sample_weights(b, loss_fn)
                hooks.scale = (1.0 / w).to(dtype).nan_to_num(posinf=0.0).to(device) if w is not None else None
                loss, _ = ag.call_loss(model, b, loss_fn)
                torch.autograd.grad(loss, all_params, allow_unused=True)
            ag.allreduce_(list(hooks.S.values()))
    ns = ag.global_count(n_samples, device)
    gains, diags, i = {}, {}, 0
    for name, params in blocks.items():
        total, n_kfac, n_diag = 0.0, 0, 0
        for p in params:
            g = g_acc[i] / n
            if id(p) in lin:
                k = lin[id(p)][0]
                gq = hooks.QG[k].T @ g @ hooks.QA[k]                   # gradient in the Kronecker eigenbasis
                if eigen_corrected:
                    ev = hooks.S[k] / ns
                else:
                    ea, eg = eig[k]
                    ev = torch.outer(eg, ea)                           # eigenvalues of A ⊗ G
                total += torch.sum(gq * gq / (ev + damping)).item()   # Eq 8 with H ≈ (EK-)K-FAC
                n_kfac += p.numel()
            else:
                f = d_acc[i] / n
                total += torch.sum(g * g / (f + damping)).item()
                n_diag += p.numel()
            i += 1
        gains[name] = total
        diags[name] = {"damping_used": damping, "n_params_kronecker": n_kfac, "n_params_diagonal": n_diag,
                       "eigen_corrected": eigen_corrected}
    return gains, diags
