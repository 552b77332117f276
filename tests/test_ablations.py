"""The ablation grid's planning (cavl.ablations): overlays merged and validated, and cells mapped
to the runs that compute them, so that cells with the same settings share a run and a variant
reuses every stage upstream of its first changed one."""

import copy
from pathlib import Path

import pytest
import yaml

from cavl.ablations import BASELINE, RUNS_DIR, plan, variant_configs
from cavl.config import ConfigError, deep_update, resolve_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_config():
    return resolve_config(yaml.safe_load((REPO / "config.yaml").read_text()))


def with_grid(config, variants: dict, tasks=("vqa", "zs_tir"), seeds=(0,)):
    """`config` with this grid (name → overlay, in order) in place of its own."""
    grid = {"variants": [{name: overlay} for name, overlay in variants.items()], "tasks": list(tasks),
            "seeds": list(seeds)}
    return resolve_config({**config, "ablations": grid})


def by_variant(cells):
    return {(c.variant, c.seed, c.task): c for c in cells}


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------


def test_an_overlay_merges_key_by_key_over_the_configuration(demo_config):
    config = with_grid(demo_config, {"small_batch": {"pretrain": {"train": {"batch_size": 8}}}})
    variant = variant_configs(config)["small_batch"]
    assert variant["pretrain"]["train"]["batch_size"] == 8
    assert variant["pretrain"]["train"]["epochs"] == demo_config["pretrain"]["train"]["epochs"]
    assert variant["finetune"] == demo_config["finetune"]
    assert list(variant_configs(config)) == [BASELINE, "small_batch"]


def test_an_unknown_key_in_a_variant_is_named_with_its_variant(demo_config):
    config = with_grid(demo_config, {"typo": {"pretrain": {"pwcl": {"wieght": 0}}}})
    with pytest.raises(ConfigError, match=r"(?s)ablations\.variants\.typo: .*'pretrain\.pwcl\.wieght'"):
        variant_configs(config)


def test_a_bad_value_in_a_variant_is_named_with_its_variant(demo_config):
    config = with_grid(demo_config, {"bad": {"finetune": {"tasks": {"vqa": {"method": "lora"}}}}})
    with pytest.raises(ConfigError, match=r"(?s)ablations\.variants\.bad: .*finetune\.tasks\.vqa\.method"):
        variant_configs(config)


@pytest.mark.parametrize("overlay, key", [
    ({"extract": {"boxes": {"max_boxes": 10}}}, "ablations.variants.v.extract"),
    ({"datasets": {}}, "ablations.variants.v.datasets"),
    ({"pretrain": {"threads": 1}}, "ablations.variants.v.pretrain.threads"),
    ({"finetune": {"tasks": {"vqa": {"eval_split": "train"}}}}, "ablations.variants.v.finetune.tasks.vqa.eval_split"),
    ({"finetune": {"train": {"log_every": 1}}}, "ablations.variants.v.finetune.train.log_every"),
    ({"pretrain": {"data": {"sources": ["coco"]}}}, "ablations.variants.v.pretrain.data.sources"),
])
def test_an_overlay_may_not_change_data_or_how_jobs_run(demo_config, overlay, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        variant_configs(with_grid(demo_config, {"v": overlay}))


def test_the_baseline_name_is_reserved(demo_config):
    with pytest.raises(ConfigError, match="'ablations.variants.baseline': the baseline is the configuration"):
        variant_configs(with_grid(demo_config, {BASELINE: {}}))


def test_a_name_is_used_once(demo_config):
    config = with_grid(demo_config, {})
    config["ablations"]["variants"] = [{"twice": {}}, {"twice": {"pretrain": {"mlm": {"weight": 0}}}}]
    with pytest.raises(ConfigError, match="'ablations.variants.twice': two variants have this name"):
        variant_configs(config)


def test_a_later_config_file_replaces_the_grid(demo_config):
    merged = deep_update(yaml.safe_load((REPO / "config.yaml").read_text()),
                         yaml.safe_load((REPO / "configs/ablations.yaml").read_text()))
    variants = variant_configs(resolve_config(merged))
    names = list(variants)
    # the demo's adapter1 (rpg) is gone, not merged into the paper's (vqa, nlvr2, tir)
    assert variants["adapter1"]["finetune"]["tasks"]["rpg"] == variants[BASELINE]["finetune"]["tasks"]["rpg"]
    assert "adapter1" in names and "mlm" in names  # the paper's
    assert {"batch_32", "batch_64", "batch_128"} <= set(names) and len(names) == 1 + 10
    assert names[:3] == [BASELINE, "mlm", "mlm_itm"]


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "a b", "x.y", ""])
def test_variant_names_are_safe_folder_names(demo_config, name):
    with pytest.raises(ConfigError, match="ablations.variants"):
        with_grid(demo_config, {name: {}})


def test_a_variant_entry_holds_one_name(demo_config):
    config = {**demo_config, "ablations": {"variants": [{"a": {}, "b": {}}]}}
    with pytest.raises(ConfigError, match="ablations.variants.0"):
        resolve_config(config)


# ---------------------------------------------------------------------------------------------
# Cells and runs
# ---------------------------------------------------------------------------------------------


