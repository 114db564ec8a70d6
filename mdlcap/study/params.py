"""params/*.yaml: one file per model/run, validated against the schema below.

Each section is a dataclass; the loader rejects unknown keys, wrong types and missing
required values with a message naming the key and the file. Every notebook takes
`params_path` as its papermill parameter and calls `mdlcap.study.run.start(params_path, ...)`,
which loads the file through `load()`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mdlcap.study import params_notebook07
from mdlcap.study.params_notebook07 import JointParams, PsiParams
from mdlcap.study import params_notebook08
from mdlcap.study.params_notebook08 import OnlineParams


class ParamsError(ValueError):
    """A params file broke the schema; the message names the file and the key."""


# --------------------------------------------------------------------------- sections
@dataclass
class RunParams:
    name: str = ""                      # results/<name>/; defaults to the file's stem
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    smoke: bool = False                 # CI size: notebooks shrink loops and skip figures' extras
    threads: int = 1                    # torch / BLAS / OpenMP / numba threads (mdlcap.study.run.start): the
                                        # numbers depend on it (float reduction order), the core count must not
    workers: int = 1                    # CPU processes for independent cells (mdlcap.study.cells); results
                                        # do not depend on it (each cell runs alone on one thread)


@dataclass
class ArchitectureParams:
    """Shape of the embedded default model (a small MistralForCausalLM)."""
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256


@dataclass
class PretrainParams:
    """Recipe of the embedded default's pretraining (mdlcap.default.pretrain); part of its cache key."""
    steps: int = 450
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.1
    init_std: float | None = None       # std of the initial weights (None: transformers' 0.02, tuned for
                                        # widths of ~2,500; 1/sqrt(hidden_size) is the fan-in scale)
    threads: int = 1                    # torch threads of the pretraining loop alone (float reduction
                                        # order: a different count is a different model, so it is in the key)


@dataclass
class ModelParams:
    name_or_path: str = "default"       # "default": build the embedded model; else hub id or local dir
    revision: str | None = None
    trust_remote_code: bool = False     # only a params file may opt in
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    architecture: ArchitectureParams = field(default_factory=ArchitectureParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)


@dataclass
class DataParams:
    source: Literal["generated", "hub"] = "generated"
    seed: int = 0
    finetune_tasks: list[str] = field(default_factory=lambda: ["cola", "mrpc", "csqa", "obqa", "sciq"])
    zeroshot_tasks: list[str] = field(default_factory=lambda: [
        "rte", "openbookqa", "arc_easy", "arc_challenge", "hellaswag", "boolq", "winogrande"])
    n_train: int = 512
    n_validation: int = 128
    n_test: int = 256
    n_calibration: int = 64              # calibration sequences (C4 stand-in)
    calibration_seq_len: int = 128
    n_heldout: int = 64                  # held-out sequences for perplexity
    n_zeroshot_test: int | None = None   # test items per generated zero-shot task (None: n_test); notebook 04's
    #                                      seven-task mean needs >= 358 for a binomial s.e. <= 1 point at p = 0.5
    zeroshot_limit: int | None = None    # lm-eval `limit` per task


