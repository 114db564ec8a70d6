"""Layer scores (METHOD.md §1): ζ_k² = g_kᵀ(H_kk + λI)⁻¹g_k (Eq 8) with several curvature
surrogates, and LayerIF.

  registry      layer_gains (the entry point), METHODS, CURVATURES, SCORE_METHODS (scores.csv names)
  blocks        Gains (the result), resolve_blocks (which parameters form block k)
  autograd      shared plumbing: loss calls, flat vectors, mean-loss gradients, torch.distributed sums
  operators     v -> H_kk v for the Gauss–Newton matrix or the exact Hessian (matrix-free)
  cg            conjugate gradient on (H + λI) x = b, Ritz values
  newton        Lemma 1 by CG: ζ², the step d*, the quadratic model m_k(d)
  diag_fisher   Eq 8 with the diagonal empirical Fisher
  kfac          Eq 8 with K-FAC / EK-FAC
  influence     LayerIF with DataInf's inverse
  table         scores.csv: scores_frame, load_scores
"""
