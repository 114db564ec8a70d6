"""mdlcap: curvature-weighted, MDL-based layer-wise capacity allocation and pruning.

The package's folders are the paper's parts; METHOD.md (repository root) states the method, and
its section numbers (§1-§7) are the ones docstrings cite. Layers, each importing only from the
ones before it (tests/test_repo.py checks this, and that the import graph has no cycle):

  files, cache -> theory -> default -> models -> evaluation -> scores -> interventions -> study

files.py        atomic writes, hashing, the repository root
cache.py        the one cache: `cached` / `cached_dir`, one root, one version table (CODE_VERSIONS)

theory/         the mathematics, numpy/scipy/numba/cvxpy only (no torch)
  allocation      the allocation program: Eq 11-13, Theorem 2, Algorithm 1 (METHOD.md §2)
  pruning         the pruning program: Eq 14-15, Theorem 3, Algorithm 2 (METHOD.md §3)
  programs        both programs' public API (scores_from_gains Eq 10, allocate, prune, KKT checks)
  bisection       the multisection of Algorithms 1-2, vectorised
  breakpoints     exact solvers by sorted breakpoints (numba kernels)
  validate        argument checks the programs share
  reference       the same programs in cvxpy: the independent check
  lemma1          Lemma 1 and Appendix C on explicit curvature blocks (Eq 7-8, METHOD.md §1)
  objectives      the two programs as objects for Theorem 4
  transfer        transfer regret and its Theorem-4 bound (METHOD.md §4)
  instances       random program instances steered toward chosen regimes

default/        the embedded default: the model everybody uses and the generated stand-in data
  corpus, texts   the pretraining corpus and its calibration / held-out passages
  tasks/          one generator per stand-in task (finetune, zeroshot, world) and their registry
  data            the public data API (generated splits or hub data), batches, jsonl, hub
  lm_eval_tasks   the lm-eval task files of the generated data
  pretrain        the tokenizer and the small MistralForCausalLM, pretrained through the cache

models.py       the default or a from_pretrained model, decoder layers, model fingerprints
evaluation.py   task accuracy through lm-eval on an in-memory model, perplexity

scores/         per-layer gains ζ_k² = g_kᵀ(H_kk + λI)⁻¹g_k (Eq 8, Lemma 1, METHOD.md §1)
  registry        SCORE_METHODS, the one list of scoring methods, and `layer_gains`
  autograd, blocks, operators, cg, newton   plumbing, blocks, H_kk v operators (Eq 7), CG, the Newton step
  diag_fisher, kfac                         the diagonal-Fisher and (E)K-FAC estimators of H_kk
  influence       LayerIF (DataInf closed form)
  table           scores.csv, the contract between notebook 02 and notebooks 03-05

interventions/  what the scores are used for
  allocation      expert counts per layer: METHODS (baselines and Algorithm 1 on every score)
  moe, finetune   the LoRA mixture of experts (Eq 2) and its fine-tuning through accelerate
  pruning/        PRUNERS (magnitude, Wanda, SparseGPT), RATIO_METHODS (uniform, OWL, LayerIF, MDL
                  by Eq 14 / Algorithm 2), masks, layer-by-layer calibration
  precision/      curvature-guided bit allocation, CAQ (METHOD.md §5): quantise, train, stats,
                  measure, solve, data, analysis

study/          the executable paper: one driver module per notebook and the run machinery
  prepare (00), derivations and solver_speed (01), curvature_scores, validation and measure (02),
  allocation and stats (03), pruning and pruning_ratios (04), transfer_regret and
  transfer_downstream (05), precision (06): every table a notebook shows
  params          params/*.yaml schema and loader; method names checked against the registries
  run             a notebook run: pinned threads and seeds, tables, figures, manifest
  pipeline        the notebook graph and content-hash staleness behind `make all`
  check_results   `make check-results`: regenerated tables against the committed ones
  paper           every number the paper states and every verdict threshold
  claims, report  the paper's claims checked on a run; `make report`
  launch          multi-GPU entry point that fills notebook 03's fine-tuning cells

Stable import paths for users (re-exports only): mdlcap.programs, mdlcap.curvature,
mdlcap.transfer, mdlcap.pruning, mdlcap.params.
"""

__version__ = "0.1.0"
