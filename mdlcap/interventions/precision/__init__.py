"""Curvature-guided bit allocation (CAQ, METHOD.md §5) on small image classifiers.

  data      image data sets (scikit-learn digits by default; MNIST, CIFAR-10 binary, SVHN from a path)
  quantize  fake quantisation and the quantisable networks (MLP-2, MLP-4, a small CNN)
  train     float32 training, weights cached (namespace "precision")
  stats     per-layer κ, L, diam(Ω), FLOPs and the baselines' sensitivities
  measure   accuracy and output error of a bit allocation, per-layer contributions, bits needed
  solve     the allocation programs, solved exactly, and the proposal's relaxation
  analysis  the tables and figures of notebook 06
The per-(model, seed) study and the verdict are notebook 06's drivers, `mdlcap.study.precision`.
"""
