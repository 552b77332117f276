"""Downstream tasks: a registry of small table entries, one module per task.

    task = get_task("vqa")          # the module's TASK object (see cavl.tasks.base.Task)
    REGISTRY["vqa"].image_datasets  # ("coco",): the feature datasets the task reads

A task module defines a `Task` subclass — reader, example → input sequences, head, loss,
decoding, metric, chance — and exposes one instance as `TASK`. Adding a task (e.g. retrieval or
grounding) is one line here plus its module; `cavl.finetune`, `cavl.evaluate` and the workflow
pick it up by name. This file stays free of heavy imports: the workflow reads REGISTRY.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskEntry:
    module: str  # module defining the task; it exposes the instance as `TASK`
    image_datasets: tuple  # datasets whose feature shards the task reads (first = the main one)
    tables: str = ""  # task whose resources/tasks/ tables it reads ("" = its own; zs_tir reads tir's)
    zero_shot: bool = False  # evaluate-only: no finetune rule, the pretrained model is evaluated (zs_tir)


REGISTRY = {
    "vqa": TaskEntry("cavl.tasks.vqa", ("coco",)),
    "vcr": TaskEntry("cavl.tasks.vcr", ("vcr",)),
    "nlvr2": TaskEntry("cavl.tasks.nlvr2", ("nlvr2",)),
    "rpg": TaskEntry("cavl.tasks.rpg", ("flickr30k",)),
    "tir": TaskEntry("cavl.tasks.tir", ("flickr30k",)),
    "zs_tir": TaskEntry("cavl.tasks.zs_tir", ("flickr30k",), tables="tir", zero_shot=True),
}


def get_task(name: str):
    """The task object registered under `name`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(REGISTRY)}")
    task = importlib.import_module(REGISTRY[name].module).TASK
    if task.name != name:
        raise ValueError(f"{REGISTRY[name].module}.TASK is named {task.name!r}, registered as {name!r}")
    return task