@dataclass
class ScoringParams:
    """Notebook 02: layer gains ζ² (mdlcap.scores.registry) and LayerIF (mdlcap.scores.influence)."""
    methods: list[str] = field(default_factory=lambda: list(registries()["scoring"]))   # every estimator
    damping: float = 1e-3                # λ in H_kk + λI (Eq 7)
    cg_max_iter: int = 50                # CG iterations per block and λ (each one curvature-vector product)
    cg_tol: float = 1e-3                 # CG stops at relative residual <= cg_tol; a solve above the verdict
    #                                      threshold paper.THRESHOLDS["cg_rel_residual"] is flagged unconverged
    cg_preconditioner: Literal["none", "diag", "kfac"] = "none"   # PCG's M (mdlcap.scores.newton.gains_cg)
    cg_damping_policy: Literal["fixed", "smallest_converged"] = "fixed"   # see study.cg_solves
    hessian_tasks: list[str] | None = None   # tasks scored by cg_hessian (None = all; it is the costliest)
    n_batches: int = 4                   # batches per task (gradient and curvature of their mean loss)
    batch_size: int = 8
    max_len: int = 128                   # tokens per example / calibration window
    blocks: Literal["layer", "attn_mlp"] = "layer"
    group_size: int | None = None        # blocks scored per streaming group (layer_gains): None = all at once;
    #                                      1 keeps peak memory at one block's (7B), each group its own passes
    layerif_train: int = 64              # training samples whose influence LayerIF sums
    layerif_val: int = 32                # validation samples for the validation-loss gradient
    layerif_damping_scale: float = 0.1   # DataInf: λ_t = c · mean_j ‖g_j,t‖² / d_t per LoRA tensor t
    layerif_lora_steps: int = 100        # AdamW steps of the LoRA LayerIF differentiates (mdlcap.study.layerif)
    layerif_lora_lr: float = 3e-4        # its learning rate (DataInf's)
    validation_task: str | None = None   # task of the λ sensitivity and Appendix C (None = first fine-tune task)
    validation_tasks: list[str] | None = None   # tasks of the ζ² validation (study.validation; None = all fine-tune tasks)
    validation_blocks: Literal["layer", "attn_mlp"] = "attn_mlp"   # its blocks (≥ 16 per task: attention and MLP)
    validation_methods: list[str] | None = None   # its methods (None = the ζ² surrogates and grad_norm of `methods`)
    validation_steps: int = 10           # Adam steps when fine-tuning one layer alone
    validation_lr: float = 1e-3
    lambda_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    appendix_c_layers: int = 2           # layers (largest and smallest ζ²) in the λ sweep
    appendix_c_iter: int = 20            # CG iterations per λ in the sweep


@dataclass
class AllocationParams:
    """Notebook 03: LoRA-MoE expert counts (and LoRA ranks) per layer, fine-tuned per task."""
    total_experts: int = 20              # paper: 160 over 32 layers (5 per layer)
    alpha: float = 1.0                   # Algorithm 1 (paper Table 3); see mdlcap.interventions.allocation
    beta: float = 0.9
    gamma: float = 0.5
    budget_scaling: float = 0.0276       # cost of one expert in "standard layers" (Mistral 0.0276)
    n_min: int = 1
    methods: list[str] = field(default_factory=lambda: [
        "uniform", "mola", "layerif_all", "mdl_layerif_all", "layerif_pos", "mdl_layerif_pos", "mdl_cg_ggn"])
    alphalora_exponent: float = 2.5      # AlphaLoRA's power on the layer PL-alpha
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tasks: list[str] | None = None       # subset of data.finetune_tasks to fine-tune on (None: all)
    epochs: int = 1
    task_epochs: dict[str, int] = field(default_factory=dict)   # per-task override of `epochs` (tasks learn at
    #                                    different speeds: each is trained to its own held-out plateau)
    lr: float = 2e-4
    warmup_ratio: float = 0.0            # linear warm-up over this share of the steps, then linear decay
    lora_r: int = 8
    lora_alpha: int = 16
    top_k: int = 2                       # router top-k where a layer has > 1 expert (MoLA)
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    aux_loss_coef: float = 0.01          # load-balancing loss weight (Switch/MoLA style)
    batch_size: int = 16
    max_len: int = 128                   # tokens per example (query + answer)
    max_train: int | None = None         # cap on training examples per task
    eval_limit: int | None = None        # lm-eval `limit` on each task's test split
    validation_items: int = 64           # held-out loss along training on the first items of the validation split
    validation_every: int = 16           # ... every this many steps (and before the first); 0: not tracked
    rank_experiment: bool = True         # also LoRA ranks per layer (Algorithm 1, capacity = rank)
    rank_methods: list[str] = field(default_factory=lambda: ["uniform", "mdl_cg_ggn", "mdl_layerif_pos"])


