"""Caching across the whole DAG, from `snakemake -n` job lists on a complete demo run: a second
run does nothing; a finetune setting of one task reruns only that task; a detector setting
reruns extraction and everything after it; a job's memory, the number of decoding processes or
editing the README rerun nothing. An ablation variant reruns only the stages from its first
changed one: finetuning for a finetune overlay, pretraining for a pretrain overlay, nothing but
the table for a variant identical to the baseline.

Only dry runs touch the demo run's folder, so its outputs stay as they are."""

import copy
import re
import shutil
import subprocess
from collections import Counter

import yaml

from cavl.ablations import plan
from cavl.config import deep_update, resolve_config
from cavl.tasks import REGISTRY

from workflow_run import ROOT, SNAKEMAKE, snakemake, snakemake_env

IMAGE_DATASETS = ["coco", "vg", "flickr30k", "nlvr2", "vcr"]
TRAINED_TASKS = ["vqa", "vcr", "nlvr2", "rpg", "tir"]
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
TOTAL = re.compile(r"^total\s+(\d+)$")


def planned_jobs(result):
    """The jobs a dry run plans, as a sorted list of (rule, "name=value, ...") pairs.

    Reads each job's block (`rule NAME:` … `wildcards: …`) and checks the count against the
    dry run's own job-stats total, so a change in the output format fails loudly here.
    """
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return []
    jobs, total = [], None
    for line in output.splitlines():
        if header := JOB_HEADER.match(line):
            jobs.append([header.group(1), ""])
        elif (wildcards := WILDCARDS.match(line)) and jobs:
            jobs[-1][1] = wildcards.group(1)
        elif count := TOTAL.match(line):
            total = int(count.group(1))
    assert total == len(jobs), f"parsed {len(jobs)} jobs, the dry run says {total}:\n{output[-4000:]}"
    return sorted(map(tuple, jobs))


def dry_run(workdir, configfiles=()):
    return planned_jobs(snakemake(workdir, "-n", configfiles=configfiles))


def override(tmp_path, name, settings):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def demo_config():
    with open(ROOT + "/config.yaml") as f:
        return yaml.safe_load(f)


def grid_jobs(config):
    """(rule, wildcards) of the jobs of the ablation grid's own runs (cavl.ablations.plan)."""
    cells, _ = plan(config, config["ablations"]["tasks"])
    jobs = {("ablation_pretrain", f"run={c.pretrain_run}") for c in cells if c.pretrain_run}
    for cell in (c for c in cells if c.run):
        wildcards = f"run={cell.run}, task={cell.task}"
        if REGISTRY[cell.task].zero_shot:
            jobs.add(("ablation_evaluate_zero_shot", wildcards))
        else:
            jobs.update({("ablation_finetune", wildcards), ("ablation_evaluate", wildcards)})
    return sorted(jobs)


def with_settings(settings):
    return resolve_config(deep_update(copy.deepcopy(demo_config()), settings))


def test_second_run_does_nothing(demo_run):
    assert dry_run(demo_run) == []


def test_finetune_setting_of_one_task_reruns_only_that_task(demo_run, tmp_path):
    epochs = demo_config()["finetune"]["tasks"]["vcr"]["epochs"]
    change = override(tmp_path, "vcr_epochs", {"finetune": {"tasks": {"vcr": {"epochs": epochs + 1}}}})
    assert dry_run(demo_run, [change]) == sorted([
        ("finetune", "task=vcr"), ("evaluate", "task=vcr"), ("summary", ""), ("all", "")])


def test_detector_setting_reruns_extraction_and_everything_after(demo_run, tmp_path):
    seed = demo_config()["extract"]["detector"]["seed"]
    settings = {"extract": {"detector": {"seed": seed + 1}}}
    change = override(tmp_path, "detector_seed", settings)
    jobs = dry_run(demo_run, [change])
    shards = sorted(("extract_shard", f"dataset={p.parent.name}, shard={p.name[6:11]}")
                    for p in demo_run.glob("resources/features/*/shard-?????.parquet"))
    assert {d for _, w in shards for d in IMAGE_DATASETS if w.startswith(f"dataset={d},")} == set(IMAGE_DATASETS)
    expected = [*shards, *(("gather_features", f"dataset={d}") for d in IMAGE_DATASETS), ("pretrain", ""),
                *(("finetune", f"task={t}") for t in TRAINED_TASKS),
                *(("evaluate", f"task={t}") for t in TRAINED_TASKS),
                ("evaluate_zero_shot", "task=zs_tir"), ("summary", ""), ("visualise", ""),
                *grid_jobs(with_settings(settings)), ("ablation_summary", ""), ("all", "")]
    assert jobs == sorted(expected)  # and so no demo_data, manifest or task_data job