def test_the_baseline_at_the_configured_seed_is_the_main_run(demo_config):
    cells, runs = plan(with_grid(demo_config, {}), ["vqa", "zs_tir"])
    assert runs == {}
    assert [(c.variant, c.task, c.run, c.pretrain_run) for c in cells] == [
        (BASELINE, "vqa", None, None), (BASELINE, "zs_tir", None, None)]
    assert cells[0].metrics == "results/vqa/metrics.json"
    assert cells[0].copy_to == "results/ablations/baseline/seed0/vqa/metrics.json"


def test_a_variant_identical_to_the_baseline_shares_its_runs(demo_config):
    cells, runs = plan(with_grid(demo_config, {"same": {}, "also_same": {"pretrain": {"pwcl": {"weight":
                       demo_config["pretrain"]["pwcl"]["weight"]}}}}, seeds=(0, 1)), ["vqa", "zs_tir"])
    cells = by_variant(cells)
    for variant in ("same", "also_same"):
        for seed in (0, 1):
            for task in ("vqa", "zs_tir"):
                assert cells[variant, seed, task].metrics == cells[BASELINE, seed, task].metrics
    assert len(runs) == 1  # vqa at seed 1 (zs_tir finetunes nothing: any seed is the main run)


def test_a_finetune_variant_reuses_the_pretrained_model(demo_config):
    cells, runs = plan(with_grid(demo_config, {"a1": {"finetune": {"tasks": {"vqa": {"method": "adapter1"}}}}}),
                       ["vqa", "zs_tir"])
    cells = by_variant(cells)
    vqa = cells["a1", 0, "vqa"]
    assert vqa.run and vqa.pretrain_run is None and vqa.metrics.startswith(f"{RUNS_DIR}/{vqa.run}/vqa/")
    assert runs[vqa.run]["finetune"]["tasks"]["vqa"]["method"] == "adapter1"
    assert cells["a1", 0, "zs_tir"].run is None  # its settings are the baseline's


def test_a_pretrain_variant_gets_one_pretraining_for_all_its_cells(demo_config):
    cells, runs = plan(with_grid(demo_config, {"no_pwcl": {"pretrain": {"pwcl": {"weight": 0}}}}, seeds=(0, 1)),
                       ["vqa", "zs_tir"])
    variant = [c for c in cells if c.variant == "no_pwcl"]
    assert len({c.pretrain_run for c in variant}) == 1 and variant[0].pretrain_run
    assert runs[variant[0].pretrain_run]["pretrain"]["pwcl"]["weight"] == 0
    assert len({c.run for c in variant}) == 3  # vqa per seed, zs_tir once
    assert all(c.run not in (None, *(b.run for b in cells if b.variant == BASELINE)) for c in variant)


def test_a_seed_sets_the_finetuning_seed_only(demo_config):
    cells, runs = plan(with_grid(demo_config, {}, seeds=(0, 7)), ["vqa"])
    (seeded,) = [c for c in cells if c.seed == 7]
    assert runs[seeded.run]["finetune"]["train"]["seed"] == 7
    assert runs[seeded.run]["pretrain"] == demo_config["pretrain"] and seeded.pretrain_run is None


def test_run_names_depend_on_settings_not_on_variant_names_or_order(demo_config):
    overlay = {"finetune": {"tasks": {"vqa": {"epochs": 1}}}}
    first, _ = plan(with_grid(demo_config, {"x": overlay, "y": {"pretrain": {"mlm": {"weight": 0}}}}), ["vqa"])
    second, _ = plan(with_grid(demo_config, {"y": {"pretrain": {"mlm": {"weight": 0}}}, "renamed": overlay}), ["vqa"])
    assert by_variant(first)["x", 0, "vqa"].run == by_variant(second)["renamed", 0, "vqa"].run
    assert by_variant(first)["y", 0, "vqa"].run == by_variant(second)["y", 0, "vqa"].run


def test_the_shipped_paper_grid_is_valid():
    config = {}
    for name in ("config.yaml", "configs/paper.yaml", "configs/ablations.yaml"):
        deep_update(config, yaml.safe_load((REPO / name).read_text()))
    config = resolve_config(config)
    variants = variant_configs(config)
    assert len(variants) > 10
    cells, runs = plan(config, config["ablations"]["tasks"])
    assert len(cells) == len(variants) * len(config["ablations"]["seeds"]) * len(config["ablations"]["tasks"])


def test_an_operational_key_renames_no_run(demo_config):
    grid = {"no_pwcl": {"pretrain": {"pwcl": {"weight": 0}}}, "a1": {"finetune": {"tasks": {"vqa": {"method": "adapter1"}}}}}
    before, _ = plan(with_grid(demo_config, grid, seeds=(0, 1)), ["vqa", "zs_tir"])
    busier = deep_update(copy.deepcopy(demo_config), {"pretrain": {"mem_mb": 64000, "threads": 1},
                                                      "finetune": {"threads": 2, "train": {"log_every": 1}}})
    after, _ = plan(with_grid(busier, grid, seeds=(0, 1)), ["vqa", "zs_tir"])
    assert after == before


def test_a_configuration_without_pretraining_captions_still_takes_variants():
    # no coco or vg: pretrain.data.sources resolves to [], which a second resolution must accept
    config = resolve_config({"demo": {"enabled": False}, "datasets": {},
                             "ablations": {"variants": [{"mlm": {"pretrain": {"itm": {"weight": 0}}}}]}})
    assert config["pretrain"]["data"]["sources"] == []
    assert variant_configs(config)["mlm"]["pretrain"]["data"]["sources"] == []
