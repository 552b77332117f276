# The helpers and settings of finetune.smk's rules (included first by finetune.smk).
import sys

from cavl.settings import FinetuneSection, operational_keys, without

FINETUNE = config["finetune"]


def finetune_split(task, key):
    """The task table of the split named by `finetune.tasks.<task>.<key>` (train_split, eval_split);
    zs_tir reads tir's tables."""
    require_datasets(task)
    tables = TASK_REGISTRY[task].tables or task
    return f"resources/tasks/{tables}/{FINETUNE['tasks'][task][key]}.parquet"


def finetune_select(task):
    """The table of `finetune.tasks.<task>.select_split` (the best epoch is chosen on it); [] when
    the task holds out part of its train split instead (select_split: null)."""
    split = FINETUNE["tasks"][task].get("select_split")
    return finetune_split(task, "select_split") if split else []


def finetune_eval(task):
    """The eval split's table when finetuning evaluates it as it trains (finetune.train.eval_every
    > 0: val_* records in the log); [] otherwise."""
    return finetune_split(task, "eval_split") if FINETUNE["train"]["eval_every"] > 0 else []


def finetune_features(task):
    """Feature index of the task's image dataset (VQA reads coco's)."""
    require_datasets(task)
    return feature_index(TASK_REGISTRY[task].image_datasets[0])


def finetune_config_arg(task):
    """The shared finetune settings and this task's own, as one JSON argument; the keys that only
    schedule the jobs (mem_mb) are left out, so changing one reruns nothing."""
    shared = without(FINETUNE, {"tasks", *operational_keys(FinetuneSection, job=True)})
    return json_arg({"finetune": {**shared, "tasks": {task: FINETUNE["tasks"][task]}}})


def runnable_tasks():
    """The finetune tasks whose datasets are configured; one log line names those left out."""
    tasks = [task for task in config["finetune"]["tasks"] if task in TASK_REGISTRY]
    missing = {task: missing_datasets(task) for task in tasks}
    left_out = {task: keys for task, keys in missing.items() if keys}
    if left_out:
        named = ", ".join(
            f"{task} ({' and '.join(f'datasets.{k}' for k in keys)})" for task, keys in left_out.items()
        )
        print(f"not in the default target (dataset not configured): {named}", file=sys.stderr)
    return [task for task in tasks if task not in left_out]


FINETUNE_TASKS = [task for task in FINETUNE["tasks"] if task in TASK_REGISTRY]
TRAINED_TASKS = [task for task in FINETUNE_TASKS if not TASK_REGISTRY[task].zero_shot]
ZERO_SHOT_TASKS = [task for task in FINETUNE_TASKS if TASK_REGISTRY[task].zero_shot]
# Those whose datasets are configured: the default target and the summary.
RUNNABLE_TASKS = runnable_tasks()