@dataclass
class PruningParams:
    target: float = 0.5
    bits: float = 16.0
    lam: float = 2.0
    gamma: float = 1.0
    rho_max: float = 0.51
    pruners: list[str] = field(default_factory=lambda: list(registries()["pruners"]))
    sweep: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    layerif_epsilon: float = 0.3         # LayerIF/AlphaPruning ratio band [1-ε, 1+ε] (both references' default)
    score_methods: list[str] = field(default_factory=lambda: ["layerif_all", "layerif_pos", "cg_ggn"])
    score_tasks: list[str] = field(default_factory=list)   # [] = every task in scores.csv (ratios, figure)
    table_score_tasks: list[str] = field(default_factory=list)  # score sources evaluated in the table ([] = all)
    table_methods: list[str] = field(default_factory=lambda: list(registries()["ratios"]))
    sweep_methods: list[str] = field(default_factory=lambda: list(registries()["ratios"]))
    sweep_pruner: str = "wanda"
    nm_pruners: list[str] = field(default_factory=lambda: list(registries()["pruners"]))  # 2:4 rows
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    sparsegpt_damp: float = 0.01
    sparsegpt_blocksize: int = 128
    calibration_sequences: int | None = None   # calibration sequences used for pruning (None: all)
    eval_limit: int | None = None              # lm-eval limit per task for pruned models (None: data.zeroshot_limit)
    zeroshot_methods: list[str] = field(default_factory=lambda: list(registries()["ratios"]))  # table rows scored
    #                                          on zero-shot too ("<m>@mdl" when m and mdl are listed); others: perplexity
    zeroshot_score_methods: list[str] = field(default_factory=list)   # their score methods ([] = all)


@dataclass
class TransferParams:
    """Notebook 05 (Theorem 4): synthetic drift instances and real task-to-task drift."""
    n_instances: int = 2000              # random instances per program in the violation count
    deltas: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    K: int = 32                          # layers of the synthetic instances
    n_sweep: int = 3                     # instances per regime in the regret-vs-δ sweep
    n_max: Literal["solutions", "bracket"] = "solutions"   # allocation box for μ (see mdlcap.theory.transfer)
    methods: list[str] = field(default_factory=lambda: ["cg_ggn", "layerif_all"])  # scores.csv methods
    adversarial_steps: int = 1000        # hill-climbing moves per start in the counterexample search
    downstream_pairs: int = 2            # task pairs fine-tuned with transferred vs native experts (0: skip)
    downstream_method: str = "mdl_cg_ggn"  # allocation method of notebook 03 used for both allocations


@dataclass
class PrecisionParams:
    dataset: str = "digits"              # digits (ships with scikit-learn) | mnist | fashion_mnist | cifar10 | svhn
    data_path: str | None = None         # local folder with the standard files of a larger data set
    models: list[str] = field(default_factory=lambda: ["mlp2", "mlp4", "cnn"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    max_train: int | None = None         # cap on training images (large local data sets on CPU)
    n_probes: int = 16                   # Rademacher probes per batch for κ and the HAWQ trace
    n_batches: int = 4                   # calibration batches for κ (proposal: 5-10)
    power_iters: int = 50                # power iterations for L_i (proposal: 50)
    bit_choices: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    n_random: int = 100
    n_eps: int = 12                      # ε_target sweep: n_eps values, log-spaced ...
    eps_rel_range: list[float] = field(default_factory=lambda: [1e-3, 3.0])   # ... × median ‖F(x)‖
    avg_bits_targets: list[float] = field(default_factory=lambda: [4, 5, 6, 7, 8, 10, 12, 16])
    quantize_activations: bool = True    # the proposal quantises layer inputs at p_i too
    eps0: float = 0.0                    # input error ε_0 of the composition (inputs kept exact)
    mdl_alpha: float = 0.01              # §2 program for the MDL bits baseline (capacity = bits)
    mdl_beta: float = 1.0
    mdl_gamma: float = 0.5
    kappa_factor: float = 2.0            # robustness ablation: κ off by this factor
    alt_bit_choices: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 8, 16, 32])  # finer grid ablation ([] = skip)


@dataclass
class Params:
    run: RunParams = field(default_factory=RunParams)
    model: ModelParams = field(default_factory=ModelParams)
    data: DataParams = field(default_factory=DataParams)
    scoring: ScoringParams = field(default_factory=ScoringParams)
    allocation: AllocationParams = field(default_factory=AllocationParams)
    pruning: PruningParams = field(default_factory=PruningParams)
    transfer: TransferParams = field(default_factory=TransferParams)
    precision: PrecisionParams = field(default_factory=PrecisionParams)
    joint: JointParams = field(default_factory=JointParams)
    psi: PsiParams = field(default_factory=PsiParams)
    online: OnlineParams = field(default_factory=OnlineParams)
    source: str = ""                     # the file this came from (set by load)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_default_model(self) -> bool:
        return self.model.name_or_path == "default"


