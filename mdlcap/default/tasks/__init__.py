"""Generated stand-ins for the paper's tasks, one generator per task (`finetune`, `zeroshot`),
behind the registry in `registry` (names, the paper's task each replaces, random streams)."""
