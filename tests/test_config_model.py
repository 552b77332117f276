"""The config model (cavl.settings): one dataclass per YAML section, built from the schema's
defaults, which are written nowhere else; operational keys marked once, and the checkpoint
fingerprints leave out exactly those."""

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from cavl import finetune_model, pretrain
from cavl.config import ConfigError, deep_update, resolve_config, validate_config
from cavl.finetune_model import FinetuneSettings, settings_from_config
from cavl.model import ObjectiveConfig
from cavl.pretrain_data import PretrainDataConfig
from cavl.settings import (AdapterSettings, CacheSettings, Config, DetectorTrain, FinetuneSection, ModelSettings,
                           PretrainSection, TrainedTaskSection, config_model, from_section, operational_keys,
                           option_keys, schema_default, schema_node, task_options, task_section)
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings

REPO = Path(__file__).resolve().parents[1]
# Sections that are mappings keyed by data (dataset or method names), so dict fields, not dataclasses.
MAPS = {"datasets", "demo.images", "extract.given_boxes", "pretrain.data.max_captions_per_image", "finetune.optim.lr"}
# Dataclasses that are not a section but take values (and defaults) from the config's keys.
RUNTIME = (ObjectiveConfig, PretrainDataConfig, DataSettings, FinetuneSettings)


def _sections(cls=Config, key=""):
    """(dotted key, dataclass) of the config model and of every dataclass nested in it."""
    yield key, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], f"{key}.{f.name}" if key else f.name)


def _dict_fields():
    for key, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is dict:
                yield f"{key}.{f.name}" if key else f.name


def _has_default(f):
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# ---------------------------------------------------------------------------------------------
# One dataclass per section, built from the schema
# ---------------------------------------------------------------------------------------------


def test_every_section_builds_from_the_schema_defaults_alone():
    config = config_model(validate_config({}))
    assert isinstance(config.finetune.adapters, AdapterSettings) and isinstance(config.finetune.cache, CacheSettings)
    assert config.pretrain.pwcl.encoding == schema_default("pretrain.pwcl.encoding")
    assert config.finetune.tasks.nlvr2.eval_split == schema_default("finetune.tasks.nlvr2.eval_split")
    for files in (["config.yaml"], ["config.yaml", "configs/paper.yaml"]):
        merged = {}
        for name in files:
            deep_update(merged, yaml.safe_load((REPO / name).read_text()))
        assert config_model(resolve_config(merged)).model.standardize_features is True


def test_each_dataclass_has_exactly_its_sections_keys():
    """Every schema key of a section is a field of its dataclass and every field a schema key;
    a nested section is a nested dataclass, unless it is a mapping keyed by data (MAPS)."""
    for key, cls in _sections():
        node = schema_node(key)
        assert [f.name for f in dataclasses.fields(cls)] and \
            {f.name for f in dataclasses.fields(cls)} == set(node["properties"]), key or "<top level>"
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            sub = node["properties"][f.name]
            full = f"{key}.{f.name}" if key else f.name
            if "properties" in sub:
                assert dataclasses.is_dataclass(hints[f.name]) or full in MAPS, f"{full} is a section: a dataclass"
    assert set(_dict_fields()) == MAPS


def test_no_default_is_written_twice():
    """A section's dataclass has no defaults; a dataclass that code also builds piecemeal takes
    each default from the schema (schema_defaults), and they equal the schema's."""
    checked = 0
    for key, cls in [*_sections(), *((c.__name__, c) for c in RUNTIME)]:
        sources = getattr(cls, "__schema_defaults__", {})
        for f in dataclasses.fields(cls):
            if _has_default(f):
                assert f.name in sources, f"{cls.__name__}.{f.name} has a default of its own (the schema's: none)"
                assert _default(f) == schema_default(sources[f.name]), f"{cls.__name__}.{f.name}"
                checked += 1
    assert checked >= 30
    for cls in (DataSettings, FinetuneSettings, ModelSettings, PretrainSection, FinetuneSection, CacheSettings):
        assert not any(_has_default(f) for f in dataclasses.fields(cls)), cls.__name__
    assert not {"TASK_KEYS", "DEFAULT_LR", "_OPERATIONAL", "_take"} & set(vars(finetune_model))
    assert not {"_take", "_OPERATIONAL", "PretrainSettings"} & set(vars(pretrain))


def test_runtime_settings_built_from_the_defaults_are_the_dataclass_defaults():
    """The runtime dataclasses read the keys their defaults come from: built from the schema's
    defaults they equal their own defaults (pretrain.data.sources null: both sources)."""
    _, s = pretrain.settings_from_config({})
    assert pretrain.objective_config(s) == ObjectiveConfig()
    assert pretrain.data_config(s) == dataclasses.replace(PretrainDataConfig(), sources=["coco", "vg"])
    assert s.optim == type(s.optim)() and s.train == type(s.train)()
    assert settings_from_config({}, "vqa").adapters == AdapterSettings()


