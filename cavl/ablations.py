"""The ablation grid (config `ablations:`, `snakemake ablations`): each variant is this
configuration with a small overlay merged over it, run on the grid's tasks and seeds.

    cells, runs = plan(config, tasks)   # one Cell per (variant, seed, task), the baseline first
    cell.metrics                        # where its evaluation is built
    cell.copy_to                        # results/ablations/{variant}/seed{k}/{task}/metrics.json
    runs[cell.run]                      # the configuration that run's jobs get

A cell is computed in a folder named by what determines its result, so cells computing the same
thing share one job, and nothing upstream of a variant's first changed stage is rebuilt:

- pretraining: `results/pretrain/` when the cell's `model` and `pretrain` sections equal the
  configuration's, otherwise `results/ablation_runs/{digest of them}/pretrain/`;
- finetuning and evaluation: `results/{task}/` when, besides, the task's finetuning settings and
  the seed are the configuration's, otherwise `results/ablation_runs/{digest}/{task}/`.

Region features and task tables are every variant's: an overlay may set keys of model, pretrain
and finetune, but not pretrain.data.sources nor the operational keys of cavl.settings (how a job
runs), which every cell takes from the configuration. The seed is finetune.train.seed; pretraining
runs once per distinct pretraining configuration; zero-shot tasks do not depend on the seed.

This module imports no torch: the workflow imports it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

from cavl.config import ConfigError, deep_update, resolve_config
from cavl.settings import FinetuneSection, ModelSettings, PretrainSection, operational_keys, without
from cavl.tasks import REGISTRY

BASELINE = "baseline"
RUNS_DIR = "results/ablation_runs"
OVERLAY_SECTIONS = {"model": ModelSettings, "pretrain": PretrainSection, "finetune": FinetuneSection}
# Keys of those sections that choose data, which every variant shares (the pretraining tables).
DATA_KEYS = {"pretrain": ("data.sources",)}


def _leaf_keys(node, prefix=""):
    """Dotted keys of every leaf of a nested mapping."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, dotted + ".")
        else:
            yield dotted


def _under(dotted: str, keys) -> bool:
    """Whether `dotted` is or lies under one of `keys`."""
    return any(dotted == key or dotted.startswith(key + ".") for key in keys)


def check_overlay(name: str, overlay: dict) -> None:
    """ConfigError naming the variant and the key when an overlay sets a section it may not
    (extract, datasets, demo, the grid itself) or an operational key."""
    where = f"ablations.variants.{name}"
    for section in overlay:
        if section not in OVERLAY_SECTIONS:
            raise ConfigError(f"config key '{where}.{section}': a variant changes model, pretrain or finetune "
                              f"settings only (every variant shares the region features and the data)")
    for section, settings in overlay.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"config key '{where}.{section}': expected a mapping, got {settings!r}")
        for key in _leaf_keys(settings):
            if _under(key, DATA_KEYS.get(section, ())):
                raise ConfigError(f"config key '{where}.{section}.{key}' chooses data, which every variant "
                                  "shares; set it outside `ablations`")
            if _under(key, operational_keys(OVERLAY_SECTIONS[section])):
                raise ConfigError(f"config key '{where}.{section}.{key}' only says how a job runs; every cell "
                                  f"runs with the configuration's own (set it outside `ablations`)")


def variant_configs(config: dict) -> dict:
    """Name → resolved configuration: the baseline (`config` itself) first, then each variant in
    its order. ConfigError names the variant and the key of a bad overlay."""
    configs = {BASELINE: config}
    for entry in config["ablations"]["variants"]:
        ((name, overlay),) = entry.items()  # the schema allows one key per entry
        if name == BASELINE:
            raise ConfigError(f"config key 'ablations.variants.{BASELINE}': the baseline is the configuration "
                              "itself; give the variant another name")
        if name in configs:
            raise ConfigError(f"config key 'ablations.variants.{name}': two variants have this name")
        check_overlay(name, overlay)
        merged = deep_update(copy.deepcopy(config), copy.deepcopy(overlay))
        if not merged["pretrain"]["data"]["sources"]:  # resolved to none configured: resolve it again from null
            merged["pretrain"]["data"]["sources"] = None
        try:
            configs[name] = resolve_config(merged)
        except ConfigError as error:
            raise ConfigError(f"ablations.variants.{name}: {error}") from error
    return configs


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_identity(config: dict) -> dict:
    """What a pretrained model depends on besides the data: the model and pretrain sections, less
    their operational keys (which overlays cannot set: a change of one renames no run)."""
    return {"model": config["model"], "pretrain": without(config["pretrain"], operational_keys(PretrainSection))}


def finetune_identity(config: dict, task: str) -> dict:
    """What a task's finetuned model and evaluation depend on besides the data: the pretrained
    model, the shared finetune settings and the task's own (only the latter for a zero-shot task)."""
    finetune = without(config["finetune"], operational_keys(FinetuneSection))
    own = {"task": task, "settings": finetune["tasks"][task]}
    if not REGISTRY[task].zero_shot:
        own["finetune"] = {key: value for key, value in finetune.items() if key != "tasks"}
    return {"pretrain": pretrain_identity(config), **own}


@dataclass(frozen=True)
class Cell:
    """One (variant, seed, task) of the grid and the runs that compute it (None: the main run's
    folders, results/pretrain/ and results/{task}/)."""

    variant: str
    seed: int
    task: str
    run: str | None  # the finetune/evaluate run: results/ablation_runs/{run}/{task}/
    pretrain_run: str | None  # the pretraining run: results/ablation_runs/{pretrain_run}/pretrain/

    @property
    def root(self) -> str:
        return f"{RUNS_DIR}/{self.run}" if self.run else "results"

    @property
    def metrics(self) -> str:
        return f"{self.root}/{self.task}/metrics.json"

    @property
    def predictions(self) -> str:
        return f"{self.root}/{self.task}/predictions.parquet"

    @property
    def copy_to(self) -> str:
        return f"results/ablations/{self.variant}/seed{self.seed}/{self.task}/metrics.json"


def plan(config: dict, tasks: list) -> tuple[list, dict]:
    """(cells, run configurations): every cell of the grid over `tasks` (config ablations.tasks
    when set; the workflow passes those of its default target otherwise), and run name → the
    configuration its jobs get. The main run is not among the runs."""
    base_pretrain = pretrain_identity(config)
    base_finetune = {task: finetune_identity(config, task) for task in tasks}
    cells, runs = [], {}
    for variant, variant_config in variant_configs(config).items():
        pretrain = pretrain_identity(variant_config)
        pretrain_run = None if pretrain == base_pretrain else _digest(pretrain)
        if pretrain_run:
            runs.setdefault(pretrain_run, variant_config)
        for seed in config["ablations"]["seeds"]:
            seeded = copy.deepcopy(variant_config)
            seeded["finetune"]["train"]["seed"] = seed
            for task in tasks:
                identity = finetune_identity(seeded, task)
                run = None if identity == base_finetune[task] else _digest(identity)
                if run:
                    runs.setdefault(run, seeded)
                cells.append(Cell(variant, seed, task, run, pretrain_run))
    return cells, runs


def pretrain_runs(cells) -> dict:
    """Finetune run → the pretraining run of its backbone (None: results/pretrain/)."""
    return {cell.run: cell.pretrain_run for cell in cells if cell.run}
