# The default target: everything `snakemake --cores all` builds (rule all, in the Snakefile).

# Rule summary's outputs, all requested (the report embeds them; a new one is then made at once).
SUMMARY_FILES = ["summary.md", "summary.csv", "summary.html", "summary.png", "methods.csv"]


def all_targets():
    """Everything `snakemake --cores all` builds, growing as stages are added."""
    images = [*(d for d in IMAGE_DATASETS if d in DATASETS), *OWN_IMAGES]
    targets = [manifest_path(d) for d in images] + [feature_index(d) for d in images]
    targets += [path for task in TASK_SOURCES if not missing_datasets(task) for path in task_data_paths(task)]
    if not missing_datasets("pretrain"):
        targets += ["results/pretrain/model"]
    targets += [f"results/{task}/metrics.json" for task in RUNNABLE_TASKS]
    if RUNNABLE_TASKS:
        targets += [f"results/{name}" for name in SUMMARY_FILES]
    if not missing_datasets("pretrain") and visualise_datasets():
        targets += list(rules.visualise.output)
    if config["ablations"]["variants"]:
        targets += list(rules.ablation_summary.output)
    return targets