def test_task_options_are_the_schemas_keys_and_defaults():
    for task in REGISTRY:
        cls = task_section(task)
        own = {k: v["default"] for k, v in schema_node(f"finetune.tasks.{task}")["properties"].items()}
        assert get_task(task).options == task_options(task) == {k: own[k] for k in option_keys(cls)}
        assert settings_from_config({}, task).options == get_task(task).options
        assert issubclass(cls, TrainedTaskSection) != get_task(task).zero_shot, task


def test_a_mismatch_between_section_and_dataclass_names_the_key():
    section = copy.deepcopy(validate_config({})["finetune"])
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune\.adapters\.width'"):
        from_section(FinetuneSection, deep_update(copy.deepcopy(section), {"adapters": {"width": 3}}), "finetune")
    del section["cache"]["dtype"]
    with pytest.raises(ConfigError, match=r"config key 'finetune\.cache\.dtype' missing"):
        from_section(FinetuneSection, section, "finetune")
    with pytest.raises(ConfigError, match=r"config key 'finetune\.adapters': shortcut_width 10 is not a multiple"):
        settings_from_config({"finetune": {"adapters": {"shortcut_width": 10}}}, "vqa")
    with pytest.raises(ConfigError, match=r"unknown config key 'pretrain\.mlm\.weights'"):
        pretrain.settings_from_config({"pretrain": {"mlm": {"weights": 1.0}}})


# ---------------------------------------------------------------------------------------------
# Operational keys: what the fingerprints leave out
# ---------------------------------------------------------------------------------------------


def _leaves(cls, key):
    """Dotted keys of a dataclass's leaf fields (dict fields are leaves)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = f"{key}.{f.name}"
        yield from _leaves(hints[f.name], sub) if dataclasses.is_dataclass(hints[f.name]) else [sub]


def _other(value, node):
    """A valid value other than `value` for the schema `node`."""
    if "enum" in node:
        return next(v for v in node["enum"] if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2 if value else 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        items = node.get("items", {})
        if "enum" in items:
            return [next(v for v in items["enum"] if v not in value)]
        return [v / 2 for v in value] if value else ["MODEL.X", "1"]
    if isinstance(value, dict):
        name = sorted(value)[0]
        return {**value, name: _other(value[name], node["properties"][name])}
    types = node["type"]
    return 1 if "integer" in types else 0.25 if "number" in types else ["coco"] if "array" in types else "x"


def _set(config, key, value):
    node = config
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return config


def _changed(make, key, base):
    """Whether the fingerprint `make(config)` of a config with `key` changed differs from `base`."""
    value = schema_default(key)
    return make(_set({}, key, _other(value, schema_node(key)))) != base


def _marked(key, section, cls):
    return any(key == f"{section}.{k}" or key.startswith(f"{section}.{k}.") for k in operational_keys(cls))


def test_pretrain_fingerprint_leaves_out_exactly_the_operational_keys():
    def make(config):
        return pretrain.fingerprint(*pretrain.settings_from_config(config), [])

    base = make({})
    keys = [*_leaves(ModelSettings, "model"), *_leaves(PretrainSection, "pretrain")]
    for key in keys:
        assert _changed(make, key, base) != _marked(key, "pretrain", PretrainSection), key
    assert {k for k in keys if _marked(k, "pretrain", PretrainSection)} == {
        "pretrain.threads", "pretrain.mem_mb", "pretrain.data.num_workers", "pretrain.eval.val_batches",
        "pretrain.eval.retrieval_pairs", "pretrain.train.log_every", "pretrain.train.checkpoint_every",
        "pretrain.train.keep_checkpoints", "pretrain.train.eval_every"}


@pytest.mark.parametrize("task", ["tir", "vqa"])
def test_finetune_fingerprint_leaves_out_exactly_the_operational_keys(task):
    def make(config):
        return finetune_model.fingerprint(settings_from_config(config, task), "backbone", [])

    base = make({})
    method = settings_from_config({}, task).method
    keys = [k for k in _leaves(FinetuneSection, "finetune")
            if not k.startswith("finetune.tasks.") and k != "finetune.optim.lr"]
    keys += [f"finetune.optim.lr.{method}", *_leaves(task_section(task), f"finetune.tasks.{task}")]
    for key in keys:
        marked = _marked(key, "finetune", FinetuneSection) or _marked(key, f"finetune.tasks.{task}", task_section(task))
        assert _changed(make, key, base) != marked, key


def test_detector_training_fingerprint_leaves_out_exactly_the_operational_keys():
    train = pytest.importorskip("extract.train")

    class Cfg:  # the part of a Detectron2 config the fingerprint uses
        OUTPUT_DIR = "somewhere"

        def clone(self):
            return Cfg()

        def defrost(self):
            pass

        def dump(self):
            return "MODEL: {}"

    defaults = validate_config({})["extract"]["train"]
    base = train.fingerprint(Cfg(), [], defaults)
    for key in _leaves(DetectorTrain, "extract.train"):
        name = key.rsplit(".", 1)[1]
        other = {**defaults, name: _other(defaults[name], schema_node(key))}
        assert (train.fingerprint(Cfg(), [], other) != base) != (name in operational_keys(DetectorTrain)), key
    assert operational_keys(DetectorTrain, job=True) == {"mem_mb", "runtime"}
