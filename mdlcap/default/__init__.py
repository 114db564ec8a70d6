"""The embedded default: a small Mistral pretrained here, and generated stand-ins for the paper's tasks.

  data           the public API: ensure, load_task, task_path, texts, data_key
  corpus         the text (Python's language reference and stdlib docstrings) and its split
  tasks/         one generator per stand-in task (finetune, zeroshot) behind `tasks.registry`
  texts          calibration and held-out passages
  hub            the paper's data sets in the same schema (`data.source: hub`)
  lm_eval_tasks  the lm-eval YAML per task, pointing at the generated JSONL
  batches        token batches of texts and of task examples
  jsonl          the JSON Lines files the data is kept in
  pretrain       tokenizer and model pretraining, cached (namespace "models")
"""
