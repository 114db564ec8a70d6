"""lm-eval task files for the default data: how lm-eval finds the generated JSONL.

The JSONL files live in the data cache (`mdlcap.default.data.ensure`), whose path differs per
machine, so the task YAMLs cannot be committed with their `data_files`. `ensure()` therefore
writes one small YAML per task into `<data root>/lm_eval_tasks/`; each `include:`s the committed
base config `mdlcap/tasks/mdlcap_multiple_choice.yaml` (output type, prompt fields, metric) and
adds only its task name and absolute `data_files`. `TaskManager(include_path=<that folder>)`
loads them (`mdlcap.evaluation.lm_eval_accuracy`). Local names are prefixed (`mdlcap_ft_cola`,
`mdlcap_zs_hellaswag`) so they never collide with lm-eval's built-ins; callers use the params'
names. Under `data.source: hub` the fine-tune tasks still go through the local YAMLs (the hub
data converted to our schema, test split), and the zero-shot tasks are lm-eval's own by name.
"""
from __future__ import annotations

from pathlib import Path

from mdlcap import files

BASE_YAML = Path(__file__).parent.parent / "tasks" / "mdlcap_multiple_choice.yaml"
FOLDER = "lm_eval_tasks"


def local_task_name(params, task: str) -> str:
    """lm-eval task name for a params task name (see module docstring)."""
    if task in params.data.zeroshot_tasks and params.data.source == "hub":
        return task                               # lm-eval's built-in task, real data
    if task in params.data.finetune_tasks:
        return f"mdlcap_ft_{task}"
    if task in params.data.zeroshot_tasks:
        return f"mdlcap_zs_{task}"
    raise ValueError(f"tasks: '{task}' is in neither data.finetune_tasks {params.data.finetune_tasks} "
                     f"nor data.zeroshot_tasks {params.data.zeroshot_tasks} of {params.source}")


def write_task_yamls(params, root: Path, data_root: Path | None = None) -> Path:
    """One lm-eval YAML per local task under <root>/lm_eval_tasks/, its `data_files` pointing at
    <data_root>/<kind>/<task>/<split>.jsonl (data_root defaults to root: give the final folder
    when root is a temp folder that is renamed into place afterwards)."""
    data_root = root if data_root is None else data_root
    out = root / FOLDER
    local = [("finetune", t) for t in params.data.finetune_tasks]
    if params.data.source == "generated":
        local += [("zeroshot", t) for t in params.data.zeroshot_tasks if t not in params.data.finetune_tasks]
    for kind, task in local:
        folder = data_root / kind / task
        splits = ["train", "validation", "test"] if kind == "finetune" else ["test"]
        data_files = "".join(f"    {s}: {folder / f'{s}.jsonl'}\n" for s in splits)
        prefix = "ft" if kind == "finetune" else "zs"
        files.atomic_write_text(out / f"mdlcap_{prefix}_{task}.yaml",
                                f"include: {BASE_YAML}\ntask: mdlcap_{prefix}_{task}\n"
                                f"dataset_kwargs:\n  data_files:\n{data_files}")
    return out
