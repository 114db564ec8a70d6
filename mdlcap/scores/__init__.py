"""Layer scores (METHOD.md §1): ζ_k² = g_kᵀ(H_kk + λI)⁻¹g_k (Eq 8) with several curvature
surrogates, and LayerIF.

  registry      layer_gains (the entry point), METHODS, CURVATURES, SCORE_METHODS (scores.csv names)
  blocks        Gains (the result), resolve_blocks (which parameters form block k)
  autograd      shared plumbing: loss calls, flat vectors, mean-loss gradients, torch.distributed sums
  operators     v -> H_kk v for the Gauss–Newton matrix or the exact Hessian (matrix-free)
  cg            (preconditioned) conjugate gradient on (H + λI) x = b, true residual, Ritz values
  newton        Lemma 1 by CG: ζ², the step d*, the quadratic model m_k(d)
  fisher        the Fisher conventions: mean loss over loss tokens, true (sampled labels) or empirical
  diag_fisher   Eq 8 with the diagonal Fisher
  kfac          Eq 8 with K-FAC / EK-FAC (K-FAC-expand over loss positions); kronecker: factor eigenbases
  streaming     blocks in groups sized to a memory budget (peak memory of one group, not the model)
  influence     LayerIF with DataInf's inverse, per LoRA tensor (study.layerif fine-tunes the LoRA)
  table         scores.csv: scores_frame, load_scores
"""
