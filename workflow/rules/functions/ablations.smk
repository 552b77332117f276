# The helpers of ablations.smk's rules (included first by ablations.smk). The grid's cells and
# runs are planned in common.smk (ABLATION_CELLS, ABLATION_RUNS), which every stage's rules read.


def cell_inputs(cell):
    """What the table reads of one cell: its run's metrics and predictions, the evaluated split's
    task table (the gold labels) and the task's feature index (RPG's candidate boxes)."""
    return {
        "metrics": cell.metrics,
        "predictions": cell.predictions,
        "examples": task_table(cell.task, FINETUNE["tasks"][cell.task]["eval_split"]),
        "features": task_features(cell.task),
    }


def ablation_runs_json():
    """The grid as one JSON argument: per cell its variant, seed, task, what the table reads of
    it (cell_inputs) and where its metrics.json is copied."""
    cells = [
        {
            "variant": cell.variant,
            "seed": cell.seed,
            "task": cell.task,
            "copy_to": cell.copy_to,
            **cell_inputs(cell),
        }
        for cell in ABLATION_CELLS
    ]
    return json_arg(cells)


def ablation_summary_inputs(wildcards):
    """Every file the table reads, each once."""
    return sorted({path for cell in ABLATION_CELLS for path in cell_inputs(cell).values()})
