"""Layer-wise pruning of a Hugging Face decoder (paper §3.1, §3.3; METHOD.md §3: Algorithm 2's
ratios applied under magnitude, Wanda and SparseGPT). One concept per module:

    layers       which linears are pruned (q/k/v/o/gate/up/down), layer sizes N_k, measured and
                 global sparsity, `restore_weights` (snapshot and put back the dense weights)
    masks        magnitude, the Wanda metric/mask, exact-count and per-row selection, n:m (2:4)
    sparsegpt    SparseGPT on one matrix (OBS with reconstruction, lazy block updates)
    calibration  `capture_layer_inputs` + `layerwise`: the one layer-by-layer calibration loop
    pruners      PRUNERS and `prune_model` (one ratio per decoder layer)
    ratios       RATIO_METHODS: uniform, OWL (+ `outlier_ratios`), LayerIF/AlphaPruning, MDL

* **Pruners** take one sparsity ratio per decoder layer and prune that layer's linear modules:
    - magnitude (Han et al. 2015): smallest |W| per weight matrix;
    - Wanda (Sun et al. 2023): smallest |W_ij|·‖X_j‖₂, compared within each output row i;
    - SparseGPT (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with reconstruction,
      H = 2XXᵀ + damping, upper Cholesky factor of H⁻¹, column blocks with lazy updates.
  Each optionally with an n:m semi-structured pattern (2:4).
  Calibration runs layer by layer (`prune_model`): the inputs of decoder layer 0 are captured
  with the model's own embedding/rotary/mask code (a pre-hook records exactly the positional
  and keyword arguments the layer receives), then each layer is pruned from statistics of its
  inputs and re-run to give the next layer its (pruned) inputs. Only one layer's activations
  live in memory at a time, so a 7B model prunes on one GPU.

* **Ratio methods** turn per-layer scores into ratios with the same parameter-weighted global
  target s: uniform; OWL (Yin et al. 2024); the LayerIF/AlphaPruning min–max mapping; MDL
  (Algorithm 2 through `mdlcap.theory.pruning.prune`).

Why not a library: llm-compressor (vLLM project) has SparseGPT/Wanda modifiers and an OWL
profile, but it pins its own transformers/torch/compressed-tensors ranges (our stack is
transformers 5 / torch 2.13), its one-shot pipeline traces the model and owns the calibration
loop, it has no one-shot magnitude pruner in that pipeline, and passing our own per-layer
ratios and checking the exact per-layer sparsity is not its API's purpose. torchao's
WandaSparsifier has no SparseGPT and no per-layer ratios. The three pruners are ~200 lines here,
written from the papers, and tested (tests/test_pruning.py).
"""
from mdlcap.interventions.pruning.calibration import (  # noqa: F401
    InputStats, LayerInputs, capture_layer_inputs, layer_forward, layer_types, layerwise)
from mdlcap.interventions.pruning.layers import (  # noqa: F401
    PRUNABLE, global_sparsity, layer_sizes, measured_sparsity, prunable_linears, restore_weights)
from mdlcap.interventions.pruning.masks import (  # noqa: F401
    magnitude_mask, nm_mask, wanda_mask, wanda_metric)
from mdlcap.interventions.pruning.pruners import PRUNERS, prune_model  # noqa: F401
from mdlcap.interventions.pruning.ratios import (  # noqa: F401
    LAYERIF_CAP, RATIO_METHODS, layerif_ratios, mdl_ratios, outlier_ratios, owl_ratios, scale_to_target,
    uniform_ratios)
from mdlcap.interventions.pruning.sparsegpt import sparsegpt_prune_  # noqa: F401
