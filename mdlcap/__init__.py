"""mdlcap: curvature-weighted, MDL-based layer-wise capacity allocation and pruning.

Modules (each small, named for what it holds):
  programs    the allocation (Thm 2) and pruning (Thm 3) programs in closed form
  reference   the same programs in cvxpy (test oracle)
  transfer    transfer regret and its Theorem-4 bound
  curvature   per-layer gains zeta^2 (CG on GGN/Hessian, diagonal Fisher, K-FAC, grad norm)
  influence   LayerIF influence scores (DataInf closed form)
  models      the embedded default model and from_pretrained loading
  data        generated stand-in tasks and lm-eval task files
  evaluation  lm-eval harness glue
  moe         LoRA mixture-of-experts adapter and rank allocation
  pruning     magnitude / Wanda / SparseGPT, layer by layer
  precision   curvature-guided bit allocation (CAQ)
  params      params/*.yaml schema and loader
  run         a notebook run: output folder, tables, figures, manifest
  io          atomic writes and cache keys
"""

__version__ = "0.1.0"