def test_vg_evaluation_overlap_setting_rebuilds_only_the_pretraining_table(demo_run, tmp_path):
    # which VG pictures give captions is decided when the pretrain table is built: no manifest or
    # shard is redone. The demo's VG pictures are in no other dataset, so the table comes out the
    # same; Snakemake still reruns what follows it (it compares files by time, not content).
    change = override(tmp_path, "vg_overlap", {"datasets": {"vg": {"exclude_eval_images": ["coco"]}}})
    jobs = dry_run(demo_run, [change])
    assert not [j for j in jobs if j[0] in ("demo_data", "manifest", "extract_shard", "gather_features")], jobs
    assert [j for j in jobs if j[0] == "task_data"] == [("task_data", "task=pretrain, split=train"),
                                                         ("task_data", "task=pretrain, split=val")]


def test_memory_and_decoding_processes_rerun_nothing(demo_run, tmp_path):
    # mem_mb only sizes cluster jobs and extract.num_workers only speeds up image decoding: no
    # part of any result.
    config = demo_config()
    settings = {stage: {"mem_mb": config[stage]["mem_mb"] * 2} for stage in ("extract", "pretrain", "finetune")}
    settings["extract"]["num_workers"] = config["extract"]["num_workers"] + 1
    assert dry_run(demo_run, [override(tmp_path, "operational", settings)]) == []


def grid_dry_run(demo_run, tmp_path, variants):
    """The jobs planned when `variants` (name → overlay) are added to the demo's ablation grid."""
    grid = demo_config()["ablations"]["variants"] + [{name: overlay} for name, overlay in variants.items()]
    return dry_run(demo_run, [override(tmp_path, "variants", {"ablations": {"variants": grid}})])


def test_a_finetune_variant_reruns_only_finetuning_and_evaluation(demo_run, tmp_path):
    jobs = grid_dry_run(demo_run, tmp_path, {"adapter2": {"finetune": {"tasks": {"rpg": {"method": "adapter2"}}}}})
    seeds = len(demo_config()["ablations"]["seeds"])
    assert Counter(rule for rule, _ in jobs) == {"ablation_finetune": seeds, "ablation_evaluate": seeds,
                                                  "ablation_summary": 1, "all": 1}
    assert {w.split(", ")[1] for rule, w in jobs if rule in ("ablation_finetune", "ablation_evaluate")} == {"task=rpg"}


def test_a_pretrain_variant_reuses_the_features(demo_run, tmp_path):
    jobs = grid_dry_run(demo_run, tmp_path, {"batch_4": {"pretrain": {"train": {"batch_size": 4}}}})
    seeds = len(demo_config()["ablations"]["seeds"])
    assert Counter(rule for rule, _ in jobs) == {
        "ablation_pretrain": 1, "ablation_finetune": seeds, "ablation_evaluate": seeds,  # rpg
        "ablation_evaluate_zero_shot": 1, "ablation_summary": 1, "all": 1}  # zs_tir: one for every seed


def test_a_variant_identical_to_the_baseline_plans_no_new_jobs(demo_run, tmp_path):
    assert grid_dry_run(demo_run, tmp_path, {"same": {}}) == [("ablation_summary", ""), ("all", "")]


def workflow_copy(tmp_path):
    """The repo's workflow files (Snakefile, rules, config, README, envs, profiles) in tmp_path."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Snakefile", "config.yaml", "README.md"):
        shutil.copy2(f"{ROOT}/{name}", copy / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(f"{ROOT}/{name}", copy / name)
    return copy


def copy_dry_run(copy, workdir):
    """`snakemake -n` of the copied workflow on the demo run's folder."""
    command = [SNAKEMAKE, "-s", str(copy / "Snakefile"), "--directory", str(workdir), "-n",
               "--configfile", str(copy / "config.yaml")]
    return planned_jobs(subprocess.run(command, capture_output=True, text=True, timeout=600,
                                       env=snakemake_env(), cwd=copy))


def test_editing_the_readme_reruns_nothing(demo_run, tmp_path):
    copy = workflow_copy(tmp_path)
    readme = copy / "README.md"
    readme.write_text(readme.read_text() + "\nA line added after the run.\n")
    assert copy_dry_run(copy, demo_run) == []
    # The copy is sensitive to what does matter: a changed summary command reruns the summary.
    rules = copy / "workflow" / "rules" / "summary.smk"
    rules.write_text(rules.read_text().replace("python -m cavl.summary ", "python -m cavl.summary  "))
    assert copy_dry_run(copy, demo_run) == [("all", ""), ("summary", "")]
