"""Downstream tasks: a registry of small table entries, one module per task.

    task = get_task("vqa")          # the module's TASK object (see cavl.tasks.base.Task)
    REGISTRY["vqa"].image_datasets  # ("coco",): the feature datasets the task reads

A task module defines a `Task` subclass (cavl.tasks.base) and exposes one instance as `TASK`.
Its entry here says the rest: the datasets whose features it reads, and how its tables
(``resources/tasks/{task}/{split}.parquet``) are made from the official files (docs/contracts.md).
Adding a task is one entry here plus its module (and reader function): `cavl.task_data`,
`cavl.finetune`, `cavl.evaluate` and the workflow pick it up by name; its settings are the config's
`finetune.tasks.<name>` entry. This file stays free of heavy imports: the workflow reads REGISTRY.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


# Column types of task tables (cavl.task_data turns them into Arrow types).
COLUMN_TYPES = ("string", "int32", "int64", "bool", "list<string>", "list<list<float32>>")


@dataclass(frozen=True)
class TaskEntry:
    module: str  # module defining the task; it exposes the instance as `TASK`
    image_datasets: tuple  # datasets whose feature shards the task reads (first = the main one)
    tables: str = ""  # task whose resources/tasks/ tables it reads ("" = its own; zs_tir reads tir's)
    zero_shot: bool = False  # evaluate-only: no finetune rule, the pretrained model is evaluated (zs_tir)
    # Its own tables (tables == ""), made by cavl.task_data from the official files:
    sources: tuple = ()  # the config `datasets` entries they are read from (first = the one `reader` gets)
    splits: tuple = ()  # their splits when the release fixes them (rpg, tir); () = that entry's `splits`
    reader: str = ""  # "module:function"; function(spec, splits, where) → {split: rows}, spec = that entry
    columns: tuple = ()  # ((name, type), ...) of the table, types from COLUMN_TYPES (docs/contracts.md)

    def __post_init__(self):
        own = (self.sources, self.reader, self.columns)
        if self.tables and any(own):
            raise ValueError(f"{self.module}: reads {self.tables}'s tables, so it has no sources, reader or columns")
        if not self.tables and not all(own):
            raise ValueError(f"{self.module}: a task with its own tables needs sources, reader and columns")
        unknown = [t for _, t in self.columns if t not in COLUMN_TYPES]
        if unknown:
            raise ValueError(f"{self.module}: unknown column types {unknown} (known: {', '.join(COLUMN_TYPES)})")


REGISTRY = {
    "vqa": TaskEntry(
        "cavl.tasks.vqa", ("coco",), sources=("vqa",), reader="cavl.formats.vqa:task_tables",
        columns=(("question_id", "int64"), ("image_id", "string"), ("question", "string"),
                 ("answers", "list<string>"), ("multiple_choice_answer", "string"), ("answer_type", "string"),
                 ("question_type", "string"))),
    "vcr": TaskEntry(
        "cavl.tasks.vcr", ("vcr",), sources=("vcr",), reader="cavl.formats.vcr:task_tables",
        columns=(("annot_id", "string"), ("image_id", "string"), ("question", "string"),
                 ("answer_choices", "string"), ("rationale_choices", "string"), ("answer_label", "int32"),
                 ("rationale_label", "int32"), ("objects", "list<string>"))),
    "nlvr2": TaskEntry(
        "cavl.tasks.nlvr2", ("nlvr2",), sources=("nlvr2",), reader="cavl.formats.nlvr2:task_tables",
        columns=(("identifier", "string"), ("sentence", "string"), ("label", "bool"),
                 ("left_image_id", "string"), ("right_image_id", "string"))),
    "rpg": TaskEntry(
        "cavl.tasks.rpg", ("flickr30k",), sources=("flickr30k",), splits=("train", "val", "test"),
        reader="cavl.formats.flickr30k:rpg_tables",
        columns=(("image_id", "string"), ("sentence_index", "int32"), ("sentence", "string"), ("phrase", "string"),
                 ("phrase_types", "list<string>"), ("entity_id", "string"), ("first_word_index", "int32"),
                 ("gt_boxes", "list<list<float32>>"))),
    "tir": TaskEntry(
        "cavl.tasks.tir", ("flickr30k",), sources=("flickr30k",), splits=("train", "val", "test"),
        reader="cavl.formats.flickr30k:tir_tables",
        columns=(("image_id", "string"), ("sentence_id", "int64"), ("caption", "string"))),
    "zs_tir": TaskEntry("cavl.tasks.zs_tir", ("flickr30k",), tables="tir", zero_shot=True),
}


def table_reader(name: str):
    """The function reading task `name`'s tables (its entry's `reader`)."""
    module, function = REGISTRY[name].reader.split(":")
    return getattr(importlib.import_module(module), function)


def get_task(name: str):
    """The task object registered under `name`."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(REGISTRY)}")
    task = importlib.import_module(REGISTRY[name].module).TASK
    if task.name != name:
        raise ValueError(f"{REGISTRY[name].module}.TASK is named {task.name!r}, registered as {name!r}")
    return task