# --------------------------------------------------------------------------- method names
def registries() -> dict[str, tuple[str, ...]]:
    """The method names a params file may use, read from their registries (imported on call:
    they load torch). One source per list: a method added to a registry is valid here."""
    from mdlcap.interventions.allocation import METHODS as ALLOCATION_METHODS
    from mdlcap.interventions.pruning import PRUNERS, RATIO_METHODS
    from mdlcap.scores.registry import SCORE_METHODS
    return {"scoring": tuple(SCORE_METHODS), "pruners": tuple(PRUNERS), "ratios": tuple(RATIO_METHODS),
            "allocation": tuple(ALLOCATION_METHODS)}


# --------------------------------------------------------------------------- loader
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, src: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = lambda: ParamsError(f"{src}: key '{where}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")  # noqa: E731
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, src)
            except ParamsError:
                pass
        raise bad()
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{src}: key '{where}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        return [_coerce(v, args[0], f"{where}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return {str(k): _coerce(v, args[1], f"{where}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, where, src)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp is Any:
        return value
    raise ParamsError(f"{src}: key '{where}': unsupported schema type {tp}")


def _build(cls: type, raw: dict, prefix: str, src: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ParamsError(f"{src}: unknown key '{key}' (allowed here: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                key = f"{prefix}.{f.name}" if prefix else f.name
                raise ParamsError(f"{src}: missing required key '{key}'")
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        kwargs[f.name] = _coerce(raw[f.name], hints[f.name], key, src)
    return cls(**kwargs)


def from_dict(raw: dict, source: str = "<dict>") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    if "source" in raw:
        raise ParamsError(f"{source}: unknown key 'source' (reserved)")
    p = _build(Params, raw, "", source)
    p.source = source
    if not p.run.name:
        p.run.name = Path(source).stem if source != "<dict>" else "run"
    params_notebook07.resolve(p)
    params_notebook08.resolve(p)
    _check_values(p, source)
    return p


def _check_values(p: Params, src: str) -> None:
    """Value rules the types alone cannot say."""
    def need(cond: bool, key: str, rule: str) -> None:
        if not cond:
            raise ParamsError(f"{src}: key '{key}' {rule}")
    need(0.0 < p.pruning.target < 1.0, "pruning.target", "must lie in (0, 1)")
    need(0.0 < p.pruning.rho_max <= 1.0, "pruning.rho_max", "must lie in (0, 1]")
    need(p.pruning.target <= p.pruning.rho_max, "pruning.target", "must not exceed pruning.rho_max (infeasible)")
    pr = p.pruning
    names = registries()
    known = names["pruners"]
    need(bool(pr.pruners) and all(x in known for x in pr.pruners), "pruning.pruners", f"must be a non-empty subset of {list(known)}")
    need(all(x in known for x in pr.nm_pruners), "pruning.nm_pruners", f"must be a subset of {list(known)}")
    need(pr.sweep_pruner in known, "pruning.sweep_pruner", f"must be one of {list(known)}")
    need(all(0.0 < x < 1.0 for x in pr.sweep), "pruning.sweep", "values must lie in (0, 1)")
    ratio_methods = names["ratios"]
    for key in ("table_methods", "sweep_methods"):
        need(all(x in ratio_methods for x in getattr(pr, key)), f"pruning.{key}", f"must be a subset of {list(ratio_methods)}")
    need(0.0 <= pr.layerif_epsilon < 1.0, "pruning.layerif_epsilon", "must lie in [0, 1)")
    need(pr.owl_lambda >= 0 and pr.owl_m > 0, "pruning.owl_lambda", "must be >= 0 (and owl_m > 0)")
    need(pr.sparsegpt_damp > 0 and pr.sparsegpt_blocksize > 0, "pruning.sparsegpt_damp", "and sparsegpt_blocksize must be > 0")
    need(pr.eval_limit is None or pr.eval_limit > 0, "pruning.eval_limit", "must be > 0 or null")
    need(p.data.n_zeroshot_test is None or p.data.n_zeroshot_test >= 1, "data.n_zeroshot_test", "must be >= 1 or null")
    need(all(x in ratio_methods for x in pr.zeroshot_methods), "pruning.zeroshot_methods",
         f"must be a subset of {list(ratio_methods)}")
    need(pr.calibration_sequences is None or pr.calibration_sequences > 0, "pruning.calibration_sequences", "must be > 0 or null")
    need(p.scoring.damping > 0, "scoring.damping", "must be > 0")
    _score_methods = names["scoring"]
    for key, listed in (("pruning.score_methods", pr.score_methods), ("transfer.methods", p.transfer.methods),
                        ("pruning.zeroshot_score_methods", pr.zeroshot_score_methods)):
        need(all(m in _score_methods for m in listed), key, f"must be a subset of {list(_score_methods)}")
    need(all(m in _score_methods for m in p.scoring.methods) and len(p.scoring.methods) > 0, "scoring.methods",
         f"must be a non-empty subset of {list(_score_methods)}")
    for key in ("cg_max_iter", "n_batches", "batch_size", "layerif_train", "layerif_val", "layerif_lora_steps",
                "appendix_c_layers", "appendix_c_iter"):
        need(getattr(p.scoring, key) >= 1, f"scoring.{key}", "must be >= 1")
    need(p.scoring.max_len >= 2, "scoring.max_len", "must be >= 2")
    need(p.scoring.group_size is None or (isinstance(p.scoring.group_size, int) and p.scoring.group_size >= 1),
         "scoring.group_size", "must be null (all blocks at once) or an integer >= 1")
    need(p.scoring.validation_steps >= 0, "scoring.validation_steps", "must be >= 0")
    need(p.scoring.validation_tasks is None or (len(p.scoring.validation_tasks) >= 1
                                                and set(p.scoring.validation_tasks) <= set(p.data.finetune_tasks)),
         "scoring.validation_tasks", "must be null (all fine-tune tasks) or a non-empty subset of data.finetune_tasks")
    from mdlcap.scores.registry import ZETA2_METHODS
    _val_methods = list(ZETA2_METHODS) + ["grad_norm"]
    need(p.scoring.validation_methods is None or ({"cg_ggn", "grad_norm"} <= set(p.scoring.validation_methods)
                                                  and set(p.scoring.validation_methods) <= set(_val_methods)),
         "scoring.validation_methods", f"must be null or a subset of {_val_methods} holding cg_ggn and grad_norm")
    need(p.scoring.validation_task is None or p.scoring.validation_task in p.data.finetune_tasks,
         "scoring.validation_task", "must be null (the first fine-tune task) or one of data.finetune_tasks")
    need(p.scoring.validation_lr > 0, "scoring.validation_lr", "must be > 0")
    from mdlcap.study.paper import THRESHOLDS
    need(0 < p.scoring.cg_tol <= THRESHOLDS["cg_rel_residual"], "scoring.cg_tol",
         f"must lie in (0, {THRESHOLDS['cg_rel_residual']:g}] (the convergence threshold of every verdict on ζ²)")
    need(p.scoring.cg_damping_policy == "fixed" or any(x > p.scoring.damping for x in p.scoring.lambda_grid),
         "scoring.cg_damping_policy", "'smallest_converged' needs a scoring.lambda_grid value above scoring.damping")
    need(p.scoring.layerif_damping_scale > 0, "scoring.layerif_damping_scale", "must be > 0")
    need(p.scoring.layerif_lora_lr > 0, "scoring.layerif_lora_lr", "must be > 0")
    need(len(p.scoring.lambda_grid) > 0 and all(x > 0 for x in p.scoring.lambda_grid), "scoring.lambda_grid",
         "must be a non-empty list of values > 0")
    need(p.allocation.total_experts > 0, "allocation.total_experts", "must be > 0")
    need(p.allocation.n_min >= 0, "allocation.n_min", "must be >= 0")
    need(p.allocation.top_k >= 1, "allocation.top_k", "must be >= 1")
    need(p.allocation.lora_r >= 1, "allocation.lora_r", "must be >= 1")
    need(p.allocation.epochs >= 1, "allocation.epochs", "must be >= 1")
    need(all(e >= 1 for e in p.allocation.task_epochs.values()), "allocation.task_epochs", "every value must be >= 1")
    need(set(p.allocation.task_epochs) <= set(p.data.finetune_tasks), "allocation.task_epochs",
         "keys must be tasks of data.finetune_tasks")
    need(0 <= p.allocation.warmup_ratio < 1, "allocation.warmup_ratio", "must be in [0, 1)")
    need(p.allocation.validation_items >= 1, "allocation.validation_items", "must be >= 1")
    need(p.allocation.validation_every >= 0, "allocation.validation_every", "must be >= 0 (0: not tracked)")
    need(len(p.allocation.seeds) >= 1, "allocation.seeds", "must list at least one seed")
    need(p.allocation.budget_scaling > 0, "allocation.budget_scaling", "must be > 0")
    need(len(p.allocation.target_modules) >= 1, "allocation.target_modules", "must name at least one projection")
    _alloc_methods = names["allocation"]
    need(p.allocation.tasks is None or (len(p.allocation.tasks) >= 1 and set(p.allocation.tasks) <= set(p.data.finetune_tasks)),
         "allocation.tasks", "must be null or a non-empty subset of data.finetune_tasks")
    for _m in p.allocation.methods + p.allocation.rank_methods:
        need(_m in _alloc_methods, "allocation.methods", f"entries must be among {list(_alloc_methods)}, got {_m!r}")
    need(p.run.threads >= 1, "run.threads", "must be >= 1")
    need(p.run.workers >= 1, "run.workers", "must be >= 1")
    need(p.model.pretrain.threads >= 1, "model.pretrain.threads", "must be >= 1")
    need(p.model.pretrain.init_std is None or p.model.pretrain.init_std > 0, "model.pretrain.init_std",
         "must be null or > 0")
    need(p.precision.dataset in ("digits", "mnist", "fashion_mnist", "cifar10", "svhn"), "precision.dataset",
         "must be one of digits, mnist, fashion_mnist, cifar10, svhn")
    need(all(2 <= b <= 32 for b in p.precision.bit_choices) and p.precision.bit_choices == sorted(set(p.precision.bit_choices)),
         "precision.bit_choices", "must be increasing distinct integers in [2, 32]")
    need(len(p.precision.eps_rel_range) == 2 and 0 < p.precision.eps_rel_range[0] < p.precision.eps_rel_range[1],
         "precision.eps_rel_range", "must be [lo, hi] with 0 < lo < hi")
    need(p.precision.n_eps >= 1 and p.precision.n_random >= 1, "precision.n_eps", "and n_random must be >= 1")
    need(all(2 <= b <= 32 for b in p.precision.alt_bit_choices)
         and p.precision.alt_bit_choices == sorted(set(p.precision.alt_bit_choices)),
         "precision.alt_bit_choices", "must be [] or increasing distinct integers in [2, 32]")
    params_notebook07.check_values(p, need, known, _score_methods)
    params_notebook08.check_values(p, need)
    need(p.transfer.n_instances >= 1, "transfer.n_instances", "must be >= 1")
    need(p.transfer.K >= 2, "transfer.K", "must be >= 2")
    need(p.transfer.n_sweep >= 1, "transfer.n_sweep", "must be >= 1")
    need(p.transfer.adversarial_steps >= 1, "transfer.adversarial_steps", "must be >= 1")
    need(p.transfer.downstream_pairs >= 0, "transfer.downstream_pairs", "must be >= 0")
    need(p.transfer.downstream_method.startswith("mdl_") and p.transfer.downstream_method in _alloc_methods,
         "transfer.downstream_method",
         "must be an Algorithm-1 allocation method 'mdl_<score method>' (e.g. mdl_cg_ggn)")
    need(len(p.transfer.deltas) >= 2 and all(d > 0 for d in p.transfer.deltas), "transfer.deltas",
         "must hold at least two values > 0")
    need(p.model.architecture.num_attention_heads % p.model.architecture.num_key_value_heads == 0,
         "model.architecture.num_key_value_heads", "must divide num_attention_heads")


def load(path: str | Path) -> Params:
    """Load and validate a params YAML file."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params_path: no such file '{path}'")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return from_dict(raw, str(path))
