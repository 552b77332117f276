"""The task registry (cavl.tasks.REGISTRY) is the one list of tasks: cavl.task_data derives its
sources, splits, schemas and readers from it, so a task is added with one entry and its module."""

import importlib

import pyarrow.parquet as pq
import pytest

from cavl import task_data
from cavl.tasks import REGISTRY, TaskEntry


def toy_tables(spec, splits, where):
    """The reader of the toy task below: one row per word of the source's `text`."""
    return {split: [{"image_id": str(k), "word": w} for k, w in enumerate(spec["text"].split())]
            for split in splits}


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", TaskEntry(
        "cavl.tasks.toy", ("coco",), sources=("toy",), splits=("train", "test"),
        reader="test_registry:toy_tables", columns=(("image_id", "string"), ("word", "string"))))
    yield importlib.reload(task_data)
    monkeypatch.undo()
    importlib.reload(task_data)


def test_a_registered_task_needs_nothing_else_in_task_data(toy_task, tmp_path):
    assert toy_task.TASK_SOURCES["toy"] == ("toy",) and "toy" in toy_task.TASKS
    assert toy_task.task_splits("toy", {}) == ["train", "test"]
    assert toy_task.TASK_SCHEMAS["toy"].names == ["image_id", "word"]
    counts = toy_task.build_task("toy", {"toy": {"text": "a red square"}}, out_dir=str(tmp_path))
    assert counts == {"train": 3, "test": 3}
    table = pq.read_table(tmp_path / "test.parquet")
    assert table.column("word").to_pylist() == ["a", "red", "square"]
    assert table.schema.metadata[b"task"] == b"\"toy\""  # JSON-encoded, as cavl.io writes metadata


def test_every_task_with_tables_of_its_own_is_in_task_data():
    own = [name for name, entry in REGISTRY.items() if not entry.tables]
    assert list(task_data.TASK_SOURCES) == ["pretrain", *own]
    assert list(task_data.TASK_SCHEMAS) == ["pretrain", *own]
    for name in own:
        assert task_data.TASK_SCHEMAS[name].names == [column for column, _ in REGISTRY[name].columns]
    for name, entry in REGISTRY.items():
        if entry.tables:
            assert not REGISTRY[entry.tables].tables, f"{name} reads {entry.tables}'s tables, which has its own"


def test_entries_are_checked():
    with pytest.raises(ValueError, match="needs sources, reader and columns"):
        TaskEntry("cavl.tasks.toy", ("coco",), sources=("toy",))
    with pytest.raises(ValueError, match="reads tir's tables"):
        TaskEntry("cavl.tasks.toy", ("coco",), tables="tir", sources=("toy",))
    with pytest.raises(ValueError, match="unknown column types"):
        TaskEntry("cavl.tasks.toy", ("coco",), sources=("toy",), reader="m:f", columns=(("x", "float64"),))
